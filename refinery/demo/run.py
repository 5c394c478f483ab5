"""`refinery demo`: the whole pipeline end to end on the synthetic workload, then the queue.

Uses whatever services are configured (KAFKA_BOOTSTRAP_SERVERS, REDIS_URL, DATABASE_URL) and the
embedded default for the rest. With REDIS_URL set, a real `refinery worker` process is started
for the run, so tasks cross the Redis broker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter

from sqlalchemy import func, select

from refinery.demo.workload import APP_ID, generate
from refinery.embed import embedding_model_name
from refinery.ingest.consumer import IngestConsumer
from refinery.kafka.clients import make_consumer, make_producer
from refinery.review.service import ProposalFilter, list_proposals
from refinery.runtime import celery_enqueue, start_runtime
from refinery.settings import Settings
from refinery.store.models import Embedding, Interaction


def run_demo(settings: Settings, *, out=sys.stdout) -> int:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    runtime = start_runtime(settings)
    settings = runtime.settings
    for note in runtime.notes:
        print(f"[demo] {note}", file=out)
    worker = None
    try:
        if not settings.celery_eager:
            worker = _start_worker(settings)
        work = generate()
        producer = make_producer(settings)
        for event in work.interactions:
            producer.send(
                settings.topic_interactions, key=APP_ID.encode(), value=json.dumps(event).encode()
            )
        for event in work.feedback:
            producer.send(
                settings.topic_feedback, key=APP_ID.encode(), value=json.dumps(event).encode()
            )
        for raw in work.invalid:
            producer.send(settings.topic_interactions, key=APP_ID.encode(), value=raw)
        producer.flush()
        print(
            f"[demo] produced {len(work.interactions)} interactions, {len(work.feedback)} feedback "
            f"events, {len(work.invalid)} invalid events",
            file=out,
        )
        model = embedding_model_name(settings)
        consumer = IngestConsumer(
            settings,
            consumer=make_consumer(
                settings,
                settings.topic_interactions,
                settings.topic_feedback,
                group_id=f"{settings.ingest_group_id}-demo",
            ),
            producer=producer,
            sessions=runtime.sessions,
            enqueue=celery_enqueue(settings),
            embedding_model=model,
        )
        stats = consumer.run(until_caught_up=True)
        consumer.close()
        producer.close()
        print(
            f"[demo] ingested {stats.consumed} records: {stats.stored} stored, {stats.duplicates} "
            f"duplicates, dead-lettered {dict(stats.dead_lettered)}, {stats.enqueued} failing "
            "queued for embedding",
            file=out,
        )
        _wait_for_embeddings(runtime.sessions, model)
        _refine(settings)
        _print_queue(runtime.sessions, work.planted, out)
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        runtime.close()
    print(f"[demo] done in {time.perf_counter() - started:.1f} s", file=out)
    return 0


def _start_worker(settings: Settings) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers or ""}
    return subprocess.Popen(
        [sys.executable, "-m", "refinery.cli", "worker", "--pool", "solo", "--loglevel", "WARNING"],
        env=env,
    )


def _wait_for_embeddings(sessions, model: str, timeout_s: float = 600) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        with sessions() as session:
            missing = session.scalar(
                select(func.count(Interaction.id))
                .outerjoin(
                    Embedding,
                    (Embedding.text_hash == Interaction.query_hash) & (Embedding.model == model),
                )
                .where(Interaction.failing.is_(True), Embedding.text_hash.is_(None))
            )
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{missing} failing interactions still without embeddings")
        time.sleep(0.5)


def _refine(settings: Settings) -> None:
    from workers.tasks import cluster_app, propose_for_app

    if settings.celery_eager:
        cluster_app.apply(args=(APP_ID,)).get()
        propose_for_app.apply(args=(APP_ID,)).get()
    else:
        cluster_app.apply_async(args=(APP_ID,)).get(timeout=600)
        propose_for_app.apply_async(args=(APP_ID,)).get(timeout=600)


def _print_queue(sessions, planted: dict[str, str], out) -> None:  # type: ignore[no-untyped-def]
    with sessions() as session:
        rows, total = list_proposals(
            session, ProposalFilter(app_id=APP_ID, status="pending"), limit=100
        )
        modes_by_cluster: dict[str, Counter[str]] = {}
        for cluster_id, mode in session.execute(
            select(Interaction.cluster_id, Interaction.metadata_).where(
                Interaction.app_id == APP_ID, Interaction.cluster_id.is_not(None)
            )
        ):
            modes_by_cluster.setdefault(cluster_id, Counter())[mode.get("mode", "?")] += 1
    print(f"\nReview queue for {APP_ID}: {total} pending proposal(s)\n", file=out)
    print(f"{'ID':<20} {'KIND':<19} {'SIZE':>4}  {'PLANTED MODE (share)':<28} TITLE", file=out)
    found: dict[str, str] = {}
    for row in rows:
        modes = modes_by_cluster.get(row.cluster_id, Counter())
        mode, count = modes.most_common(1)[0] if modes else ("?", 0)
        share = count / max(sum(modes.values()), 1)
        found[mode] = row.kind
        size = row.payload["evidence"]["size"]
        print(
            f"{row.id:<20} {row.kind:<19} {size:>4}  {f'{mode} ({share:.0%})':<28} {row.title}",
            file=out,
        )
    print("", file=out)
    for mode, kind in planted.items():
        verdict = "ok" if found.get(mode) == kind else "MISSING"
        print(f"[demo] planted {mode:<14} -> expected {kind:<19} {verdict}", file=out)
    healthy = found.get("healthy")
    verdict = "no proposal (ok)" if healthy is None else "PROPOSAL: " + healthy
    print(
        f"[demo] healthy traffic -> {verdict}",
        file=out,
    )
    print("[demo] inspect with: refinery review list / refinery review show ID", file=out)
