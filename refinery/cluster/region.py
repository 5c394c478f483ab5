"""Failure rate of a cluster's region: of all interactions near its centroid, the failing share.

Failing queries are all embedded; healthy ones are not, so a uniform sample of up to
REGION_SAMPLE_SIZE non-failing interactions of the app (in the clustering window) is drawn and
embedded (through the embedding cache). With F failing and n sampled non-failing queries at cosine
>= CLUSTER_ASSIGN_SIMILARITY to a centroid, out of s sampled among N non-failing in the window,

    region failure rate = F / (F + n * N / s)

A rate near 1 means the app fails almost everyone who asks this; a low rate over a big region
means most such questions go well and the failures may be the users, not the app.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import false, func, select, true
from sqlalchemy.orm import Session

from refinery.embed.embedder import Embedder
from refinery.embed.service import embed_interactions, query_vector, vectors_from_rows
from refinery.settings import Settings
from refinery.store.models import Cluster, Embedding, Interaction, utcnow

_BATCH = 16_384
# The sample's order: Fibonacci hashing of the id modulo a prime, (id mod P) * M mod P. P is the
# largest prime whose square fits a signed 32-bit integer, so every intermediate value fits the
# narrowest integer any database computes in (PostgreSQL binds these literals as INTEGER; a 2**32
# modulus overflowed there). M ~ P / golden ratio (a prime) spreads consecutive ids evenly.
_HASH_MODULUS = 46_337
_HASH_MULTIPLIER = 28_657


@dataclass
class RegionResult:
    app_id: str
    sampled: int = 0  # non-failing interactions in the sample
    non_failing: int = 0  # non-failing interactions in the window
    embedded: int = 0  # sample queries the model had to embed
    rates: dict[str, float] | None = None
    # Whether any cluster's stored rate changed: its proposal evidence is then out of date.
    changed: bool = False


def refresh_region_rates(
    session: Session,
    app_id: str,
    settings: Settings,
    embedder: Embedder,
    *,
    now: datetime | None = None,
) -> RegionResult:
    """Draw the sample, embed what it lacks, store each active cluster's region failure rate."""
    now = now or utcnow()
    result = RegionResult(app_id=app_id)
    if settings.region_sample_size <= 0:
        return result
    window_start = now - timedelta(days=settings.cluster_window_days)
    healthy = (
        Interaction.app_id == app_id,
        Interaction.failing == false(),
        Interaction.occurred_at >= window_start,
    )
    result.non_failing = int(
        session.scalar(select(func.count(Interaction.id)).where(*healthy)) or 0
    )
    sample_ids = list(
        session.scalars(
            select(Interaction.id)
            .where(*healthy)
            # A fixed pseudo-random order (a multiplicative hash of the id), not random(): the
            # same traffic gives the same sample, so the rate, and the proposal evidence carrying
            # it, change only when the traffic does. Ids equal modulo P tie: the id breaks it.
            .order_by(sample_order(Interaction.id), Interaction.id)
            .limit(settings.region_sample_size)
        )
    )
    result.sampled = len(sample_ids)
    if sample_ids:
        result.embedded = embed_interactions(session, sample_ids, embedder).embedded
    clusters = session.scalars(
        select(Cluster)
        .where(Cluster.app_id == app_id, Cluster.active.is_(True))
        .order_by(Cluster.id)
    ).all()
    if not clusters or result.sampled == 0:
        return result
    refs = np.stack([np.frombuffer(c.centroid, dtype=np.float32) for c in clusters])
    failing = _vectors(
        session,
        embedder.name,
        (
            Interaction.app_id == app_id,
            Interaction.failing == true(),
            Interaction.occurred_at >= window_start,
        ),
    )
    sample = _vectors(session, embedder.name, (Interaction.id.in_(sample_ids),))
    threshold = settings.cluster_assign_similarity
    near_failing = _near_counts(failing, refs, threshold)
    near_sample = _near_counts(sample, refs, threshold)
    scale = result.non_failing / result.sampled
    result.rates = {}
    for cluster, f, n in zip(clusters, near_failing, near_sample, strict=True):
        denominator = f + n * scale
        rate = round(float(f / denominator), 3) if denominator > 0 else None
        if cluster.region_failure_rate != rate:
            result.changed = True
        cluster.region_failure_rate = rate
        cluster.region_sampled = result.sampled
        if rate is not None:
            result.rates[cluster.id] = rate
    session.flush()
    return result


def sample_order(column: Any) -> Any:
    """The SQL expression ordering the sample; each step stays below 2**31 for any id >= 0."""
    return ((column % _HASH_MODULUS) * _HASH_MULTIPLIER) % _HASH_MODULUS


def _vectors(session: Session, model: str, where: tuple) -> np.ndarray:  # type: ignore[type-arg]
    rows = session.execute(
        select(Embedding.vector, Embedding.dim)
        .join(
            Interaction,
            query_vector(model),
        )
        .where(*where)
    ).all()
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    return vectors_from_rows([r.vector for r in rows], rows[0].dim)


def _near_counts(vectors: np.ndarray, refs: np.ndarray, threshold: float) -> np.ndarray:
    """Per centroid, how many vectors sit at cosine >= threshold to it."""
    counts = np.zeros(len(refs), dtype=np.int64)
    if len(vectors) == 0 or vectors.shape[1] != refs.shape[1]:
        return counts
    for start in range(0, len(vectors), _BATCH):
        sims = vectors[start : start + _BATCH] @ refs.T
        counts += (sims >= threshold).sum(axis=0)
    return counts
