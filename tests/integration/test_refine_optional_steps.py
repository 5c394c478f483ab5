"""The refine pass on both databases with a small deterministic embedder: the region sample is
portable (no integer overflow, the same sample everywhere), and an optional step that fails
(region failure rates, cluster titles) never stops the proposals, is counted, and is tried again
on the next pass."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from sqlalchemy import select

from refinery.cluster.region import sample_order
from refinery.embed import DEFAULT_MODEL_NAME
from refinery.embed.service import embed_interactions as embed_service
from refinery.ingest.storage import query_hash
from refinery.ops.metrics import REGISTRY
from refinery.store.db import migrate, session_scope
from refinery.store.models import Cluster, Interaction, ProposalRow, utcnow
from tests.unit.test_cluster_service_support import TopicEmbedder, topic_queries

pytestmark = pytest.mark.integration

# Ids near the top of a 32-bit signed integer (the column's type): id * 2654435761, the old
# hash, overflowed here on any database that computes in 64 bits, and on PostgreSQL at any id.
FIRST_ID = 2_147_483_647 - 1_000
P, M = 46_337, 28_657  # the sample hash's modulus and multiplier


class DefaultNameEmbedder(TopicEmbedder):
    """Stores its vectors under the configured model's name, so the tasks read them."""

    name = DEFAULT_MODEL_NAME


def _store(url: str, rows: list[tuple[int, str, str, bool]]) -> None:
    """(id, app_id, query, failing) rows, as ingest stores them, an hour ago."""
    at = utcnow() - timedelta(hours=1)
    with session_scope(url) as session:
        session.add_all(
            Interaction(
                id=i, event_id=f"e-{i}", app_id=app_id, interaction_id=f"i-{i}",
                session_id=f"s-{i}", occurred_at=at, query=query,
                response="Sorry, I cannot help with that.", sources=[],
                query_hash=query_hash(query), failing=failing,
                failure_reasons=["thumbs_down"] if failing else [],
                failure_score=1.0 if failing else 0.0, ingested_at=at,
            )
            for i, app_id, query, failing in rows
        )  # fmt: skip


def _shop(url: str, embedder: TopicEmbedder) -> list[int]:
    """Two failure modes (refunds, passwords) of 12 queries each, embedded, and 60 healthy
    queries (refunds and shipping, not embedded); returns the healthy ids."""
    failing = topic_queries("refund", 12) + topic_queries("password", 12)
    healthy = topic_queries("refund", 30, start=100) + topic_queries("shipping", 30)
    ids = iter(range(FIRST_ID, FIRST_ID + 1000, 7))
    failing_rows = [(next(ids), "shop", q, True) for q in failing]
    healthy_rows = [(next(ids), "shop", q, False) for q in healthy]
    _store(url, failing_rows + healthy_rows)
    with session_scope(url) as session:
        embed_service(session, [r[0] for r in failing_rows], embedder)
    return [r[0] for r in healthy_rows]


@pytest.fixture
def shop(db_url, make_settings, activate, monkeypatch):
    """The shop app's data on `db_url`, the process's settings pointing at it (eager Celery), and
    the tasks embedding with the small embedder. Yields a function to re-activate settings."""
    migrate(db_url)
    embedder = DefaultNameEmbedder()
    monkeypatch.setattr("workers.tasks.get_embedder", lambda settings: embedder)
    healthy = _shop(db_url, embedder)

    def configure(**overrides):
        return activate(make_settings(database_url=db_url, **overrides))

    configure(region_sample_size=20)
    return {"url": db_url, "healthy": healthy, "configure": configure}


def _failures(step: str) -> float:
    return REGISTRY.get_sample_value("refinery_optional_step_failures_total", {"step": step}) or 0.0


def _proposals(url: str) -> list[ProposalRow]:
    with session_scope(url) as session:
        rows = session.scalars(select(ProposalRow).where(ProposalRow.app_id == "shop")).all()
        session.expunge_all()
        return list(rows)


