"""Prompt registry: every version of each app's system prompts; the highest `seq` is current.

Written by `refinery prompts set`, by interaction events that carry a prompt's text, and by the
approval of a system prompt edit. Apps read the current version back.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from refinery.store.models import Prompt


def current_prompt(session: Session, *, app_id: str, name: str) -> Prompt | None:
    return session.scalars(
        select(Prompt)
        .where(Prompt.app_id == app_id, Prompt.name == name)
        .order_by(Prompt.seq.desc())
        .limit(1)
    ).first()


def prompt_version(session: Session, *, app_id: str, name: str, version: str) -> Prompt | None:
    return session.scalars(
        select(Prompt).where(
            Prompt.app_id == app_id, Prompt.name == name, Prompt.version == version
        )
    ).first()


def register_prompt_version(
    session: Session, *, app_id: str, name: str, version: str, text: str, source: str
) -> Prompt:
    """Add a named version unless it exists (same name + version is the same prompt)."""
    existing = prompt_version(session, app_id=app_id, name=name, version=version)
    if existing is not None:
        return existing
    seq = (
        session.scalar(
            select(func.max(Prompt.seq)).where(Prompt.app_id == app_id, Prompt.name == name)
        )
        or 0
    )
    row = Prompt(app_id=app_id, name=name, version=version, seq=seq + 1, text=text, source=source)
    session.add(row)
    session.flush()
    return row


def set_prompt(session: Session, *, app_id: str, name: str, text: str, source: str) -> Prompt:
    """Make `text` the current version; a text equal to the current one adds nothing."""
    current = current_prompt(session, app_id=app_id, name=name)
    if current is not None and current.text == text:
        return current
    seq = current.seq + 1 if current else 1
    return register_prompt_version(
        session, app_id=app_id, name=name, version=f"v{seq}", text=text, source=source
    )
