"""FastAPI dependencies as `Annotated` aliases: settings, database sessions, the caller, its role.

Authentication is a bearer token (`Authorization: Bearer rfy_...`): none or unknown -> 401, a role
too low -> 403, too many unknown ones from one address -> 429 (refinery.api.ratelimit). The web
UI logs in with the same tokens and keeps a server-side session in a cookie (routes/ui.py).

Dependencies that do no I/O are `async def`: FastAPI runs a plain `def` one in the thread pool, a
hop (and, under load, a wait for a thread) per dependency per request.

No session-per-request dependency, on purpose: a `yield` dependency holds its connection after the
route returns until its teardown gets a thread, while routes holding threads wait for connections
(a pool deadlock under load). Routes open `with sessions() as session:` themselves, so a
connection is taken and given back within one thread call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from refinery.api.ratelimit import BEARER, client_of, limiter_for
from refinery.api.tokens import Principal, PrincipalCache, Role, authenticate, hash_token
from refinery.review.decisions import audit_forbidden
from refinery.settings import Settings

PROPOSAL_ID_PATTERN = r"^[A-Za-z0-9_-]{1,40}$"


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_sessions(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessions  # type: ignore[no-any-return]


async def get_principal_cache(request: Request) -> PrincipalCache:
    return request.app.state.principal_cache  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]
PrincipalCacheDep = Annotated[PrincipalCache, Depends(get_principal_cache)]

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="An API token from `refinery tokens create` or POST /v1/tokens.",
)


def too_many_failures(retry_after: int, what: str) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        f"too many failed {what} from this address; retry after {retry_after} s",
        headers={"Retry-After": str(retry_after)},
    )


async def get_principal(
    request: Request,
    settings: SettingsDep,
    sessions: SessionsDep,
    cache: PrincipalCacheDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a bearer token is needed",
            headers={"WWW-Authenticate": "Bearer"},
        )
    limiter, client = limiter_for(request.app, settings), client_of(request)
    retry_after = limiter.retry_after(BEARER, client)
    if retry_after is not None:
        raise too_many_failures(retry_after, "tokens")
    key = hash_token(credentials.credentials)
    principal = cache.get(key)
    if principal is None:

        def lookup() -> Principal | None:
            with sessions() as session:
                return authenticate(session, credentials.credentials)

        principal = await run_in_threadpool(lookup)
        if principal is not None:
            cache.put(key, principal)
    if principal is None:
        limiter.failed(BEARER, client)
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "unknown or revoked token",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require(role: Role) -> Callable[[Principal], Awaitable[Principal]]:
    async def dependency(principal: PrincipalDep) -> Principal:
        if not principal.role.allows(role):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"needs role {role} or above; this token is {principal.role}",
            )
        return principal

    return dependency


Viewer = Annotated[Principal, Depends(require(Role.VIEWER))]
Reviewer = Annotated[Principal, Depends(require(Role.REVIEWER))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]

ProposalId = Annotated[str, Path(pattern=PROPOSAL_ID_PATTERN, description="Proposal id (p_...).")]


def reviewer_acting_on(action: str, target: str | None) -> Callable[..., Principal]:
    """Like `Reviewer`, but a refused attempt on an existing proposal is audited: every attempt
    on a proposal, allowed or refused, is in its history."""

    def dependency(
        proposal_id: ProposalId, principal: PrincipalDep, sessions: SessionsDep
    ) -> Principal:
        if not principal.role.allows(Role.REVIEWER):
            reason = refuse_below_reviewer(
                sessions, [proposal_id], principal, action=action, target=target
            )
            raise HTTPException(status.HTTP_403_FORBIDDEN, reason)
        return principal

    return dependency


def refuse_below_reviewer(
    sessions: sessionmaker[Session],
    proposal_ids: Iterable[str],
    principal: Principal,
    *,
    action: str,
    target: str | None,
) -> str:
    """Audit the attempt on each of these proposals as refused for the principal's role (below
    reviewer) and return the reason, so that the API, its bulk route and the web UI refuse alike."""
    reason = f"needs role reviewer or above; this token is {principal.role}"
    for proposal_id in proposal_ids:
        audit_forbidden(
            sessions, proposal_id, actor=principal.name, action=action, target=target, reason=reason
        )
    return reason
