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
from pathlib import Path

from sqlalchemy import func, select

from refinery.corpus.store import register_path
from refinery.demo.workload import APP_ID, PROMPT_NAME, SHIPPED_FIXES, Workload, generate
from refinery.dispatch import dispatcher
from refinery.embed import embedding_model_name
from refinery.embed.service import query_vector
from refinery.ingest.consumer import IngestConsumer
from refinery.kafka.clients import make_producer
from refinery.review.service import ProposalFilter, list_proposals
from refinery.runtime import celery_enqueue, start_runtime
from refinery.settings import Settings
from refinery.store.models import Embedding, Interaction, ProposalRow, RefinementImpact, utcnow
from refinery.store.prompts import current_prompt

DEMO_CORPUS = Path(__file__).parent / "corpus"  # help-center articles the app could index


def run_demo(settings: Settings, *, out=sys.stdout) -> int:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    runtime = start_runtime(settings)
    settings = runtime.settings
    for note in runtime.notes:
        print(f"[demo] {note}", file=out)
    if _already_ran(runtime.sessions):
        print(
            f"[demo] this database already holds a demo run ({APP_ID}): its events would all be"
            " duplicates and its queue is decided. `make demo` starts from a new var/refinery.db;"
            " else point DATABASE_URL at an empty database.",
            file=out,
        )
        runtime.close()
        return 1
    worker = None
    try:
        if not settings.celery_eager:
            worker = _start_worker(settings)
        work = generate()
        model = embedding_model_name(settings)
        _produce_and_ingest(settings, runtime.sessions, work, out)
        corpus = register_path(runtime.sessions, settings, APP_ID, DEMO_CORPUS, replace=True)
        print(
            f"[demo] candidate corpus: {corpus.documents} documents, {corpus.chunks} chunks",
            file=out,
        )
        _wait_for_embeddings(runtime.sessions, model)
        _refine(settings)
        _print_queue(runtime.sessions, work.planted, out)
        _ship_and_judge(settings, runtime.sessions, work.planted, out)
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        runtime.close()
    print(f"[demo] done in {time.perf_counter() - started:.1f} s", file=out)
    return 0


def _already_ran(sessions) -> bool:  # type: ignore[no-untyped-def]
    with sessions() as session:
        return (
            session.scalar(select(Interaction.id).where(Interaction.app_id == APP_ID).limit(1))
            is not None
        )


def _produce_and_ingest(settings: Settings, sessions, work: Workload, out) -> None:  # type: ignore[no-untyped-def]
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
    consumer = IngestConsumer.on_event_topics(
        settings,
        producer=producer,
        sessions=sessions,
        enqueue=celery_enqueue(settings),
        group_id=f"{settings.ingest_group_id}-demo",
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


def _ship_and_judge(settings: Settings, sessions, planted: dict[str, str], out) -> None:  # type: ignore[no-untyped-def]
    """The loop closed: a reviewer approves the queue; the app ships a new prompt version (the
    behaviour fix, found from its traffic) and a new help-center source (the knowledge gap,
    reported applied by the indexer), not the dataset; traffic continues; each verdict."""
    from refinery.impact.review_calls import approve, report_applied

    with sessions() as session:
        pending = list_proposals(
            session, ProposalFilter(app_id=APP_ID, status="pending"), limit=100
        )[0]
    kinds = {row.id: row.kind for row in pending}
    for proposal_id in kinds:
        approve(sessions, proposal_id, actor="demo-reviewer", topic=settings.topic_approved)
    shipped = {kind for mode, kind in planted.items() if mode in SHIPPED_FIXES}
    for proposal_id, kind in kinds.items():
        if kind == "rag_source" and kind in shipped:
            report_applied(sessions, proposal_id, actor="nimbus-indexer", comment="source indexed")
    with sessions() as session:
        prompt = current_prompt(session, app_id=APP_ID, name=PROMPT_NAME)
        assert prompt is not None
        version, text = prompt.version, prompt.text
    print(
        f"\n[demo] approved {len(kinds)} proposal(s); the app ships prompt {PROMPT_NAME} {version} "
        "and a refurbished-warranty source; the dataset is not trained on",
        file=out,
    )
    after = generate(
        healthy=100, per_mode=40, start=utcnow(), spacing_s=1.0, prompt=(version, text),
        fixed=SHIPPED_FIXES, tag="-after",
    )  # fmt: skip
    after.invalid = []
    _produce_and_ingest(settings, sessions, after, out)
    _wait_for_embeddings(sessions, embedding_model_name(settings))
    _impact(settings)
    with sessions() as session:
        rows = session.execute(
            select(ProposalRow, RefinementImpact)
            .join(RefinementImpact, RefinementImpact.proposal_id == ProposalRow.id)
            .where(ProposalRow.id.in_(list(kinds)))
            .order_by(ProposalRow.kind)
        ).all()
    print(f"\nDid it help? ({APP_ID})\n", file=out)
    for row, impact in rows:
        d = impact.detail
        counts = (
            f"failing {d['before']['failing']}/{d['before']['total']} -> "
            f"{d['after']['failing']}/{d['after']['total']}, P(better) {d['p_improved']:.2f}, "
            f"change {d['diff_low']:+.2f} to {d['diff_high']:+.2f}"
            if "before" in d
            else "not shipped"
        )
        how = f" ({impact.applied_how})" if impact.applied_how else ""
        print(f"[demo] {row.kind:<19} {impact.verdict:<16}{how:<11} {counts}", file=out)
    print(f"[demo] the picture: refinery api, then /ui/apps/{APP_ID}", file=out)


def _impact(settings: Settings) -> None:
    dispatcher(settings).run("refresh_impact", APP_ID)


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
                    query_vector(model),
                )
                .where(Interaction.failing.is_(True), Embedding.text_hash.is_(None))
            )
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{missing} failing interactions still without embeddings")
        time.sleep(0.5)


def _refine(settings: Settings) -> None:
    dispatcher(settings).run("cluster_app", APP_ID)
    dispatcher(settings).run("propose_for_app", APP_ID)


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
        for doc in row.payload["artifact"].get("candidate_documents") or []:
            print(f"{'':<20} candidate document: {doc['doc_id']} ({doc['score']:.2f})", file=out)
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
