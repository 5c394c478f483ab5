"""Ingest with every failure signal and redaction on: prints figures, asserts nothing.

1. Ingest events/s against the bare kafka-python consume loop (poll, touch each value, commit per
   batch) over the same records on the same broker, in one run, as a ratio. Two ingest setups:
   (a) the deployed role: validate, redact, store, sessions, score, enqueue embed and rephrase
       work to Celery on Redis (when REDIS_URL answers; else the enqueues are dropped and said so);
   (b) one process doing everything: (a) plus rephrase detection inline (real model), as the
       embedded default (Celery eager) does.
2. Redaction throughput: whole events (redact_event) per second and MB/s of user text, on
   events whose queries carry canary PII (tests/canary.py).
3. Rephrase-detection cost per event: analyze_sessions over the ingested sessions, cold (every
   query embedded by all-MiniLM-L6-v2 on CPU) and warm (the embedding cache hit).

Run: python bench/bench_ingest_signals.py [--events N] [--database-url URL] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _events(n: int, seed: int) -> tuple[list[bytes], list[bytes], int]:
    """n interactions in sessions of 4 turns (queries from the canary corpus, PII in them), a
    third with feedback; returns (interactions, feedback, bytes of user text)."""
    from tests.canary import generate_canary_corpus

    now = datetime.now(UTC) - timedelta(hours=2)
    cases = generate_canary_corpus(n, seed=seed)
    interactions, feedback, text_bytes = [], [], 0
    for i, case in enumerate(cases):
        query = case.text
        if i % 4 == 2:  # every session rephrases once: the turn before, asked again
            query = "Sorry, again: " + cases[i - 1].text
        response = "Thanks for reaching out. Please open Settings, then Billing, and try again."
        text_bytes += len(query.encode()) + len(response.encode())
        interactions.append(json.dumps({
            "event_id": f"bs-{seed}-i{i}", "app_id": f"app{i % 3}",
            "session_id": f"s{seed}-{i // 4}",
            "interaction_id": f"{seed}-i{i}", "turn_index": i % 4,
            "occurred_at": (now + timedelta(seconds=30 * (i % 4) + i // 4)).isoformat(),
            "query": query, "response": response, "metadata": {"channel": "web"},
        }).encode())  # fmt: skip
        if i % 3 == 0:
            kind = ("thumbs_down", "thumbs_up", "copy", "regenerate")[i % 4]
            feedback.append(json.dumps({
                "event_id": f"bs-{seed}-f{i}", "app_id": f"app{i % 3}",
                "interaction_id": f"{seed}-i{i}",
                "occurred_at": (now + timedelta(seconds=30 * (i % 4) + i // 4 + 10)).isoformat(),
                "kind": kind,
            }).encode())  # fmt: skip
    return interactions, feedback, text_bytes


def _redis(url: str | None) -> str | None:
    if not url:
        return None
    import redis

    try:
        client = redis.Redis.from_url(url)
        client.ping()
        client.flushdb()
        client.close()
        return url
    except Exception:  # no Redis here: the enqueues are dropped (said in the output)
        return None


def _bare_loop(bootstrap: str, topics: list[str], total: int, batch: int) -> float:
    from kafka import KafkaConsumer

    bare = KafkaConsumer(
        *topics, bootstrap_servers=bootstrap, group_id=f"bare-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False, auto_offset_reset="earliest", session_timeout_ms=6000,
        heartbeat_interval_ms=1000, max_poll_interval_ms=60000,
    )  # fmt: skip
    seen, started = 0, None
    while seen < total:
        polled = bare.poll(timeout_ms=500, max_records=batch)
        if polled and started is None:
            started = time.perf_counter()
            first = sum(len(r) for r in polled.values())
        for records in polled.values():
            seen += sum(1 for r in records if r.value)
        if polled:
            bare.commit()
    elapsed = time.perf_counter() - (started or time.perf_counter())
    bare.close()
    return (total - first) / elapsed if elapsed else float("nan")


def _ingest(settings, total: int, *, inline_rephrase: bool, redis_url: str | None) -> dict:  # type: ignore[no-untyped-def]
    from refinery.embed.embedder import get_embedder
    from refinery.ingest.consumer import IngestConsumer
    from refinery.kafka.clients import make_producer
    from refinery.signals.sessions import analyze_sessions
    from refinery.store.db import session_factory

    sessions = session_factory(settings.database_url)
    analysed = {"seconds": 0.0, "sessions": 0}

    if inline_rephrase:

        def enqueue_sessions(keys):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            with sessions.begin() as session:
                analyze_sessions(session, keys, settings, get_embedder(settings))
            analysed["seconds"] += time.perf_counter() - started
            analysed["sessions"] += len(keys)

        enqueue = lambda ids: None  # noqa: E731 - failing ones are embedded by the analysis
    elif redis_url:
        from refinery.runtime import celery_enqueue
        from refinery.signals.enqueue import session_enqueue

        enqueue, enqueue_sessions = celery_enqueue(settings), session_enqueue(settings)
    else:
        enqueue, enqueue_sessions = (lambda ids: None), (lambda keys: None)

    consumer = IngestConsumer.on_event_topics(
        settings,
        producer=make_producer(settings),
        sessions=sessions,
        enqueue=enqueue,
        group_id=f"ingest-{uuid.uuid4().hex[:6]}",
        enqueue_sessions=enqueue_sessions,
    )
    started, first = None, 0
    while consumer.stats.consumed < total:
        handled = consumer.poll_once()
        if handled and started is None:
            started, first = time.perf_counter(), handled
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return {
        "eps": (total - first) / elapsed if elapsed else float("nan"),
        "stored": consumer.stats.stored,
        "sessions_enqueued": consumer.stats.sessions_enqueued,
        "analysis_s": analysed["seconds"],
    }


def bench_ingest(n: int, database_url: str | None, redis_url: str | None) -> None:
    from kafka import KafkaProducer

    from refinery.kafka.embedded import ensure_topics, start_embedded_broker
    from refinery.settings import Settings
    from refinery.store.db import migrate

    broker = start_embedded_broker()
    tmp = tempfile.TemporaryDirectory()
    try:
        redis_ok = _redis(redis_url)
        print(
            f"broker: embedded Tansu at {broker.bootstrap_servers}; Celery:"
            f" {'Redis ' + redis_ok if redis_ok else 'none reachable, enqueues dropped'}"
        )
        rows = []
        for label, inline in (
            ("(a) ingest role, signals to Celery", False),
            ("(b) ingest + rephrase detection inline", True),
        ):
            suffix = uuid.uuid4().hex[:6]
            url = database_url or f"sqlite:///{tmp.name}/bench-{suffix}.db"
            settings = Settings(
                _env_file=None, kafka_bootstrap_servers=broker.bootstrap_servers,
                redis_url=redis_ok,
                database_url=url, topic_interactions=f"si-{suffix}", topic_feedback=f"sf-{suffix}",
                topic_dead_letter=f"sd-{suffix}",
            )  # fmt: skip
            if redis_ok:
                from workers.celery_app import app, configure

                configure(app, settings)
            ensure_topics(
                broker.bootstrap_servers,
                {settings.topic_interactions: 6, settings.topic_feedback: 6},
            )
            size = n if not inline else max(n // 5, 200)  # the model is the slow part
            seed = int(suffix, 16)
            interactions, feedback, _ = _events(size, seed=seed)
            producer = KafkaProducer(
                bootstrap_servers=broker.bootstrap_servers, acks="all", linger_ms=20
            )
            for value in interactions:
                producer.send(settings.topic_interactions, value)
            for value in feedback:
                producer.send(settings.topic_feedback, value)
            producer.flush()
            producer.close()
            total = len(interactions) + len(feedback)
            bare = _bare_loop(
                broker.bootstrap_servers,
                [settings.topic_interactions, settings.topic_feedback],
                total,
                settings.ingest_batch_max_records,
            )
            migrate(url)
            result = _ingest(settings, total, inline_rephrase=inline, redis_url=redis_ok)
            rows.append((label, total, bare, result))
            if inline:
                per_event = 1000 * result["analysis_s"] / len(interactions)
                warm = _warm_analysis(settings, f"s{seed}-", len(interactions))
                print(
                    f"\nrephrase detection, inline over {len(interactions)} interactions"
                    f" ({result['sessions_enqueued']} session analyses as turns arrived batch by"
                    f" batch): {per_event:.2f} ms/interaction cold"
                    f" (embedding on CPU), {warm:.2f} ms/interaction warm (embedding cache hit)"
                )
        print(
            f"\n{'setup':<42} {'events':>7} {'bare ev/s':>10} {'ingest ev/s':>12} {'ratio':>6}  db"
        )
        for label, total, bare, result in rows:
            db = (database_url or "sqlite").split(":", 1)[0]
            print(
                f"{label:<42} {total:>7} {bare:>10.0f} {result['eps']:>12.0f}"
                f" {result['eps'] / bare:>6.3f}  {db}"
            )
    finally:
        broker.stop()
        tmp.cleanup()


def _warm_analysis(settings, prefix: str, interactions: int) -> float:  # type: ignore[no-untyped-def]
    """The same sessions analysed again: every vector comes from the cache."""
    from sqlalchemy import select

    from refinery.embed.embedder import get_embedder
    from refinery.signals.sessions import analyze_sessions
    from refinery.store.db import session_factory
    from refinery.store.models import SessionState

    sessions = session_factory(settings.database_url)
    with sessions() as session:
        keys = [
            (s.app_id, s.session_id)
            for s in session.scalars(
                select(SessionState).where(SessionState.session_id.startswith(prefix))
            )
        ]
    started = time.perf_counter()
    for i in range(0, len(keys), settings.enqueue_batch_size):
        with sessions.begin() as session:
            analyze_sessions(
                session, keys[i : i + settings.enqueue_batch_size], settings, get_embedder(settings)
            )
    return 1000 * (time.perf_counter() - started) / interactions


def bench_redaction(n: int) -> None:
    from refinery.ingest.validate import parse_event
    from refinery.redact.events import redact_event
    from refinery.settings import Settings

    interactions, _, text_bytes = _events(n, seed=1)
    settings = Settings(_env_file=None)
    events = [parse_event(raw, settings) for raw in interactions]
    redact_event(events[0])  # builds the redactor
    started = time.perf_counter()
    for event in events:
        redact_event(event)
    elapsed = time.perf_counter() - started
    print(
        f"\nredaction: {len(events) / elapsed:,.0f} events/s,"
        f" {text_bytes / elapsed / 1e6:.2f} MB/s of"
        f" user text (query + response + metadata + ids; {len(events)} canary events)"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--events", type=int, default=10_000, help="interactions (feedback: a third more)"
    )
    parser.add_argument("--database-url", default=None, help="default: a SQLite file per run")
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14")
    )
    args = parser.parse_args()
    bench_ingest(args.events, args.database_url, args.redis_url)
    bench_redaction(min(args.events, 5000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
