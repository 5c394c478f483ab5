"""POST /v1/events through the API app (FastAPI TestClient): 202 into Kafka and on to ingest, and
the refusals: 401, 403, 413, 422 (dead-lettered), 503; CORS for browser widgets."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from refinery.api.app import create_app
from refinery.store.db import migrate, session_factory
from refinery.store.models import Feedback, Interaction
from tests.integration.test_signals_support import dead_letters, feedback, ingest, interaction

pytestmark = pytest.mark.integration

KEY = "shop-ingest-key-0123456789"
OTHER_KEY = "blog-ingest-key-9876543210"
ORIGIN = "https://shop.example"


@pytest.fixture
def collector(kafka_bootstrap, topics, sqlite_url, make_settings):
    settings = make_settings(
        kafka_bootstrap_servers=kafka_bootstrap, database_url=sqlite_url,
        collector_keys={"shop": KEY, "blog": OTHER_KEY}, collector_cors_origins=[ORIGIN],
        collector_max_body_bytes=20_000, collector_max_batch_events=5, **topics,
    )  # fmt: skip
    migrate(sqlite_url)
    with TestClient(create_app(settings)) as client:
        yield client, settings


def post(client, body, key=KEY, **headers):  # type: ignore[no-untyped-def]
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    if key is not None:
        headers["X-Refinery-Key"] = key
    return client.post(
        "/v1/events", content=data, headers={"Content-Type": "application/json", **headers}
    )


def test_accepted_events_reach_kafka_redacted_and_ingest_stores_them(collector):
    client, settings = collector
    single = post(client, interaction("c1", "my email is jane@example.org, where is my order?"))
    assert single.status_code == 202 and single.json() == {"accepted": 1}
    batch = post(client, [feedback("c1", "thumbs_down"), interaction("c2", "q", session="s2")])
    assert batch.status_code == 202 and batch.json() == {"accepted": 2}

    run = ingest(settings, analyze=False)
    assert run.stats.stored == 3 and not run.stats.dead_lettered
    with session_factory(settings.database_url)() as session:
        row = session.scalars(select(Interaction).where(Interaction.interaction_id == "c1")).one()
        assert row.query == "my email is <EMAIL>, where is my order?"
        assert row.failing and row.failure_reasons == ["thumbs_down"]
        assert session.scalar(select(Feedback.kind)) == "thumbs_down"


@pytest.mark.parametrize(
    ("key", "status", "message"),
    [
        (None, 401, "header is missing"),
        ("wrong", 401, "unknown X-Refinery-Key"),
        (OTHER_KEY, 403, "this key sends for 'blog' only"),
    ],
)
def test_keys(collector, key, status, message):
    client, _ = collector
    response = post(client, interaction("k1", "q"), key=key)
    assert response.status_code == status and message in response.json()["detail"]


def test_no_keys_configured_refuses_everything(kafka_bootstrap, sqlite_url, make_settings):
    settings = make_settings(kafka_bootstrap_servers=kafka_bootstrap, database_url=sqlite_url)
    with TestClient(create_app(settings)) as client:
        response = post(client, interaction("k1", "q"))
    assert response.status_code == 401 and "COLLECTOR_KEYS is empty" in response.json()["detail"]


def test_too_large(collector):
    client, _ = collector
    response = post(client, interaction("big", "q" * 30_000))
    assert (
        response.status_code == 413
        and "COLLECTOR_MAX_BODY_BYTES=20000" in response.json()["detail"]
    )
    response = post(client, [interaction(f"b{i}", "q") for i in range(6)])
    assert (
        response.status_code == 413 and "COLLECTOR_MAX_BATCH_EVENTS=5" in response.json()["detail"]
    )


def test_invalid_input_is_422_with_reasons_and_dead_lettered(collector):
    client, settings = collector
    response = post(client, b'{"event_id": ')
    assert response.status_code == 422 and response.json()["reason"] == "malformed_json"
    response = post(client, b"[]")
    assert response.status_code == 422

    email = "canary.person@example.org"
    batch = [
        interaction("v1", "fine"),
        {**interaction("v2", f"write to {email}"), "schema_version": "3.1"},
        {**interaction("v3", "q"), "metadata": {email: ["not", "allowed"]}},
        json.loads(json.dumps(interaction("v4", "q")).replace('"q"', '"a \\u0000 b"')),
        {**feedback("v1", "rating"), "value": 11},
    ]
    response = post(client, batch)
    assert response.status_code == 422
    body = response.json()
    assert "4 of 5 events are invalid" in body["detail"]
    assert [(e["index"], e["reason"]) for e in body["errors"]] == [
        (1, "unsupported_schema_version"),
        (2, "schema_violation"),
        (3, "nul_character"),
        (4, "schema_violation"),
    ]
    assert email not in response.text
    letters = dead_letters(settings, expect=4)
    assert sorted(d.reason for d in letters) == sorted(e["reason"] for e in body["errors"])
    assert {d.headers["source"] for d in letters} == {"collector"}
    assert {d.source_topic for d in letters} == {
        settings.topic_interactions,
        settings.topic_feedback,
    }
    assert not any(email in (d.value or b"").decode() + json.dumps(d.headers) for d in letters)
    # Nothing of a refused request was accepted.
    assert ingest(settings, analyze=False).stats.stored == 0


def test_cors(collector):
    client, _ = collector
    preflight = client.options("/v1/events", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, x-refinery-key",
    })  # fmt: skip
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "X-Refinery-Key" in preflight.headers["access-control-allow-headers"]
    assert "POST" in preflight.headers["access-control-allow-methods"]
    # Errors carry the CORS headers too, so the widget can read them.
    refused = post(client, interaction("x", "q"), key="wrong", Origin=ORIGIN)
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN
    elsewhere = post(client, interaction("x", "q"), Origin="https://evil.example")
    assert elsewhere.status_code == 403 and "access-control-allow-origin" not in elsewhere.headers
    assert (
        client.options("/v1/events", headers={"Origin": "https://evil.example"}).status_code == 403
    )


def test_kafka_not_acknowledging_is_503(collector):
    client, _ = collector

    class Unacknowledged:
        def get(self, timeout=None):  # type: ignore[no-untyped-def]
            raise TimeoutError("no ack")

    class DownProducer:
        def send(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            return Unacknowledged()

        def close(self, *args):  # type: ignore[no-untyped-def]
            pass

    client.app.state.collector_producer = DownProducer()
    response = post(client, interaction("x", "q"))
    assert response.status_code == 503 and "retry" in response.json()["detail"]
