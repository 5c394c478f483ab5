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
import threading
import time
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


class PrincipalCache:
    """Recently authenticated tokens (by hash), for `ttl_s` seconds: most requests then need no
    database lookup before their own work. The price: a token revoked elsewhere (the CLI, another
    API process) keeps working in this process for up to `ttl_s`; revoking through this process's
    API evicts it at once. ttl_s=0 disables the cache."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, token_hash: str) -> Principal | None:
        entry = self._entries.get(token_hash)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, token_hash: str, principal: Principal) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()  # crude, and rare: a full cache means many live tokens
            self._entries[token_hash] = (time.monotonic() + self.ttl_s, principal)

    def evict(self, token_id: str) -> None:
        with self._lock:
            for key in [k for k, (_, p) in self._entries.items() if p.token_id == token_id]:
                del self._entries[key]


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
    row = session.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(secret))).first()
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
