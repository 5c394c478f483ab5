"""The tenant comes from the collector key on every path: an event naming another app is refused
before validation (never dead-lettered), dead letters carry the key's app, and `refinery dlq
replay` sends back only records whose app_id is still the sending key's app."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from kafka import KafkaProducer
from sqlalchemy import select

from refinery.api.app import create_app
from refinery.cli import build_parser
from refinery.store.db import migrate, session_factory
from refinery.store.models import Interaction
from tests.integration.test_signals_support import dead_letters, ingest, interaction

pytestmark = pytest.mark.integration

KEY_A = "appa-ingest-key-0123456789abcdef"
KEY_B = "appb-ingest-key-fedcba9876543210"
HOUR_AHEAD = 2 * 3600  # past MAX_EVENT_FUTURE_S (1 h): timestamp_future


@pytest.fixture
def collector(kafka_bootstrap, topics, sqlite_url, make_settings):
    settings = make_settings(
        kafka_bootstrap_servers=kafka_bootstrap, database_url=sqlite_url,
        collector_keys={"appa": KEY_A, "appb": KEY_B}, **topics,
    )  # fmt: skip
    migrate(sqlite_url)
    with TestClient(create_app(settings)) as client:
        yield client, settings


def post(client, body, key):  # type: ignore[no-untyped-def]
    return client.post(
        "/v1/events",
        content=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-Refinery-Key": key},
    )


def test_another_apps_invalid_event_is_refused_not_dead_lettered(collector):
    client, settings = collector
    future_b = interaction("b1", "planted", app="appb", t=HOUR_AHEAD)
    response = post(client, future_b, KEY_A)
    assert response.status_code == 403
    assert "event 0 is for app 'appb'; this key sends for 'appa' only" in response.json()["detail"]
    # One foreign event refuses the whole batch, even beside invalid events of the key's own app.
    mixed = [interaction("a0", "q", app="appa", t=HOUR_AHEAD), {"app_id": "appb"}]
    response = post(client, mixed, KEY_A)
    assert response.status_code == 403 and "event 1 is for app 'appb'" in response.json()["detail"]
    assert dead_letters(settings, expect=0) == []


def test_dead_letters_carry_the_key_and_replay_refuses_a_foreign_app(
    collector, kafka_bootstrap, capsys
):
    client, settings = collector
    response = post(client, interaction("a1", "own future", app="appa", t=HOUR_AHEAD), KEY_A)
    assert response.status_code == 422 and response.json()["errors"][0]["reason"] == (
        "timestamp_future"
    )
    [own] = dead_letters(settings, expect=1)
    assert own.headers["principal_app"] == "appa" and own.key == b"appa"

    # Two dead letters the collector would once have written: one from before the principal
    # header (an appb event sent with appa's key), one whose body names another app than its key.
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    common = [
        ("reason", b"timestamp_future"),
        ("detail", b"occurred_at is in the future"),
        ("source_topic", settings.topic_interactions.encode()),
        ("source", b"collector"),
    ]
    for iid, headers in [("b1", common), ("b2", [*common, ("principal_app", b"appa")])]:
        value = json.dumps(interaction(iid, "planted", app="appb", t=HOUR_AHEAD)).encode()
        producer.send(settings.topic_dead_letter, key=b"appb", value=value, headers=headers)
    producer.flush()
    producer.close()
    assert len(dead_letters(settings, expect=3)) == 3

    # The operator replays once the clocks are fixed (here: a wider future tolerance).
    fixed = settings.model_copy(update={"max_event_future_s": 3 * 3600.0})
    args = build_parser().parse_args(["dlq", "replay", "--reason", "timestamp_future"])
    assert args.func(fixed, args) == 1  # some were refused
    out, err = capsys.readouterr()
    assert "replayed 1 of 3" in out
    assert "without principal_app" in err
    assert "app_id 'appb' is not the sending key's app 'appa'" in err
    assert "refused 2 dead letter(s)" in err

    ingest(fixed, analyze=False)
    with session_factory(settings.database_url)() as session:
        stored = session.execute(select(Interaction.app_id, Interaction.interaction_id)).all()
    assert [tuple(r) for r in stored] == [("appa", "a1")]