def _region_rates(url: str) -> list[float | None]:
    with session_scope(url) as session:
        return list(
            session.scalars(
                select(Cluster.region_failure_rate)
                .where(Cluster.app_id == "shop", Cluster.active.is_(True))
                .order_by(Cluster.id)
            )
        )


def test_region_sample_is_portable_and_deterministic(shop) -> None:
    from workers.tasks import cluster_app, refresh_region_rates

    url = shop["url"]
    cluster_app.apply(args=("shop",)).get()
    first = refresh_region_rates.apply(args=("shop",)).get()
    assert (first["sampled"], first["non_failing"]) == (20, 60)
    assert first["clusters"] == 2 and first["changed"] is True
    rates = _region_rates(url)
    assert all(rate is not None for rate in rates)
    again = refresh_region_rates.apply(args=("shop",)).get()
    assert again["changed"] is False and _region_rates(url) == rates, "the same sample again"

    # The database orders by the same hash Python computes: the sample is the same everywhere.
    with session_scope(url) as session:
        drawn = list(
            session.scalars(
                select(Interaction.id)
                .where(Interaction.id.in_(shop["healthy"]))
                .order_by(sample_order(Interaction.id), Interaction.id)
                .limit(20)
            )
        )
    assert drawn == sorted(shop["healthy"], key=lambda i: ((i % P) * M % P, i))[:20]
    assert min(drawn) < FIRST_ID + 250 < max(drawn), "spread over the ids, not the first ones"


def test_failing_region_rates_leave_the_proposals_and_run_again_next_pass(
    shop, monkeypatch, caplog
) -> None:
    from workers import tasks

    url, before = shop["url"], _failures("region_rates")

    def broken(*args, **kwargs):
        raise RuntimeError("region sample exploded")

    monkeypatch.setattr(tasks, "region_service", broken)
    with caplog.at_level(logging.ERROR, logger="refinery.ops.optional"):
        assert tasks.refine_all_apps.apply().get() == ["shop"]
    assert len(_proposals(url)) == 2, "one proposal per failure mode, region rates or not"
    assert _failures("region_rates") == before + 1
    (record,) = [r for r in caplog.records if r.name == "refinery.ops.optional"]
    assert "region_rates" in record.getMessage() and "shop" in record.getMessage()
    assert _region_rates(url) == [None, None]

    # The next pass tries again; the new rates reach the proposals' evidence.
    monkeypatch.undo()
    monkeypatch.setattr("workers.tasks.get_embedder", lambda settings: DefaultNameEmbedder())
    tasks.refine_all_apps.apply().get()
    assert all(rate is not None for rate in _region_rates(url))
    proposals = _proposals(url)
    assert len(proposals) == 2
    assert all(p.payload["evidence"]["region_failure_rate"] is not None for p in proposals)
    assert _failures("region_rates") == before + 1


def test_an_unreachable_title_endpoint_leaves_the_proposals(shop, caplog) -> None:
    from workers import tasks

    # Port 9 (discard) refuses connections: every title request fails at once.
    shop["configure"](region_sample_size=0, cluster_title_endpoint="http://127.0.0.1:9/v1")
    url, before = shop["url"], _failures("cluster_titles")
    with caplog.at_level(logging.ERROR, logger="refinery.ops.optional"):
        assert tasks.refine_all_apps.apply().get() == ["shop"]
    assert len(_proposals(url)) == 2
    assert _failures("cluster_titles") == before + 1, "counted once per re-cluster, not per cluster"
    (record,) = [r for r in caplog.records if r.name == "refinery.ops.optional"]
    assert "cluster_titles" in record.getMessage() and "shop" in record.getMessage()
    with session_scope(url) as session:
        titles = session.scalars(select(Cluster.title).where(Cluster.app_id == "shop")).all()
    assert titles and not any(titles), "untitled, so the next re-cluster asks again"
