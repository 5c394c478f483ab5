"""FastAPI dependencies as `Annotated` aliases: settings, database sessions, the caller and its role.

Authentication is a bearer token (`Authorization: Bearer rfy_...`): none or unknown -> 401, a role
too low -> 403. The web UI authenticates with the same tokens, kept in a cookie, in routes/ui.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from refinery.api.tokens import Principal, Role, authenticate
from refinery.review.actions import audit_forbidden
from refinery.settings import Settings

PROPOSAL_ID_PATTERN = r"^[A-Za-z0-9_-]{1,40}$"


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_sessions(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessions  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]


def get_db(sessions: SessionsDep) -> Iterator[Session]:
    """A session for reads; writers use the service layer, which opens its own transactions."""
    with sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="An API token from `refinery tokens create` or POST /v1/tokens.",
)


def get_principal(
    sessions: SessionsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "a bearer token is needed", headers={"WWW-Authenticate": "Bearer"}
        )
    with sessions() as session:
        principal = authenticate(session, credentials.credentials)
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "unknown or revoked token",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require(role: Role) -> Callable[[Principal], Principal]:
    def dependency(principal: PrincipalDep) -> Principal:
        if not principal.role.allows(role):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"needs role {role} or above; this token is {principal.role}")
        return principal

    return dependency


Viewer = Annotated[Principal, Depends(require(Role.VIEWER))]
Reviewer = Annotated[Principal, Depends(require(Role.REVIEWER))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]

ProposalId = Annotated[str, Path(pattern=PROPOSAL_ID_PATTERN, description="Proposal id (p_...).")]


def reviewer_acting_on(action: str, target: str | None) -> Callable[..., Principal]:
    """Like `Reviewer`, but a refused attempt on an existing proposal is audited: every attempt
    on a proposal, allowed or refused, is in its history."""

    def dependency(proposal_id: ProposalId, principal: PrincipalDep, sessions: SessionsDep) -> Principal:
        if not principal.role.allows(Role.REVIEWER):
            reason = f"needs role reviewer or above; this token is {principal.role}"
            audit_forbidden(sessions, proposal_id, actor=principal.name, action=action, target=target, reason=reason)
            raise HTTPException(status.HTTP_403_FORBIDDEN, reason)
        return principal

    return dependency
