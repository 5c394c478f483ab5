"""/v1/tokens: API token management (admin), and /v1/me: who the caller is (any role)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Response, status

from refinery.api import tokens as token_store
from refinery.api.deps import Admin, PrincipalCacheDep, SessionsDep, Viewer
from refinery.api.models import ErrorPublic, TokenCreate, TokenCreated, TokenPublic, WhoAmI
from refinery.api.views import aware
from refinery.store.models import ApiToken

router = APIRouter(prefix="/v1", tags=["tokens"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorPublic, "description": "No token, or an unknown or revoked one."},
    403: {"model": ErrorPublic, "description": "Admin only."},
}


def _public(row: ApiToken) -> TokenPublic:
    return TokenPublic(
        id=row.id,
        name=row.name,
        role=token_store.Role(row.role),
        created_at=aware(row.created_at),
        created_by=row.created_by,
        revoked_at=aware(row.revoked_at) if row.revoked_at else None,
    )


@router.get("/me", response_model=WhoAmI, responses={401: _ERRORS[401]})
def whoami(principal: Viewer) -> WhoAmI:
    return WhoAmI(token_id=principal.token_id, name=principal.name, role=principal.role)


@router.get("/tokens", response_model=list[TokenPublic], responses=_ERRORS)
def list_tokens(_: Admin, sessions: SessionsDep) -> list[TokenPublic]:
    with sessions() as session:
        return [_public(row) for row in token_store.list_tokens(session)]


@router.post(
    "/tokens", response_model=TokenCreated, status_code=status.HTTP_201_CREATED, responses=_ERRORS
)
def create_token(body: TokenCreate, principal: Admin, sessions: SessionsDep) -> TokenCreated:
    """Create a token; the response carries its secret, which is never shown again."""
    with sessions.begin() as session:
        row, secret = token_store.create_token(
            session, name=body.name, role=body.role, created_by=principal.name
        )
        return TokenCreated(**_public(row).model_dump(), token=secret)


@router.delete(
    "/tokens/{token_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**_ERRORS, 404: {"model": ErrorPublic, "description": "No such token."}},
)
def revoke_token(
    token_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,40}$")],
    _: Admin,
    sessions: SessionsDep,
    cache: PrincipalCacheDep,
) -> Response:
    """Revoke a token (idempotent). It stops working at once in this process, and in other API
    processes within API_TOKEN_CACHE_S."""
    with sessions.begin() as session:
        if token_store.revoke_token(session, token_id) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no token {token_id!r}")
    cache.evict(token_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
