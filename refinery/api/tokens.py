"""API tokens and roles: who may read the review queue, decide on proposals, or administer.

A token is `rfy_` + 32 random bytes (urlsafe base64). Only its sha256 is stored, so a database
dump yields no usable token; the secret is shown once, when it is created. Plain sha256 (no salt,
no slow KDF) is enough because the secret is random and long, not a human password.

Roles are ordered: viewer < reviewer < admin; each may do what the ones below it may.
- viewer:   read proposals, their evidence, history and artifacts; read prompts.
- reviewer: edit, approve, reject proposals and mark approved ones applied.
- admin:    manage tokens and write the prompt registry.

Web UI sessions: logging in with a token opens a session whose random id (`rfs_` + 32 bytes)
is the cookie; only its sha256 is stored (`ui_sessions`). The token itself never goes into the
browser, so a stolen cookie is worth one session: it ends at its expiry (UI_SESSION_TTL_S), on
log-out, or when its token is revoked, and it is no bearer token for /v1.

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
from datetime import UTC, timedelta
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from refinery.store.models import ApiToken, UiSession, utcnow

TOKEN_PREFIX = "rfy_"
SESSION_PREFIX = "rfs_"
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
    """Revoke (idempotently), with every web UI session opened with it; None when no such
    token exists."""
    row = session.get(ApiToken, token_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
        for ui_session in session.scalars(
            select(UiSession).where(UiSession.token_id == token_id, UiSession.revoked_at.is_(None))
        ):
            ui_session.revoked_at = row.revoked_at
    return row


def open_ui_session(session: Session, principal: Principal, *, ttl_s: float) -> str:
    """Store a new web UI session for `principal`'s token; returns its id (the cookie value),
    which exists nowhere else."""
    secret = SESSION_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    session.add(
        UiSession(
            id_hash=hash_token(secret),
            token_id=principal.token_id,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_s),
        )
    )
    session.flush()
    return secret


def ui_session_principal(session: Session, secret: str) -> Principal | None:
    """The principal of a live web UI session: not expired, not logged out, its token not
    revoked. None otherwise (an API token in the cookie included)."""
    if not secret.startswith(SESSION_PREFIX) or len(secret) > 200:
        return None
    found = session.execute(
        select(UiSession, ApiToken)
        .join(ApiToken, ApiToken.id == UiSession.token_id)
        .where(UiSession.id_hash == hash_token(secret))
    ).first()
    if found is None:
        return None
    ui_session, token = found
    expires_at = ui_session.expires_at
    if expires_at.tzinfo is None:  # SQLite hands back naive datetimes (stored as UTC)
        expires_at = expires_at.replace(tzinfo=UTC)
    if ui_session.revoked_at is not None or token.revoked_at is not None or expires_at <= utcnow():
        return None
    return Principal(token_id=token.id, name=token.name, role=Role(token.role))


def close_ui_session(session: Session, secret: str) -> None:
    """End a web UI session (log-out), idempotently."""
    row = session.get(UiSession, hash_token(secret))
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
