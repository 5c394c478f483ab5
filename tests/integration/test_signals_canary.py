"""PII never reaches storage: 1,000 canary queries (tests/canary.py) sent through Kafka to
the real ingest consumer, with Celery on Redis and PostgreSQL, then searched for everywhere:
every table of the database, every key and value of the Redis database (the queued Celery
messages decoded), the logs captured meanwhile, and the dead-letter topic (values, keys,
headers). Canaries ride in queries, responses, feedback text, metadata keys and values, session
and interaction ids, source titles, and in invalid events that get dead-lettered."""

from __future__ import annotations

import base64
import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
import redis
from sqlalchemy import text

from refinery.embed.embedder import get_embedder
from refinery.ingest.consumer import IngestConsumer
from refinery.ingest.deadletter import DeadLetterQueue
from refinery.kafka.clients import make_consumer, make_producer
from refinery.runtime import celery_enqueue
from refinery.signals.enqueue import parse_session_ref, session_enqueue
from refinery.signals.orphans import sweep_orphans
from refinery.signals.sessions import analyze_sessions, sweep_abandoned
from refinery.store.db import migrate, session_factory
from refinery.store.models import Base
from tests.canary import generate_canary_corpus
from tests.integration.test_signals_support import (
    at,
    dead_letters,
    private_celery,
    produce,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def celery_broker(redis_url):  # type: ignore[no-untyped-def]
    yield from private_celery(redis_url)


N = 1000
ID_KINDS = {"EMAIL", "PHONE", "CARD", "IBAN", "IP", "SSN"}


def _events(cases):  # type: ignore[no-untyped-def]
    interactions, feedback, invalid = [], [], []
    for n, case in enumerate(cases):
        value = case.canaries[0].value
        # Bare values (ids, metadata keys, titles) are of the kinds that are PII on their own: a
        # bare name or bearer token is not detected without its phrase (no NER model by default).
        as_id = case.canaries[0].kind in ID_KINDS
        event = {
            "event_id": f"cn-{n}",
            "app_id": "shop",
            # Some apps use the user's e-mail or phone as the session id.
            "session_id": value if n % 10 == 0 and as_id else f"s-{n // 3}",
            "interaction_id": f"cn-{n}" if n % 7 or not as_id else f"{value}#{n}",
            "turn_index": n % 3,
            "occurred_at": at(-7200 + n),
            "query": case.text,
            "response": f"I have noted: {case.text}" if n % 2 else "Thanks, noted.",
            "metadata": {"note": case.text, value: "key is PII"} if n % 5 == 0 and as_id else {},
            "retrieved_sources": [{"source_id": "kb-1", "title": f"Ticket of {value}"}]
            if n % 9 == 0 and as_id
            else [],
        }
        interactions.append(event)
        if n % 4 == 0:
            kind = "correction" if n % 8 == 0 else "comment"
            feedback.append({
                "event_id": f"cf-{n}", "app_id": "shop", "interaction_id": event["interaction_id"],
                "occurred_at": at(-7000 + n), "kind": kind, "text": f"Better: {case.text}",
            })  # fmt: skip
        if n % 50 == 0:  # invalid, with the canary inside: dead-lettered
            invalid.append(
                json.dumps({**event, "event_id": f"bad-{n}", "schema_version": "9.0"}).encode()
            )
            invalid.append(b'{"query": "' + case.text.encode() + b'" broken')
            key = value if as_id else case.text
            invalid.append(
                json.dumps({**event, "event_id": f"bad2-{n}", "metadata": {key: [1]}}).encode()
            )
    # Feedback whose interaction never comes: dead-lettered by the orphan sweep.
    feedback.append(
        {
            "event_id": "orphan",
            "app_id": "shop",
            "interaction_id": "never",
            "occurred_at": at(-7000),
            "kind": "comment",
            "text": cases[1].text,
        }
    )
    return interactions, feedback, invalid


def _database_text(db_url: str) -> str:
    parts = []
    with session_factory(db_url)() as session:
        tables = [t.name for t in Base.metadata.sorted_tables] + ["alembic_version"]
        for name in tables:
            for row in session.execute(text(f'SELECT * FROM "{name}"')):
                parts.append(repr(tuple(row)))
                parts.extend(json.dumps(v, default=str) for v in row if isinstance(v, dict | list))
    return "\n".join(parts)


def _redis_text(redis_url: str) -> tuple[str, int]:
    client = redis.Redis.from_url(redis_url)
    parts, messages = [], 0
    try:
        for key in client.scan_iter("*"):
            parts.append(key.decode("utf-8", "replace"))
            kind = client.type(key).decode()
            if kind == "string":
                values = [client.get(key)]
            elif kind == "list":
                values = client.lrange(key, 0, -1)
            elif kind == "hash":
                values = [b"%s=%s" % kv for kv in client.hgetall(key).items()]
            elif kind == "set":
                values = list(client.smembers(key))
            elif kind == "zset":
                values = list(client.zrange(key, 0, -1))
            else:
                values = []
            for value in values:
                parts.append(value.decode("utf-8", "replace"))
                try:  # a kombu message: the task payload is a base64 body
                    message = json.loads(value)
                    body = base64.b64decode(message["body"]).decode("utf-8", "replace")
                    parts.append(body)
                    messages += 1
                except (ValueError, KeyError, TypeError):
                    pass
    finally:
        client.close()
    return "\n".join(parts), messages


def _found(canaries: set[str], haystack: str) -> list[str]:
    return sorted(c for c in canaries if c in haystack)


def test_no_canary_reaches_postgres_redis_logs_or_the_dead_letter_topic(
    kafka_bootstrap, topics, postgres_url, make_settings, activate, celery_broker, caplog
):
    settings = activate(make_settings(
        kafka_bootstrap_servers=kafka_bootstrap, database_url=postgres_url,
        redis_url=celery_broker,
        **topics,
    ))  # fmt: skip
    migrate(postgres_url)
    cases = generate_canary_corpus(N, seed=20261127)
    # Searched as substrings of the whole store: a two-letter first name ("Li") occurs by chance
    # in the bytes of stored vectors. Its redaction is counted by the recall tests instead.
    canaries = {c.value for case in cases for c in case.canaries if len(c.value) >= 4}
    interactions, feedback, invalid = _events(cases)
    produce(kafka_bootstrap, settings.topic_feedback, feedback)
    produce(kafka_bootstrap, settings.topic_interactions, interactions + invalid)

    caplog.set_level(logging.INFO)
    for name in ("refinery", "workers"):
        caplog.set_level(logging.DEBUG, logger=name)
    sessions = session_factory(postgres_url)
    enqueue_sessions = session_enqueue(settings)
    queued_sessions: list = []
    producer = make_producer(settings)
    consumer = IngestConsumer(
        settings,
        consumer=make_consumer(settings, settings.topic_interactions, settings.topic_feedback,
                               group_id=settings.ingest_group_id),
        producer=producer,
        sessions=sessions,
        enqueue=celery_enqueue(settings),  # Celery send_task: messages wait in Redis
        embedding_model=get_embedder(settings).name,
        enqueue_sessions=lambda keys: (queued_sessions.extend(keys), enqueue_sessions(keys)),  # type: ignore[func-returns-value]
    )  # fmt: skip
    try:
        stats = consumer.run(until_caught_up=True)
    finally:
        consumer.close()
    assert stats.stored == len(interactions) + len(feedback)
    assert sum(stats.dead_lettered.values()) == len(invalid)

    # What the worker does with those messages: rephrase detection (embeds every query), then
    # the beat sweeps (abandon, orphan feedback).
    assert queued_sessions and all(
        parse_session_ref(f"{a}/{s}") == (a, s) for a, s in queued_sessions
    )
    with sessions.begin() as session:
        analyze_sessions(session, queued_sessions, settings, get_embedder(settings))
    later = datetime.now(UTC) + timedelta(days=2)
    with sessions.begin() as session:
        assert sweep_abandoned(session, settings, now=later).sessions
    try:
        with sessions.begin() as session:
            dlq = DeadLetterQueue(producer, settings.topic_dead_letter)
            assert sweep_orphans(session, dlq, settings, now=later) == 1
    finally:
        producer.close()

    with sessions() as session:  # every query was embedded (rephrase detection)
        assert session.scalar(text("SELECT count(*) FROM embeddings")) >= N * 0.9
    database = _database_text(postgres_url)
    assert "<EMAIL>" in database and "<CARD>" in database and "pii-" in database
    assert database.count("Better: ") == len(feedback) - 1  # feedback kept, the orphan gone
    redis_text, messages = _redis_text(settings.redis_url)
    assert messages >= 2, "the Celery messages were not found in Redis"
    letters = dead_letters(settings, expect=len(invalid) + 1)
    assert len(letters) == len(invalid) + 1
    dlq_text = "\n".join(
        (d.value or b"").decode("utf-8", "replace")
        + (d.key or b"").decode("utf-8", "replace")
        + json.dumps(d.headers)
        for d in letters
    )
    assert "<EMAIL>" in dlq_text or "<PHONE>" in dlq_text or "<CARD>" in dlq_text
    logs = caplog.text + "\n".join(str(r.args) for r in caplog.records)

    assert _found(canaries, database) == [], "canaries in PostgreSQL"
    assert _found(canaries, redis_text) == [], "canaries in Redis"
    assert _found(canaries, logs) == [], "canaries in the logs"
    assert _found(canaries, dlq_text) == [], "canaries on the dead-letter topic"
