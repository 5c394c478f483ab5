"""Freshness: seconds from a failing event produced to Kafka to its cluster assignment visible in
the database, p50/p95, at a steady event rate. Prints figures; asserts nothing.

    python bench/bench_freshness.py [--rate 1000] [--seconds 30] [--failing 0.15]
                                    [--database sqlite|postgres] [--rephrase-detection]

The real roles over real services: a Tansu broker (refinery.kafka.embedded), `refinery ingest`,
`refinery worker` and `refinery beat` as processes over Redis (DB 13, flushed), SQLite or
PostgreSQL. The workload is CLINC150: 20 intents are the app's failure modes, the other intents
its healthy traffic. First an initial batch (the failure modes' training queries, thumbs-down)
goes through the pipeline and one re-cluster creates the clusters; then interactions stream at a
steady rate, a share of them followed at once by a thumbs-down (that event makes it fail, so its
send time is the start of the clock). Failing queries repeat (users ask the same things), so
both paths are measured: new texts embedded by the worker and cached ones placed without it.

A poller reads the interactions table every 100 ms; "visible" is the first poll that sees the
cluster id. Also shown: the same from the worker's own cluster_checked_at stamp (no polling lag).
Rephrase detection (REPHRASE_DETECTION_ENABLED) embeds every turn of every session on the embed
queue; it is off unless --rephrase-detection, and the output says which.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

APP_ID = "freshness-bench"
FAILURE_INTENTS = 20
INITIAL_PER_INTENT = 40
SEED = 4


@dataclass
class Workload:
    failing_initial: list[str]
    failing_stream: list[str]
    healthy: list[str]


@dataclass
class Tracker:
    """Send times of the failing events and when their outcome was first seen."""

    sent: dict[str, float] = field(default_factory=dict)  # interaction id -> wall time of send
    seen_assigned: dict[str, float] = field(default_factory=dict)  # first poll with a cluster
    checked_at: dict[str, float] = field(default_factory=dict)  # worker's stamp (placed at)
    outliers: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the steady phase")
    parser.add_argument("--failing", type=float, default=0.15, help="share of failing interactions")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    # As deployed (docker-compose.yml, deploy/k8s/worker.yaml): one prefork process per CPU,
    # one torch thread each.
    parser.add_argument("--worker-concurrency", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--omp-threads", type=int, default=1, help="OMP_NUM_THREADS of the worker")
    parser.add_argument("--int8", action="store_true", help="EMBEDDING_INT8=true")
    parser.add_argument("--rephrase-detection", action="store_true")
    parser.add_argument(
        "--clinc",
        type=Path,
        default=Path(os.environ.get("CLINC150_PATH", "/work/shared/data/clinc150/data_full.json")),
    )
    parser.add_argument("--drain-s", type=float, default=60.0, help="wait for stragglers")
    args = parser.parse_args()

    import redis

    from refinery.kafka.embedded import start_embedded_broker
    from refinery.runtime import start_runtime
    from refinery.scenario.roles import Roles, fresh_database
    from refinery.settings import Settings

    workload = _workload(args.clinc)
    client = redis.Redis.from_url(args.redis_url)
    client.ping()
    client.flushdb()
    tmp = Path(tempfile.mkdtemp(prefix="refinery-freshness-"))
    stack = contextlib.ExitStack()
    database_url = stack.enter_context(fresh_database(args.database, tmp))
    broker = start_embedded_broker()
    suffix = uuid.uuid4().hex[:8]
    env_settings = {
        "kafka_bootstrap_servers": broker.bootstrap_servers,
        "redis_url": args.redis_url,
        "database_url": database_url,
        "topic_interactions": f"fresh-{suffix}.interactions",
        "topic_feedback": f"fresh-{suffix}.feedback",
        "topic_dead_letter": f"fresh-{suffix}.dead-letter",
        "topic_approved": f"fresh-{suffix}.approved",
        "ingest_group_id": f"fresh-{suffix}",
        "cluster_assign_interval_s": 1.0,
        "rephrase_detection_enabled": args.rephrase_detection,
        "embedding_int8": args.int8,
        "redaction_enabled": True,
    }
    settings = Settings(_env_file=None, **env_settings)
    runtime = start_runtime(settings)
    roles = stack.enter_context(Roles(_role_env(env_settings), tmp))
    roles.env["OMP_NUM_THREADS"] = str(args.omp_threads)
    try:
        roles.start("worker", "--pool", "prefork", "--concurrency", str(args.worker_concurrency),
                    "--loglevel", "WARNING")  # fmt: skip
        roles.start("ingest")
        roles.start("beat", "--loglevel", "WARNING")
        producer = _producer(broker.bootstrap_servers)
        print(
            f"roles: ingest, worker (prefork x{args.worker_concurrency}, OMP_NUM_THREADS="
            f"{args.omp_threads}), beat; broker Tansu at {broker.bootstrap_servers}; Redis "
            f"{args.redis_url}; database {args.database}; embeddings "
            f"{'int8' if args.int8 else 'fp32'}; rephrase detection "
            f"{'on' if args.rephrase_detection else 'off'}; cores {os.cpu_count()}, load average "
            f"{os.getloadavg()[0]:.1f} before the run"
        )

        # 1. The initial batch, then one re-cluster: the clusters new queries can join.
        started = time.perf_counter()
        for n, query in enumerate(workload.failing_initial):
            _send_pair(producer, settings, f"init-{n}", query, failing=True)
        producer.flush()
        _wait_placed(runtime.sessions, len(workload.failing_initial), timeout_s=600)
        from celery import Celery

        celery = Celery("bench", broker=args.redis_url, backend=args.redis_url)
        run = celery.send_task("refinery.cluster_app", args=(APP_ID,), queue="cluster").get(
            timeout=600
        )
        print(
            f"initial batch: {len(workload.failing_initial)} failing queries embedded, then "
            f"re-clustered into {run['clusters']} clusters ({run['outliers']} outliers) in "
            f"{time.perf_counter() - started:.1f} s"
        )

        # 2. The steady phase.
        tracker = Tracker()
        stop = threading.Event()
        poller = threading.Thread(target=_poll, args=(runtime.sessions, tracker, stop), daemon=True)
        poller.start()
        produced = _produce_steady(producer, settings, workload, tracker, args)
        print(
            f"steady phase: {produced['events']:,} events in {produced['seconds']:.1f} s "
            f"({produced['events'] / produced['seconds']:,.0f} events/s; target {args.rate:,.0f}), "
            f"{produced['interactions']:,} interactions, {produced['failing']:,} failing "
            f"({produced['failing'] / produced['interactions']:.0%})"
        )
        deadline = time.monotonic() + args.drain_s
        while time.monotonic() < deadline:
            with tracker.lock:
                done = len(tracker.checked_at)
            if done >= len(tracker.sent):
                break
            time.sleep(0.5)
        time.sleep(0.3)
        stop.set()
        poller.join()
        _report(tracker, _unplaced(runtime.sessions, tracker))
    finally:
        roles.stop()
        runtime.close()
        broker.stop()
        client.flushdb()
        client.close()
        stack.close()  # drops the database
        print(f"logs: {tmp}")


# --- workload ---------------------------------------------------------------------------------


def _workload(path: Path) -> Workload:
    data = json.loads(path.read_text())
    intents = sorted({i for _, i in data["train"]})
    rng = random.Random(SEED)
    failing = set(rng.sample(intents, FAILURE_INTENTS))
    initial = [t for i in sorted(failing) for t in [t for t, x in data["train"] if x == i][
        :INITIAL_PER_INTENT]]  # fmt: skip
    stream = [t for split in ("test", "val") for t, i in data[split] if i in failing]
    healthy = [t for split in ("train", "test", "val") for t, i in data[split] if i not in failing]
    rng.shuffle(stream)
    rng.shuffle(healthy)
    return Workload(initial, stream, healthy)


def _producer(bootstrap: str):  # type: ignore[no-untyped-def]
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5, batch_size=65536)


def _send_pair(producer, settings, iid: str, query: str, *, failing: bool) -> None:  # type: ignore[no-untyped-def]
    now = datetime.now(UTC).isoformat()
    key = APP_ID.encode()
    producer.send(settings.topic_interactions, key=key, value=json.dumps({
        "event_id": f"i-{iid}", "app_id": APP_ID, "occurred_at": now, "session_id": f"s-{iid}",
        "interaction_id": iid, "query": query, "response": "Here is what I found.",
    }).encode())  # fmt: skip
    if failing:
        producer.send(settings.topic_feedback, key=key, value=json.dumps({
            "event_id": f"f-{iid}", "app_id": APP_ID, "occurred_at": now, "interaction_id": iid,
            "kind": "thumbs_down",
        }).encode())  # fmt: skip


def _produce_steady(producer, settings, workload: Workload, tracker: Tracker, args) -> dict:  # type: ignore[no-untyped-def]
    """Interactions at rate / (1 + failing) per second, each failing one followed by its
    thumbs-down, in 10 ms ticks: `rate` events per second in all."""
    rng = random.Random(SEED + 1)
    tick_s = 0.01
    per_tick = args.rate * tick_s / (1 + args.failing)
    owed = 0.0
    counts = {"events": 0, "interactions": 0, "failing": 0}
    start = time.perf_counter()
    next_tick = start
    n = 0
    while time.perf_counter() - start < args.seconds:
        owed += per_tick
        while owed >= 1:
            owed -= 1
            n += 1
            iid = f"s-{n}"
            failing = rng.random() < args.failing
            pool = workload.failing_stream if failing else workload.healthy
            query = pool[n % len(pool)]
            _send_pair(producer, settings, iid, query, failing=failing)
            counts["interactions"] += 1
            counts["events"] += 2 if failing else 1
            if failing:
                counts["failing"] += 1
                with tracker.lock:
                    tracker.sent[iid] = time.time()
        next_tick += tick_s
        delay = next_tick - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    producer.flush()
    counts["seconds"] = time.perf_counter() - start
    return counts


# --- observing ----------------------------------------------------------------------------------


def _poll(sessions, tracker: Tracker, stop: threading.Event) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from refinery.store.models import Interaction

    since = datetime(1970, 1, 1, tzinfo=UTC)
    while not stop.is_set():
        with sessions() as session:
            rows = session.execute(
                select(
                    Interaction.interaction_id, Interaction.cluster_id,
                    Interaction.cluster_checked_at,
                ).where(
                    Interaction.app_id == APP_ID,
                    Interaction.failing.is_(True),
                    Interaction.cluster_checked_at >= since,
                )
            ).all()  # fmt: skip
        now = time.time()
        with tracker.lock:
            for iid, cluster_id, checked_at in rows:
                if iid not in tracker.sent or iid in tracker.checked_at:
                    continue
                stamp = checked_at if checked_at.tzinfo else checked_at.replace(tzinfo=UTC)
                tracker.checked_at[iid] = stamp.timestamp()
                if cluster_id is not None:
                    tracker.seen_assigned[iid] = now
                else:
                    tracker.outliers.add(iid)
            if rows:
                latest = max(r.cluster_checked_at for r in rows)
                latest = latest if latest.tzinfo else latest.replace(tzinfo=UTC)
                # Overlap by a few seconds: a row stamped earlier may commit later.
                since = datetime.fromtimestamp(latest.timestamp() - 5, UTC)
        stop.wait(0.1)


def _wait_placed(sessions, expected: int, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import func, select

    from refinery.store.models import Interaction

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with sessions() as session:
            placed = session.scalar(
                select(func.count()).where(
                    Interaction.app_id == APP_ID,
                    Interaction.failing.is_(True),
                    Interaction.cluster_checked_at.is_not(None),
                )
            )
        if placed >= expected:
            return
        time.sleep(0.5)
    raise TimeoutError(f"initial batch: {placed}/{expected} failing queries placed")


def _unplaced(sessions, tracker: Tracker) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Why the failing interactions the poller never saw placed were not: their state now."""
    from sqlalchemy import select

    from refinery.store.models import Embedding, Interaction

    missing = sorted(set(tracker.sent) - set(tracker.checked_at))
    why: dict[str, int] = {}
    with sessions() as session:
        for start in range(0, len(missing), 500):
            for row in session.execute(
                select(Interaction.failing, Interaction.cluster_checked_at, Embedding.text_hash)
                .outerjoin(Embedding, Embedding.text_hash == Interaction.query_hash)
                .where(
                    Interaction.app_id == APP_ID,
                    Interaction.interaction_id.in_(missing[start : start + 500]),
                )
            ):
                if row.cluster_checked_at is not None:
                    reason = "placed, but after the poller had moved on"
                elif not row.failing:
                    reason = "not failing in the database"
                elif row.text_hash is None:
                    reason = "failing, no vector yet"
                else:
                    reason = "failing with a vector, still due"
                why[reason] = why.get(reason, 0) + 1
    found = sum(why.values())
    if found < len(missing):
        why["not stored by ingest"] = len(missing) - found
    return why


