"""Failed credentials per client: bearer tokens, UI log-ins and collector keys each get 429 with
Retry-After past AUTH_FAILURE_LIMIT in AUTH_FAILURE_WINDOW_S; a weak collector key stops the app
from starting."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from refinery.api.app import create_app
from refinery.api.ratelimit import FailureLimiter
from refinery.collector.router import WeakCollectorKey

STRONG_KEY = "shop-ingest-key-0123456789abcdef"


@pytest.fixture
def limited(api_env):  # type: ignore[no-untyped-def]
    settings = api_env.settings.model_copy(
        update={"auth_failure_limit": 3, "collector_keys": {"shop": SecretStr(STRONG_KEY)}}
    )
    with TestClient(create_app(settings, sessions=api_env.sessions)) as client:
        yield client


def test_bearer_tokens(api_env, limited):
    for _ in range(3):
        r = limited.get("/v1/me", headers={"Authorization": "Bearer rfy_guess"})
        assert r.status_code == 401
    r = limited.get("/v1/me", headers=api_env.auth("viewer"))
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert "too many failed tokens" in r.json()["detail"]


def test_ui_log_ins(api_env, limited):
    for _ in range(3):
        assert limited.post("/ui/login", data={"token": "rfy_guess"}).status_code == 401
    r = limited.post("/ui/login", data={"token": api_env.tokens["viewer"]}, follow_redirects=False)
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert "set-cookie" not in r.headers and "Too many failed log-ins" in r.text
    # Each kind counts apart: bearer tokens still work.
    assert limited.get("/v1/me", headers=api_env.auth("viewer")).status_code == 200


def test_collector_keys(limited):
    def post(key: str):  # type: ignore[no-untyped-def]
        return limited.post("/v1/events", content=b"{}", headers={"X-Refinery-Key": key})

    for _ in range(3):
        assert post("wrong-key").status_code == 401
    r = post(STRONG_KEY)
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    # The OTLP receiver is behind the same keys, so behind the same count.
    traces = limited.post(
        "/v1/traces",
        content=b"{}",
        headers={"X-Refinery-Key": STRONG_KEY, "Content-Type": "application/json"},
    )
    assert traces.status_code == 429 and int(traces.headers["retry-after"]) > 0


def test_wrong_keys_on_the_otlp_receiver_count_too(limited):
    for _ in range(3):
        r = limited.post(
            "/v1/traces",
            content=b"{}",
            headers={"X-Refinery-Key": "wrong-key", "Content-Type": "application/json"},
        )
        assert r.status_code == 401
    r = limited.post("/v1/events", content=b"{}", headers={"X-Refinery-Key": STRONG_KEY})
    assert r.status_code == 429


@pytest.mark.parametrize("key", ["short-key-123", "a" * 40, "abababababababababababab"])
def test_a_weak_collector_key_refuses_to_start(api_env, key):
    settings = api_env.settings.model_copy(update={"collector_keys": {"shop": SecretStr(key)}})
    app = create_app(settings, sessions=api_env.sessions)
    with pytest.raises(WeakCollectorKey, match="the key of app 'shop' is too weak") as caught:
        TestClient(app).__enter__()  # the lifespan: what `refinery api` runs at start-up
    assert key not in str(caught.value)


def test_the_window_slides():
    now = [1000.0]
    limiter = FailureLimiter(2, 60, clock=lambda: now[0])
    limiter.failed("bearer", "10.0.0.1")
    limiter.failed("bearer", "10.0.0.1")
    assert limiter.retry_after("bearer", "10.0.0.1") == 60
    assert limiter.retry_after("bearer", "10.0.0.2") is None  # per client
    assert limiter.retry_after("ui_login", "10.0.0.1") is None  # per kind
    now[0] += 30
    assert limiter.retry_after("bearer", "10.0.0.1") == 30
    now[0] += 31
    assert limiter.retry_after("bearer", "10.0.0.1") is None
    assert FailureLimiter(0, 60).retry_after("bearer", "x") is None  # 0 disables
