"""Which Kafka clients can produce to the embedded broker (Tansu): kafka-python is what every
other test uses; this one checks a librdkafka client, confluent-kafka (its wheel bundles
librdkafka 2.16), producing events that ingest then stores. README, "Producing events", says
which clients work where."""

from __future__ import annotations

import json

import confluent_kafka
import pytest
from sqlalchemy import select

from refinery.store.db import migrate, session_factory
from refinery.store.models import Interaction
from tests.integration.test_signals_support import ingest, interaction

pytestmark = pytest.mark.integration


def test_confluent_kafka_produces_to_the_embedded_broker(
    kafka_bootstrap, topics, sqlite_url, make_settings
):
    settings = make_settings(
        kafka_bootstrap_servers=kafka_bootstrap, database_url=sqlite_url, **topics
    )
    migrate(sqlite_url)
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": kafka_bootstrap, "acks": "all", "enable.idempotence": True,
         "message.timeout.ms": 30_000}
    )  # fmt: skip
    delivered: list[object] = []
    for iid in ("ck1", "ck2"):
        producer.produce(
            settings.topic_interactions, key=b"shop",
            value=json.dumps(interaction(iid, f"question {iid}")).encode(),
            on_delivery=lambda error, _message: delivered.append(error),
        )  # fmt: skip
    assert producer.flush(60) == 0
    del producer  # librdkafka's threads stop now, not after the broker does
    assert delivered == [None, None]  # acknowledged, no error

    assert ingest(settings, analyze=False).stats.stored == 2
    with session_factory(sqlite_url)() as session:
        stored = session.scalars(select(Interaction.interaction_id)).all()
    assert sorted(stored) == ["ck1", "ck2"]
