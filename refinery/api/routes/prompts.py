"""/v1/prompts/{app}/{name}: the prompt registry. Apps and viewers read the current version (or any
older one: versions are never deleted); admins write a new version. Approving a system prompt
edit writes one too (refinery.review.service)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, status
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from refinery.api.deps import Admin, SessionsDep, Viewer
from refinery.api.models import ConflictPublic, ErrorPublic, PromptPublic, PromptUpdate
from refinery.api.views import aware
from refinery.store.models import Prompt
from refinery.store.prompts import current_prompt, prompt_version, set_prompt
from schemas.events import AppId, Identifier

router = APIRouter(prefix="/v1/prompts", tags=["prompts"])

AppPath = Annotated[AppId, Path(description="The app (tenant).")]
NamePath = Annotated[Identifier, Path(description="The prompt's name.")]

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorPublic, "description": "No token, or an unknown or revoked one."},
    403: {"model": ErrorPublic, "description": "The token's role is too low."},
    404: {"model": ErrorPublic, "description": "No such prompt or version."},
}


def _public(row: Prompt, current: Prompt) -> PromptPublic:
    return PromptPublic(
        app_id=row.app_id,
        name=row.name,
        version=row.version,
        seq=row.seq,
        text=row.text,
        source=row.source,
        created_at=aware(row.created_at),
        current=row.id == current.id,
        current_version=current.version,
    )


def _current(session: Session, app_id: str, name: str) -> Prompt:
    row = current_prompt(session, app_id=app_id, name=name)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no prompt {name!r} for app {app_id!r}")
    return row


@router.get("/{app_id}/{name}", response_model=PromptPublic, responses=_ERRORS)
def get_prompt(
    app_id: AppPath,
    name: NamePath,
    _: Viewer,
    sessions: SessionsDep,
    version: Annotated[
        Identifier | None, Query(description="An older version; default: current.")
    ] = None,
) -> PromptPublic:
    with sessions() as session:
        current = _current(session, app_id, name)
        if version is None:
            return _public(current, current)
        row = prompt_version(session, app_id=app_id, name=name, version=version)
        if row is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, f"prompt {app_id}/{name} has no version {version!r}"
            )
        return _public(row, current)


@router.put(
    "/{app_id}/{name}",
    response_model=PromptPublic,
    responses={
        **_ERRORS,
        409: {"model": ConflictPublic, "description": "base_version is not the current version."},
        413: {"model": ErrorPublic, "description": "Body larger than API_MAX_BODY_BYTES."},
    },
)
def put_prompt(
    app_id: AppPath, name: NamePath, body: PromptUpdate, _: Admin, sessions: SessionsDep
) -> PromptPublic:
    """Make `text` the current version (admin). The same text as the current one adds nothing."""
    try:
        with sessions.begin() as session:
            current = current_prompt(session, app_id=app_id, name=name)
            if body.base_version is not None and (
                current is None or current.version != body.base_version
            ):
                raise HTTPException(
                    status.HTTP_409_CONFLICT,
                    f"current version is {current.version if current else 'none'}, "
                    f"not {body.base_version}",
                )
            row = set_prompt(session, app_id=app_id, name=name, text=body.text, source="api")
            return _public(row, row)
    except IntegrityError as exc:  # a concurrent writer took the same next version
        raise HTTPException(
            status.HTTP_409_CONFLICT, "the prompt changed meanwhile; read it and retry"
        ) from exc
