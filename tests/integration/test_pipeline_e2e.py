"""End to end on real parts: events over a Kafka-protocol broker -> ingest -> Celery embed with the
real model -> FAISS clusters -> proposals of all three kinds for the planted failure modes.

Two variants: the embedded default (SQLite, Celery eager, ingest in-process) and the service
deployment (PostgreSQL, Celery over Redis, `refinery ingest` and `refinery worker` processes).
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from sqlalchemy import func, select

from refinery.demo.workload import APP_ID, generate
from refinery.embed import embedding_model_name
from refinery.ingest.consumer import IngestConsumer
from refinery.kafka.clients import make_producer
from refinery.runtime import celery_enqueue, start_runtime
from refinery.store.models import AuditEntry, Feedback, Interaction, ProposalRow
from tests.integration.helpers import produce_workload, start_role, wait_for

pytestmark = pytest.mark.integration

WORKLOAD = dict(seed=11, healthy=160, per_mode=20)


def _assert_proposals(sessions, planted: dict[str, str]) -> dict[str, ProposalRow]:
    with sessions() as session:
        rows = session.scalars(select(ProposalRow).where(ProposalRow.app_id == APP_ID)).all()
        modes: dict[str, Counter[str]] = {}
        for cluster_id, meta in session.execute(
            select(Interaction.cluster_id, Interaction.metadata_).where(
                Interaction.cluster_id.is_not(None)
            )
        ):
            modes.setdefault(cluster_id, Counter())[meta["mode"]] += 1
    assert [r.status for r in rows] == ["pending"] * len(rows)
    by_mode: dict[str, ProposalRow] = {}
    for row in rows:
        mode, count = modes[row.cluster_id].most_common(1)[0]
        assert count / sum(modes[row.cluster_id].values()) >= 0.8, f"{row.kind} cluster is impure"
        assert mode != "healthy", f"healthy traffic got a proposal: {row.title}"
        assert mode not in by_mode, f"two proposals for planted mode {mode}"
        by_mode[mode] = row
    assert {mode: row.kind for mode, row in by_mode.items()} == planted

    rag = by_mode["knowledge_gap"].payload
    assert rag["evidence"]["size"] >= 15
    assert all("refurbished" in q.lower() for q in rag["artifact"]["representative_queries"])
    assert rag["artifact"]["gap_signals"]["no_sources"] >= 15

    edit = by_mode["behaviour"].payload
    assert "+Keep answers brief" in edit["artifact"]["diff"]
    assert edit["artifact"]["base_version"] == "v1"
    assert any(
        f["kind"] == "comment" for ex in edit["evidence"]["examples"] for f in ex["feedback"]
    )

    dataset = by_mode["corrections"].payload["artifact"]
    lines = [json.loads(line) for line in dataset["jsonl"].splitlines()]
    assert len(lines) == dataset["rows"] >= 3
    assert all(
        [m["role"] for m in line["messages"]] == ["system", "user", "assistant"] for line in lines
    )
    users = [line["messages"][1]["content"].lower() for line in lines]
    assert len(users) == len(set(users)), "dataset rows are not deduplicated"
    assert all("restocking" in u for u in users)
    for row in by_mode.values():
        examples = row.payload["evidence"]["examples"]
        assert examples and all(ex["feedback"] for ex in examples)
    return by_mode


def test_embedded_default_sqlite_eager(
    kafka_bootstrap, topics, sqlite_url, make_settings, activate
):
    settings = activate(
        make_settings(kafka_bootstrap_servers=kafka_bootstrap, database_url=sqlite_url, **topics)
    )
    runtime = start_runtime(settings)
    work = generate(**WORKLOAD)
    produce_workload(settings, work)

    def ingest_all():
        consumer = IngestConsumer.on_event_topics(
            settings,
            producer=make_producer(settings),
            sessions=runtime.sessions,
            enqueue=celery_enqueue(settings),
        )
        stats = consumer.run(until_caught_up=True)
        consumer.close()
        return stats

    stats = ingest_all()
    assert stats.consumed == len(work.interactions) + len(work.feedback)
    assert not stats.dead_lettered

    from workers.tasks import cluster_app, propose_for_app

    cluster_app.apply(args=(APP_ID,)).get()
    propose_for_app.apply(args=(APP_ID,)).get()
    first = _assert_proposals(runtime.sessions, work.planted)

    # Idempotent all the way: the same events again, and the tasks again, change nothing.
    produce_workload(settings, work)
    again = ingest_all()
    assert again.stored == 0 and again.duplicates == again.consumed
    assert cluster_app.apply(args=(APP_ID,)).get()["created"] == 0
    assert propose_for_app.apply(args=(APP_ID,)).get()["created"] == 0
    with runtime.sessions() as session:
        assert session.scalar(select(func.count(Interaction.id))) == len(work.interactions)
        assert session.scalar(select(func.count(Feedback.id))) == len(work.feedback)
        rows = {r.id: r.version for r in session.scalars(select(ProposalRow))}
        assert rows == {r.id: 1 for r in first.values()}
        assert session.scalar(select(func.count(AuditEntry.id))) == 3  # one "create" each
    runtime.close()


def test_services_postgres_redis_worker_processes(
    kafka_bootstrap, topics, postgres_url, redis_url, make_settings, activate, tmp_path
):
    settings = activate(
        make_settings(
            kafka_bootstrap_servers=kafka_bootstrap,
            database_url=postgres_url,
            redis_url=redis_url,
            **topics,
        )
    )
    runtime = start_runtime(settings)
    work = generate(**WORKLOAD)
    produce_workload(settings, work)
    worker = start_role(settings, "worker", "--pool", "solo", log_path=tmp_path / "worker.log")
    ingest = start_role(settings, "ingest", log_path=tmp_path / "ingest.log")
    try:
        model = embedding_model_name(settings)

        def all_failing_embedded() -> bool:
            from refinery.store.models import Embedding

            with runtime.sessions() as session:
                failing = session.scalar(select(func.count()).where(Interaction.failing.is_(True)))
                missing = session.scalar(
                    select(func.count(Interaction.id))
                    .outerjoin(
                        Embedding,
                        (Embedding.text_hash == Interaction.query_hash)
                        & (Embedding.model == model),
                    )
                    .where(Interaction.failing.is_(True), Embedding.text_hash.is_(None))
                )
                stored = session.scalar(select(func.count(Interaction.id)))
            return stored == len(work.interactions) and failing >= 60 and missing == 0

        wait_for(all_failing_embedded, timeout_s=180, what="ingest + embedding by the worker")
        from celery import Celery

        # A plain client of the same Redis broker: what any other service would use.
        app = Celery("client", broker=redis_url, backend=redis_url)
        app.send_task("refinery.cluster_app", args=(APP_ID,), queue="cluster").get(timeout=120)
        app.send_task("refinery.propose_for_app", args=(APP_ID,), queue="propose").get(timeout=120)
        _assert_proposals(runtime.sessions, work.planted)
    finally:
        for process in (ingest, worker):
            process.terminate()
            process.wait(timeout=30)
        runtime.close()
        print((tmp_path / "worker.log").read_text()[-3000:])
