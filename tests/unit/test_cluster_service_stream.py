"""Between re-clusters: streaming assignment and the outlier pool, trends and the emerging flag,
region failure rates, the embedding cache, and what proposal evidence carries of them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import select

from refinery.cluster.assign import apps_with_due, assign_due
from refinery.cluster.region import refresh_region_rates
from refinery.cluster.service import recluster_app
from refinery.cluster.trends import bucket_start, compute_trend, growth
from refinery.embed import embedding_model_name
from refinery.embed.service import embed_interactions
from refinery.propose.service import propose_for_app
from refinery.store.models import Embedding, Interaction, ProposalRow
from schemas.proposals import Evidence
from tests.unit.test_cluster_service_support import (
    MODEL,
    NOW,
    TopicEmbedder,
    add_interactions,
    cluster_of,
    clusters_of,
    make_db,
    settings,
    topic_queries,
)

DAY = 86400.0


def _vectors(session, ids: list[int]) -> np.ndarray:
    rows = session.execute(
        select(Embedding.vector)
        .join(Interaction, Interaction.query_hash == Embedding.text_hash)
        .where(Interaction.id.in_(ids), Embedding.model == MODEL)
    ).all()
    return np.stack([np.frombuffer(r.vector, dtype=np.float32) for r in rows])


def test_streaming_assignment_and_the_outlier_pool(tmp_path) -> None:
    sessions, embedder = make_db(tmp_path), TopicEmbedder()
    cfg = settings()
    with sessions() as session:
        refund = add_interactions(session, "shop", topic_queries("refund", 10), embedder=embedder)
        add_interactions(session, "shop", topic_queries("password", 10), embedder=embedder)
        recluster_app(session, "shop", cfg, MODEL, now=NOW)
        refund_id = cluster_of(session, refund)[refund[0]]
        assert apps_with_due(session) == []

        # New failing queries: three about refunds, two about nothing the app has seen.
        new_refund = add_interactions(session, "shop", topic_queries("refund", 3, start=50),
                                      embedder=embedder)  # fmt: skip
        strays = add_interactions(session, "shop", ["zebra kayak", "violin lesson"],
                                  embedder=embedder)  # fmt: skip
        # Failing but not embedded yet: due, and left alone until it has a vector.
        waiting = add_interactions(session, "shop", topic_queries("refund", 1, start=90))
        assert apps_with_due(session) == ["shop"]

        placed = assign_due(session, "shop", cfg, MODEL, now=NOW + timedelta(seconds=1))
        assert (placed.assigned, placed.outliers) == (3, 2)
        assert placed.clusters == {refund_id: 3}
        assert set(cluster_of(session, new_refund).values()) == {refund_id}
        assert cluster_of(session, strays + waiting) == {i: None for i in strays + waiting}
        stray_rows = [session.get(Interaction, i) for i in strays + waiting]
        assert [r.cluster_checked_at is not None for r in stray_rows] == [True, True, False]

        # Size and centroid describe the members, exactly.
        cluster = clusters_of(session, "shop")[refund_id]
        members = _vectors(session, refund + new_refund)
        assert cluster.size == 13
        assert np.allclose(np.frombuffer(cluster.vector_sum, np.float32), members.sum(0), atol=1e-4)
        total = members.sum(0)
        assert np.allclose(np.frombuffer(cluster.centroid, np.float32),
                           total / np.linalg.norm(total), atol=1e-5)  # fmt: skip

        # Idempotent: nothing is due twice.
        again = assign_due(session, "shop", cfg, MODEL)
        assert (again.assigned, again.outliers) == (0, 0)
        embed_interactions(session, waiting, embedder)
        late = assign_due(session, "shop", cfg, MODEL)
        assert (late.assigned, late.outliers) == (1, 0)

        # The outlier pool waits for the next re-cluster, which looks at it again: a new failure
        # mode (warranty questions) fits no cluster while it streams in, then becomes one.
        warranty = add_interactions(session, "shop", topic_queries("warranty", 6),
                                    embedder=embedder)  # fmt: skip
        assert assign_due(session, "shop", cfg, MODEL).outliers == 6
        assert cluster_of(session, warranty) == {i: None for i in warranty}
        run = recluster_app(session, "shop", cfg, MODEL, now=NOW + timedelta(minutes=5))
        assert run.created == 1 and run.kept == 2
        (new_id,) = set(cluster_of(session, warranty).values())
        assert new_id is not None and new_id not in {refund_id}
        assert set(cluster_of(session, refund + new_refund + waiting).values()) == {refund_id}


def test_assignment_threshold_and_no_clusters(tmp_path) -> None:
    sessions, embedder = make_db(tmp_path), TopicEmbedder()
    with sessions() as session:
        ids = add_interactions(session, "shop", topic_queries("refund", 3), embedder=embedder)
        # No cluster yet: everything goes to the outlier pool (and is not due any more).
        result = assign_due(session, "shop", settings(), MODEL)
        assert (result.assigned, result.outliers) == (0, 3)
        add_interactions(session, "shop", topic_queries("refund", 10, start=10), embedder=embedder)
        recluster_app(session, "shop", settings(), MODEL, now=NOW)
        assert set(cluster_of(session, ids).values()) != {None}, "the re-cluster took them in"
        # A threshold above any similarity keeps new queries out.
        new = add_interactions(session, "shop", topic_queries("refund", 2, start=70),
                               embedder=embedder)  # fmt: skip
        strict = assign_due(session, "shop", settings(cluster_assign_similarity=0.999), MODEL)
        assert (strict.assigned, strict.outliers) == (0, 2)
        assert cluster_of(session, new) == {i: None for i in new}


# --- trends -------------------------------------------------------------------------------------


def _trend(times, now, *, first_seen=None, **overrides):  # type: ignore[no-untyped-def]
    params = dict(bucket_s=DAY, buckets=7, baseline_buckets=3, growth_threshold=1.0, min_count=5,
                  new_within_s=2 * DAY)  # fmt: skip
    return compute_trend(times, first_seen=first_seen, now=now, **(params | overrides))


def test_trend_buckets_are_aligned_and_counted_exactly() -> None:
    now = datetime(2026, 3, 10, 15, 30, tzinfo=UTC)
    day = timedelta(days=1)
    times = (
        [now - 6 * day] * 1  # 2026-03-04: the oldest bucket
        + [now - 3 * day] * 2
        + [datetime(2026, 3, 10, 0, 0, tzinfo=UTC)] * 3  # start of today's bucket
        + [datetime(2026, 3, 9, 23, 59, tzinfo=UTC)]  # yesterday
        + [now + timedelta(minutes=10)]  # a little in the future: today
        + [now - 30 * day]  # before the horizon: not counted
    )
    trend = _trend(times, now, first_seen=now - 40 * day)
    assert [s.isoformat() for s, _ in trend.buckets] == [
        f"2026-03-{d:02d}T00:00:00+00:00" for d in range(4, 11)
    ]
    assert [c for _, c in trend.buckets] == [1, 0, 0, 2, 0, 1, 4]
    assert trend.growth_rate == pytest.approx(growth(4, [2, 0, 1]))
    assert growth(4, [2, 0, 1]) == 3.0  # (4 - 1) / max(1, 1)
    assert not trend.emerging, "4 is below emerging_min_count"
    naive = [t.replace(tzinfo=None) for t in times]  # SQLite hands back naive UTC
    assert _trend(naive, now, first_seen=now - 40 * day).buckets == trend.buckets
    hours = _trend(times, now, bucket_s=3600.0, buckets=3)
    assert [s.hour for s, _ in hours.buckets] == [13, 14, 15]
    assert [c for _, c in hours.buckets] == [0, 0, 1]
    assert bucket_start(now, DAY) == datetime(2026, 3, 10, tzinfo=UTC)


def test_emerging_when_new_or_rising_not_when_flat() -> None:
    now = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)
    day = timedelta(days=1)

    def daily(counts: list[int]) -> list[datetime]:  # oldest day first, today last
        return [now - (len(counts) - 1 - i) * day for i, c in enumerate(counts) for _ in range(c)]

    old = now - 30 * day
    flat = _trend(daily([4, 5, 4, 5, 4, 5, 4]), now, first_seen=old)
    assert (flat.emerging, flat.reason) == (False, None)
    assert flat.growth_rate == pytest.approx((4 - 14 / 3) / (14 / 3), abs=0.01)
    rising = _trend(daily([2, 3, 2, 3, 2, 3, 12]), now, first_seen=old)
    assert (rising.emerging, rising.reason) == (True, "rising")
    assert rising.growth_rate == pytest.approx((12 - 8 / 3) / (8 / 3), abs=0.01)
    # Yesterday's rise still counts while today's bucket fills.
    still = _trend(daily([2, 3, 2, 3, 2, 12, 1]), now, first_seen=old)
    assert (still.emerging, still.reason) == (True, "rising")
    assert still.growth_rate < 0
    # From nothing: a handful is a rise of a handful, not infinite; below min_count it is not one.
    small = _trend(daily([0, 0, 0, 0, 0, 0, 4]), now, first_seen=old)
    assert small.growth_rate == 4.0 and not small.emerging
    new = _trend(daily([0, 0, 0, 0, 0, 1, 1]), now, first_seen=now - day)
    assert (new.emerging, new.reason) == (True, "new")


def test_trends_are_stored_on_clusters(tmp_path) -> None:
    sessions, embedder = make_db(tmp_path), TopicEmbedder()
    cfg = settings(trend_buckets=4, trend_baseline_buckets=2, emerging_new_s=DAY)
    with sessions() as session:

        def add(topic: str, count: int, start: int, ago: timedelta) -> list[int]:
            queries = topic_queries(topic, count, start=start)
            return add_interactions(session, "shop", queries, at=NOW - ago, embedder=embedder)

        steady = []
        for days_ago in (3, 2, 1):
            steady += add("refund", 4, days_ago * 10, timedelta(days=days_ago))
        steady += add("refund", 4, 0, timedelta(hours=1))
        burst = []
        for days_ago in (3, 1):
            burst += add("password", 1, days_ago, timedelta(days=days_ago))
        burst += add("password", 9, 20, timedelta(hours=2))
        recluster_app(session, "shop", cfg, MODEL, now=NOW)
        clusters = clusters_of(session, "shop")
        a = clusters[cluster_of(session, steady)[steady[0]]]
        b = clusters[cluster_of(session, burst)[burst[0]]]
        assert [x["count"] for x in a.trend] == [4, 4, 4, 4]
        assert a.trend[-1]["start"] == "2026-03-10T00:00:00+00:00"
        assert (a.growth_rate, a.emerging, a.emerging_reason) == (0.0, False, None)
        assert [x["count"] for x in b.trend] == [1, 0, 1, 9]
        assert (b.emerging, b.emerging_reason) == (True, "rising")
        assert b.growth_rate == 8.5  # (9 - mean(0, 1)) / max(0.5, 1)
        assert b.first_seen_at is not None


# --- region failure rate ------------------------------------------------------------------------


def test_region_failure_rate_from_a_sample_of_healthy_traffic(tmp_path) -> None:
    sessions, embedder = make_db(tmp_path), TopicEmbedder()
    with sessions() as session:
        refund = add_interactions(session, "shop", topic_queries("refund", 10), embedder=embedder)
        pwd = add_interactions(session, "shop", topic_queries("password", 10), embedder=embedder)
        recluster_app(session, "shop", settings(), MODEL, now=NOW)
        refund_id = cluster_of(session, refund)[refund[0]]
        password_id = cluster_of(session, pwd)[pwd[0]]
        # Healthy traffic, not embedded: 30 refund questions that went fine, 60 elsewhere, and
        # 20 of another app that must not count.
        add_interactions(session, "shop", topic_queries("refund", 30, start=100), failing=False)
        add_interactions(session, "shop", topic_queries("shipping", 60), failing=False)
        add_interactions(session, "other", topic_queries("refund", 20, start=300), failing=False)
        before = embedder.texts_embedded

        full = refresh_region_rates(session, "shop", settings(region_sample_size=1000),
                                    embedder, now=NOW)  # fmt: skip
        assert (full.sampled, full.non_failing, full.embedded) == (90, 90, 90)
        assert embedder.texts_embedded == before + 90
        clusters = clusters_of(session, "shop")
        assert clusters[refund_id].region_failure_rate == pytest.approx(10 / 40)
        assert clusters[password_id].region_failure_rate == 1.0
        assert clusters[refund_id].region_sampled == 90

        # A sample of half the healthy traffic, scaled by N / s, estimates the same.
        half = refresh_region_rates(session, "shop", settings(region_sample_size=45),
                                    embedder, now=NOW)  # fmt: skip
        assert (half.sampled, half.non_failing, half.embedded) == (45, 90, 0)
        estimate = half.rates
        assert estimate is not None
        assert 0.15 <= estimate[refund_id] <= 0.4
        same = refresh_region_rates(session, "shop", settings(region_sample_size=45),
                                    embedder, now=NOW)  # fmt: skip
        assert same.rates == estimate, "the sample is drawn the same way each time"


# --- the embedding cache ------------------------------------------------------------------------


def test_repeated_queries_cost_nothing_and_int8_has_its_own_cache_key(tmp_path) -> None:
    sessions, embedder = make_db(tmp_path), TopicEmbedder()
    with sessions() as session:
        ids = add_interactions(session, "shop", ["Where is my refund?", "where is my  REFUND?",
                                                 "Where is my refund?"])  # fmt: skip
        first = embed_interactions(session, ids, embedder)
        assert (first.embedded, embedder.texts_embedded) == (1, 1)
        more = add_interactions(session, "shop", ["WHERE IS MY REFUND?"] * 50)
        again = embed_interactions(session, ids + more, embedder)
        assert (again.embedded, again.cached, embedder.texts_embedded) == (0, 1, 1)
    fp32 = embedding_model_name(settings())
    int8 = embedding_model_name(settings(embedding_int8=True))
    assert fp32 == "all-MiniLM-L6-v2" and int8 == "all-MiniLM-L6-v2+int8"


# --- proposal evidence --------------------------------------------------------------------------


def test_evidence_carries_labels_trend_and_region_rate(tmp_path) -> None:
    sessions, embedder = make_db(tmp_path), TopicEmbedder()
    cfg = settings(region_sample_size=100)
    with sessions() as session:
        add_interactions(session, "shop", topic_queries("refund", 12), embedder=embedder)
        add_interactions(session, "shop", topic_queries("refund", 36, start=100), failing=False)
        recluster_app(session, "shop", cfg, MODEL, now=NOW)
        refresh_region_rates(session, "shop", cfg, embedder, now=NOW)
        propose_for_app(session, "shop", cfg, MODEL)
        (row,) = session.scalars(select(ProposalRow)).all()
        evidence = Evidence.model_validate(row.payload["evidence"])
        (cluster,) = clusters_of(session, "shop").values()
        assert evidence.representative_queries == cluster.representative_queries
        assert len(evidence.trend) == cfg.trend_buckets and evidence.trend_bucket_s == DAY
        assert evidence.trend[-1].count == 12 and sum(b.count for b in evidence.trend) == 12
        assert evidence.emerging and evidence.emerging_reason == "new"
        assert evidence.growth_rate == 12.0  # from nothing before
        assert evidence.region_failure_rate == pytest.approx(12 / 48)
        # The same data again: the same evidence, so the proposal is left as it is.
        recluster_app(session, "shop", cfg, MODEL, now=NOW + timedelta(minutes=5))
        refresh_region_rates(session, "shop", cfg, embedder, now=NOW + timedelta(minutes=5))
        result = propose_for_app(session, "shop", cfg, MODEL)
        assert result.unchanged == [row.id] and row.version == 1
