"""Trends of clusters: failing interactions per time bucket, growth, and the emerging flag.

Buckets are aligned to the epoch (days start at 00:00 UTC, hours on the hour), so a bucket's
start never moves and two runs over the same data give the same trend (proposal evidence does not
churn). The newest bucket is the current one, still filling: its growth is a lower bound until it
closes, which is why the bucket before it also counts for the emerging flag.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, true
from sqlalchemy.orm import Session

from refinery.settings import TrendSettings
from refinery.store.models import Cluster, Interaction


@dataclass(frozen=True)
class Trend:
    buckets: list[tuple[datetime, int]]  # (start, failing interactions), oldest first
    growth_rate: float  # of the newest bucket over the baseline before it
    emerging: bool
    reason: str | None  # "new" | "rising" | None

    def as_json(self) -> list[dict[str, object]]:
        return [{"start": start.isoformat(), "count": count} for start, count in self.buckets]


def aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def bucket_start(at: datetime, bucket_s: float) -> datetime:
    epoch = aware(at).timestamp()
    return datetime.fromtimestamp(math.floor(epoch / bucket_s) * bucket_s, UTC)


def growth(newest: int, baseline: list[int]) -> float:
    """(newest - mean(baseline)) / max(mean(baseline), 1): 1.0 means doubled; from nothing to n
    is n - 0, so a handful of new failures is not an infinite rise."""
    mean = sum(baseline) / len(baseline) if baseline else 0.0
    return (newest - mean) / max(mean, 1.0)


def compute_trend(
    occurred: Iterable[datetime],
    *,
    first_seen: datetime | None,
    now: datetime,
    bucket_s: float,
    buckets: int,
    baseline_buckets: int,
    growth_threshold: float,
    min_count: int,
    new_within_s: float,
) -> Trend:
    """Counts of `occurred` in the `buckets` buckets up to the one holding `now`; emerging when
    the first failure is at most `new_within_s` old ("new"), or when the newest or the bucket
    before it grew at least `growth_threshold` over the `baseline_buckets` before it and holds at
    least `min_count` ("rising"). Times after `now` count in the newest bucket."""
    newest = bucket_start(now, bucket_s)
    starts = [newest - timedelta(seconds=bucket_s * i) for i in range(buckets - 1, -1, -1)]
    counts = [0] * buckets
    origin = newest.timestamp()
    for at in occurred:
        index = buckets - 1 + math.floor((aware(at).timestamp() - origin) / bucket_s)
        if 0 <= index < buckets:
            counts[index] += 1
        elif index >= buckets:
            counts[-1] += 1

    def rise(i: int) -> float:
        return growth(counts[i], counts[max(0, i - baseline_buckets) : i])

    rate = rise(buckets - 1)
    reason = None
    if first_seen is not None and (now - aware(first_seen)).total_seconds() <= new_within_s:
        reason = "new"
    elif any(
        i >= 0 and counts[i] >= min_count and rise(i) >= growth_threshold
        for i in (buckets - 1, buckets - 2)
    ):
        reason = "rising"
    return Trend(
        buckets=list(zip(starts, counts, strict=True)),
        growth_rate=round(rate, 2),
        emerging=reason is not None,
        reason=reason,
    )


def refresh_trends(
    session: Session, app_id: str, settings: TrendSettings, *, now: datetime
) -> dict[str, Trend]:
    """Recompute and store the trend of every active cluster of `app_id`."""
    clusters = {
        c.id: c
        for c in session.scalars(
            select(Cluster).where(Cluster.app_id == app_id, Cluster.active.is_(True))
        )
    }
    if not clusters:
        return {}
    horizon = bucket_start(now, settings.trend_bucket_s) - timedelta(
        seconds=settings.trend_bucket_s * (settings.trend_buckets - 1)
    )
    times: dict[str, list[datetime]] = {cid: [] for cid in clusters}
    ids = list(clusters)
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        for cluster_id, occurred_at in session.execute(
            select(Interaction.cluster_id, Interaction.occurred_at).where(
                Interaction.app_id == app_id,
                Interaction.failing == true(),
                Interaction.cluster_id.in_(chunk),
                Interaction.occurred_at >= horizon,
            )
        ):
            times[str(cluster_id)].append(occurred_at)
        for cluster_id, first in session.execute(
            select(Interaction.cluster_id, func.min(Interaction.occurred_at))
            .where(
                Interaction.app_id == app_id,
                Interaction.failing == true(),
                Interaction.cluster_id.in_(chunk),
            )
            .group_by(Interaction.cluster_id)
        ):
            clusters[str(cluster_id)].first_seen_at = aware(first)
    trends = {}
    for cluster_id, cluster in clusters.items():
        trend = compute_trend(
            times[cluster_id],
            first_seen=cluster.first_seen_at,
            now=now,
            bucket_s=settings.trend_bucket_s,
            buckets=settings.trend_buckets,
            baseline_buckets=settings.trend_baseline_buckets,
            growth_threshold=settings.emerging_growth_rate,
            min_count=settings.emerging_min_count,
            new_within_s=settings.emerging_new_s,
        )
        cluster.trend = trend.as_json()
        cluster.growth_rate = trend.growth_rate
        cluster.emerging = trend.emerging
        cluster.emerging_reason = trend.reason
        trends[cluster_id] = trend
    return trends
