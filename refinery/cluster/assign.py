"""Streaming assignment: failing queries join an app's existing clusters as soon as they have a
vector, between re-clusters.

A failing interaction is due when it has no cluster and was never placed (cluster_checked_at
NULL). `assign_due` searches the app's active centroids (FAISS, refinery.cluster.algorithm) and
places each due query in the most similar cluster at cosine >= CLUSTER_ASSIGN_SIMILARITY, else in
the outlier pool (cluster_id NULL, cluster_checked_at set) until the next re-cluster looks at it
again. Each cluster's size and vector sum grow by what joined it, and its centroid is the sum
re-normalized, so both always describe the members.

Callers of `assign_due` hold the app's cluster lock (single writer with the re-cluster;
`assign_apps` takes it); idempotent: a placed query is no longer due.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from sqlalchemy import select, true, update
from sqlalchemy.orm import Session

from refinery.cluster.algorithm import assign_to_centroids
from refinery.cluster.lock import cluster_lock
from refinery.embed.service import query_vector, vectors_from_rows
from refinery.settings import ClusterSettings, Settings
from refinery.store.db import session_scope
from refinery.store.models import Cluster, Embedding, Interaction, utcnow

log = logging.getLogger(__name__)


@dataclass
class AssignResult:
    app_id: str
    assigned: int = 0
    outliers: int = 0
    clusters: dict[str, int] = field(default_factory=dict)  # cluster id -> queries that joined


def _due(app_id: str):  # type: ignore[no-untyped-def]
    # `failing = true`, not `IS true`: the form the partial index ix_interactions_cluster_due has.
    return (
        Interaction.app_id == app_id,
        Interaction.failing == true(),
        Interaction.cluster_id.is_(None),
        Interaction.cluster_checked_at.is_(None),
    )


def apps_with_due(session: Session) -> list[str]:
    """Apps that have failing interactions waiting for assignment (embedded or not)."""
    return sorted(
        session.scalars(
            select(Interaction.app_id)
            .where(
                Interaction.failing == true(),
                Interaction.cluster_id.is_(None),
                Interaction.cluster_checked_at.is_(None),
            )
            .distinct()
        )
    )


def assign_due(
    session: Session,
    app_id: str,
    settings: ClusterSettings,
    model: str,
    *,
    now: datetime | None = None,
) -> AssignResult:
    """Place up to CLUSTER_ASSIGN_BATCH due, embedded failing queries of `app_id`."""
    now = now or utcnow()
    result = AssignResult(app_id=app_id)
    rows = session.execute(
        select(Interaction.id, Embedding.vector, Embedding.dim)
        .join(
            Embedding,
            query_vector(model),
        )
        .where(*_due(app_id))
        .order_by(Interaction.id)
        .limit(settings.cluster_assign_batch)
    ).all()
    if not rows:
        return result
    ids = np.array([r.id for r in rows], dtype=np.int64)
    vectors = vectors_from_rows([r.vector for r in rows], rows[0].dim)
    clusters = [
        c
        for c in session.scalars(
            select(Cluster)
            .where(Cluster.app_id == app_id, Cluster.active.is_(True))
            .order_by(Cluster.id)
        )
        if len(c.centroid) == vectors.shape[1] * 4  # same model's dimension
    ]
    if clusters:
        refs = np.stack([np.frombuffer(c.centroid, dtype=np.float32) for c in clusters])
        labels = assign_to_centroids(vectors, refs, settings.cluster_assign_similarity)
    else:
        labels = np.full(len(ids), -1, dtype=np.int64)

    for index in np.unique(labels[labels >= 0]).tolist():
        members = labels == index
        cluster = clusters[index]
        count = int(members.sum())
        if cluster.vector_sum is not None:
            total = np.frombuffer(cluster.vector_sum, dtype=np.float32).copy()
        else:  # written before vector sums were kept: the centroid stands for its members
            total = np.frombuffer(cluster.centroid, dtype=np.float32) * np.float32(cluster.size)
        total += vectors[members].sum(axis=0, dtype=np.float32)
        norm = float(np.linalg.norm(total))
        cluster.vector_sum = total.astype(np.float32).tobytes()
        if norm > 0:
            cluster.centroid = (total / norm).astype(np.float32).tobytes()
        cluster.size += count
        cluster.updated_at = now
        session.execute(
            update(Interaction)
            .where(Interaction.id.in_(ids[members].tolist()))
            .values(cluster_id=cluster.id, cluster_checked_at=now)
        )
        result.clusters[cluster.id] = count
        result.assigned += count
    outliers = ids[labels < 0].tolist()
    if outliers:
        session.execute(
            update(Interaction).where(Interaction.id.in_(outliers)).values(cluster_checked_at=now)
        )
    result.outliers = len(outliers)
    session.flush()
    return result


def assign_apps(
    app_ids: list[str], settings: Settings, model: str, *, wait_s: float
) -> list[AssignResult]:
    """`assign_due` for each app under its cluster lock, one transaction per app. An app whose
    lock a re-cluster holds for longer than `wait_s` is skipped: its queries stay due for the
    sweep (and the re-cluster places them anyway)."""
    results = []
    for app_id in app_ids:
        with cluster_lock(app_id, settings, wait_s=wait_s) as acquired:
            if not acquired:
                log.info("assignment for %s deferred: a re-cluster holds its lock", app_id)
                continue
            with session_scope(settings.database_url) as session:
                results.append(assign_due(session, app_id, settings, model))
    return results