def _report(tracker: Tracker, unplaced: dict[str, int]) -> None:
    import numpy as np

    def line(name: str, values: list[float]) -> str:
        if not values:
            return f"| {name} | 0 | - | - | - | - |"
        v = np.array(values)
        return (
            f"| {name} | {len(v):,} | {np.percentile(v, 50):.2f} | {np.percentile(v, 95):.2f} | "
            f"{np.percentile(v, 99):.2f} | {v.max():.2f} |"
        )

    visible = [tracker.seen_assigned[i] - tracker.sent[i] for i in tracker.seen_assigned]
    stamped = [tracker.checked_at[i] - tracker.sent[i] for i in tracker.seen_assigned]
    placed = [tracker.checked_at[i] - tracker.sent[i] for i in tracker.checked_at]
    never = len(tracker.sent) - len(tracker.checked_at)
    print(
        f"\nfailing events sent {len(tracker.sent):,}: assigned to a cluster "
        f"{len(tracker.seen_assigned):,}, left in the outlier pool {len(tracker.outliers):,}, "
        f"not seen placed by the end {never:,}"
        + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(unplaced.items()))})" if never else "")
    )
    print("| seconds from thumbs-down produced to ... | n | p50 | p95 | p99 | max |")
    print("|---|---|---|---|---|---|")
    print(line("cluster id visible to a reader (100 ms polls)", visible))
    print(line("cluster id written (worker's stamp)", stamped))
    print(line("placed, cluster or outlier pool (stamp)", placed))


# --- services -----------------------------------------------------------------------------------


def _role_env(values: dict) -> dict[str, str]:  # type: ignore[type-arg]
    """Settings as the environment variables a deployment would set."""
    return {k.upper(): str(v).lower() if isinstance(v, bool) else str(v) for k, v in values.items()}


if __name__ == "__main__":
    main()
