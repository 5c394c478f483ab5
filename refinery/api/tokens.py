"""API tokens and roles: who may read the review queue, decide on proposals, or administer.

A token is `rfy_` + 32 random bytes (urlsafe base64). Only its sha256 is stored, so a database
dump yields no usable token; the secret is shown once, when it is created. Plain sha256 (no salt,
no slow KDF) is enough because the secret is random and long, not a human password.

Roles are ordered: viewer < reviewer < admin; each may do what the ones below it may.
- viewer:   read proposals, their evidence, history and artifacts; read prompts.
- reviewer: edit, approve, reject proposals and mark approved ones applied.
- admin:    manage tokens and write the prompt registry.

Free of FastAPI, so that the CLI (`refinery tokens create`) uses it too.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from refinery.store.models import ApiToken, utcnow

TOKEN_PREFIX = "rfy_"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 _.@:-]{0,63}$"


class Role(StrEnum):
    VIEWER = "viewer"
    REVIEWER = "reviewer"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_RANK = {Role.VIEWER: 0, Role.REVIEWER: 1, Role.ADMIN: 2}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's id, its name (the audit log's actor) and its role."""

    token_id: str
    name: str
    role: Role


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def create_token(
    session: Session, *, name: str, role: Role, created_by: str | None = None
) -> tuple[ApiToken, str]:
    """Store a new token; returns the row and the secret, which exists nowhere else."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(f"token name must match {NAME_PATTERN}")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        id=f"t_{uuid.uuid4().hex[:16]}",
        name=name,
        role=Role(role).value,
        token_hash=hash_token(secret),
        created_by=created_by,
    )
    session.add(row)
    session.flush()
    return row, secret


def authenticate(session: Session, secret: str) -> Principal | None:
    """The principal of a live token, or None for an unknown, malformed or revoked one."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    row = session.scalars(
        select(ApiToken).where(ApiToken.token_hash == hash_token(secret))
    ).first()
    if row is None or row.revoked_at is not None:
        return None
    return Principal(token_id=row.id, name=row.name, role=Role(row.role))


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)))


def revoke_token(session: Session, token_id: str) -> ApiToken | None:
    """Revoke (idempotently); None when no such token exists."""
    row = session.get(ApiToken, token_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
    return row
