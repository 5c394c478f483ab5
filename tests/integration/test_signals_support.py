"""Helpers (no tests) shared by the signal, bad-input and canary tests: produce events to the real
broker, run the real ingest consumer in-process until it has caught up, read the dead letters."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from kafka import KafkaProducer

from refinery.embed.embedder import get_embedder
from refinery.ingest.consumer import IngestConsumer, IngestStats
from refinery.ingest.deadletter import DeadLetter, read_dead_letters
from refinery.ingest.storage import SessionKey
from refinery.kafka.clients import make_producer
from refinery.settings import Settings
from refinery.signals.sessions import analyze_sessions
from refinery.store.db import session_factory

NOW = datetime.now(UTC).replace(microsecond=0)


def at(seconds: float) -> str:
    """An ISO timestamp `seconds` after NOW (negative: before)."""
    return (NOW + timedelta(seconds=seconds)).isoformat()


def interaction(
    iid: str,
    query: str,
    *,
    session: str = "s1",
    turn: int | None = None,
    t: float = -3600,
    app: str = "shop",
    response: str = "an answer",
    **extra,
) -> dict:
    event = {
        "event_id": f"e-{iid}",
        "app_id": app,
        "session_id": session,
        "interaction_id": iid,
        "occurred_at": at(t),
        "query": query,
        "response": response,
        **extra,
    }
    if turn is not None:
        event["turn_index"] = turn
    return event


def feedback(
    iid: str, kind: str, *, t: float = -3500, n: int = 0, app: str = "shop", **extra
) -> dict:
    return {
        "event_id": f"f-{iid}-{kind}-{n}",
        "app_id": app,
        "interaction_id": iid,
        "occurred_at": at(t),
        "kind": kind,
        **extra,
    }


@dataclass
class Produced:
    """Where each produced record landed: (topic, partition, offset) in send order."""

    where: list[tuple[str, int, int]] = field(default_factory=list)


def produce(
    bootstrap: str, topic: str, events: Iterable[dict | bytes | None], key: bytes = b"shop"
) -> Produced:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=4_000_000)
    out = Produced()
    try:
        futures = []
        for event in events:
            value = (
                event if isinstance(event, bytes) or event is None else json.dumps(event).encode()
            )
            futures.append(producer.send(topic, key=key, value=value))
        for future in futures:
            meta = future.get(timeout=30)
            out.where.append((meta.topic, meta.partition, meta.offset))
    finally:
        producer.close()
    return out


@dataclass
class Run:
    stats: IngestStats
    enqueued: list[int]
    sessions: list[SessionKey]


def ingest(settings: Settings, *, analyze: bool = True, timeout_s: float = 90) -> Run:
    """The real consumer, in-process, until every partition is consumed; session analysis (the
    Celery task's body) runs inline with the real model when `analyze`."""
    enqueued: list[int] = []
    analysed: list[SessionKey] = []
    sessions = session_factory(settings.database_url)

    def analyse(keys: list[SessionKey]) -> None:
        analysed.extend(keys)
        with sessions.begin() as session:
            result = analyze_sessions(session, keys, settings, get_embedder(settings))
        enqueued.extend(result.to_embed)

    producer = make_producer(settings)
    consumer = IngestConsumer.on_event_topics(
        settings,
        producer=producer,
        sessions=sessions,
        enqueue=enqueued.extend,
        enqueue_sessions=analyse if analyze else None,
    )
    deadline = time.monotonic() + timeout_s
    try:
        stats = consumer.run(should_stop=lambda: time.monotonic() > deadline, until_caught_up=True)
    finally:
        consumer.close()
        producer.close()
    assert time.monotonic() <= deadline, "ingest did not catch up in time"
    return Run(stats, enqueued, analysed)


def dead_letters(settings: Settings, *, expect: int, timeout_s: float = 30) -> list[DeadLetter]:
    assert settings.kafka_bootstrap_servers
    deadline = time.monotonic() + timeout_s
    while True:
        letters = read_dead_letters(
            {"bootstrap_servers": settings.kafka_bootstrap_servers}, settings.topic_dead_letter
        )
        if len(letters) >= expect or time.monotonic() > deadline:
            return letters
        time.sleep(0.5)


def private_redis(redis_url: str) -> str:
    """The test Redis server, a database of its own: a Celery worker or a scan of every key must
    not meet another test session's queues (db 15 is shared by every `redis_url` test, and other
    tools pick fixed numbers). Claims an empty database among 1-12 with a SET NX marker."""
    import random

    import redis

    base = redis_url.rsplit("/", 1)[0]
    for db in random.sample(range(1, 13), 12):
        client = redis.Redis.from_url(f"{base}/{db}")
        try:
            if client.dbsize() == 0 and client.set("refinery-test-claim", "1", nx=True, ex=1800):
                return f"{base}/{db}"
        finally:
            client.close()
    raise AssertionError("no empty Redis database among 1-12 for this test")


@contextmanager
def fresh_celery_connections() -> Iterator[None]:
    """The in-process Celery app keeps the broker connections and result backend it made first;
    drop them on entry (so it uses the broker just configured) and on exit (so the next test
    does)."""
    from kombu import pools

    from workers.celery_app import app

    def drop() -> None:
        # app.pool is kombu's process-wide pool for the broker URL (kombu.pools.connections),
        # and the producer pool is kombu's too: closing one without forgetting it would hand the
        # closed pool to the next test that draws the same Redis database ("Acquire on closed
        # pool"). reset() closes every pool and forgets them all.
        pools.reset()
        app._pool = None
        app.amqp._producer_pool = None
        app._backend_cache = None
        app._local.__dict__.pop("backend", None)

    drop()
    try:
        yield
    finally:
        drop()


def private_celery(redis_url: str) -> Iterator[str]:
    """For a fixture (`yield from`): a Redis database of the test's own (see private_redis) for
    the Celery broker, the URL to configure (then call `activate`); connections are fresh
    around the test, the database flushed after it."""
    import redis

    url = private_redis(redis_url)
    with fresh_celery_connections():
        yield url
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
