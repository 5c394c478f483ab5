"""Web UI sessions: the cookie is a random session id, not the API token; it stops opening /ui/
after log-out, after its token is revoked, and after it expires; Secure over HTTPS."""

from __future__ import annotations

import re
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import select, update

from refinery.api.app import create_app
from refinery.api.routes.ui import COOKIE
from refinery.api.tokens import hash_token
from refinery.store.models import ApiToken, UiSession, utcnow


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert found is not None
    return found.group(1)


def _login(client: TestClient, token: str) -> str:
    client.cookies.clear()
    r = client.post("/ui/login", data={"token": token}, follow_redirects=False)
    assert r.status_code == 303
    found = re.match(rf"{COOKIE}=([^;]+);", r.headers["set-cookie"])
    assert found is not None
    return found.group(1)


def _opens_ui(client: TestClient, cookie: str) -> bool:
    client.cookies.clear()
    client.cookies.set(COOKIE, cookie)
    r = client.get("/ui/", follow_redirects=False)
    assert r.status_code in (200, 303)
    return r.status_code == 200


def test_the_cookie_is_a_session_not_the_token(api_env, client):
    token = api_env.tokens["reviewer"]
    cookie = _login(client, token)
    assert cookie != token and cookie.startswith("rfs_") and token not in cookie
    with api_env.sessions() as s:
        [row] = s.scalars(select(UiSession)).all()
    assert row.id_hash == hash_token(cookie)  # only the hash is stored
    assert _opens_ui(client, cookie)
    # The session id is no bearer token, and the raw token is no session.
    assert client.get("/v1/me", headers={"Authorization": f"Bearer {cookie}"}).status_code == 401
    assert not _opens_ui(client, token)


def test_logout_ends_the_session_for_good(api_env, client):
    cookie = _login(client, api_env.tokens["viewer"])
    page = client.get("/ui/")
    out = client.post("/ui/logout", data={"csrf": _csrf(page.text)}, follow_redirects=False)
    assert out.status_code == 303
    # A copy of the old cookie (a stolen one, or a browser that kept it) opens nothing.
    assert not _opens_ui(client, cookie)
    # Logging in again opens a new session; the token itself still works.
    assert _opens_ui(client, _login(client, api_env.tokens["viewer"]))


def test_revoking_the_token_ends_its_sessions(api_env, client):
    cookie = _login(client, api_env.tokens["viewer"])
    other = _login(client, api_env.tokens["reviewer"])
    with api_env.sessions() as s:
        viewer_id = s.scalar(select(ApiToken.id).where(ApiToken.name == "viewer-user"))
    client.cookies.clear()
    revoked = client.delete(f"/v1/tokens/{viewer_id}", headers=api_env.auth("admin"))
    assert revoked.status_code in (200, 204)
    assert not _opens_ui(client, cookie)
    assert _opens_ui(client, other)
    with api_env.sessions() as s:
        ended = s.scalar(select(UiSession.revoked_at).where(UiSession.token_id == viewer_id))
    assert ended is not None


def test_an_expired_session_opens_nothing(api_env, client):
    cookie = _login(client, api_env.tokens["viewer"])
    with api_env.sessions.begin() as s:
        s.execute(update(UiSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert not _opens_ui(client, cookie)


def test_cookie_flags_follow_the_scheme(api_env):
    app = create_app(api_env.settings, sessions=api_env.sessions)
    for base, secure in (("https://testserver", True), ("http://testserver", False)):
        with TestClient(app, base_url=base) as c:
            r = c.post(
                "/ui/login", data={"token": api_env.tokens["viewer"]}, follow_redirects=False
            )
            flags = r.headers["set-cookie"].lower()
        assert "httponly" in flags and "samesite=strict" in flags
        assert ("secure" in flags.split("; ")) is secure
        assert f"max-age={int(api_env.settings.ui_session_ttl_s)}" in flags
