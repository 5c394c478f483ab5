"""Re-cluster one app's failing queries and persist clusters with stable ids.

Owns the clusters table and interactions.cluster_id. Single writer per app: the Celery task
holds a per-app lock around `recluster_app`. Never mixes apps: every query is scoped by app_id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from refinery.cluster.algorithm import centroids as compute_centroids
from refinery.cluster.algorithm import cluster_vectors
from refinery.cluster.labels import cluster_keywords
from refinery.embed.service import vectors_from_rows
from refinery.settings import Settings
from refinery.store.models import Cluster, Embedding, Interaction, utcnow


@dataclass
class ClusterRunResult:
    app_id: str
    clustered: int = 0
    outliers: int = 0
    cluster_ids: list[str] = field(default_factory=list)
    kept: int = 0  # clusters that kept an earlier id
    created: int = 0
    retired: int = 0


def _new_cluster_id(app_id: str, member_ids: list[int]) -> str:
    # Derived from the members, not random: the same first run on the same data gives the same ids.
    digest = hashlib.sha256(f"{app_id}:{','.join(map(str, member_ids))}".encode()).hexdigest()
    return f"c_{digest[:16]}"


def recluster_app(session: Session, app_id: str, settings: Settings, model: str) -> ClusterRunResult:
    result = ClusterRunResult(app_id=app_id)
    rows = session.execute(
        select(Interaction.id, Interaction.query, Interaction.cluster_id, Embedding.vector, Embedding.dim)
        .join(
            Embedding,
            (Embedding.text_hash == Interaction.query_hash) & (Embedding.model == model),
        )
        .where(Interaction.app_id == app_id, Interaction.failing.is_(True))
        .order_by(Interaction.id)
    ).all()
    old_clusters = {
        c.id: c
        for c in session.scalars(select(Cluster).where(Cluster.app_id == app_id, Cluster.active.is_(True)))
    }
    if not rows:
        return result
    ids = [r.id for r in rows]
    vectors = vectors_from_rows([r.vector for r in rows], rows[0].dim)
    labels = cluster_vectors(
        vectors,
        similarity_threshold=settings.cluster_similarity_threshold,
        min_cluster_size=settings.cluster_min_size,
        neighbors=settings.cluster_neighbors,
    )
    members_by_label: dict[int, list[int]] = {}
    for position, label in enumerate(labels.tolist()):
        if label >= 0:
            members_by_label.setdefault(label, []).append(position)
    result.outliers = int((labels < 0).sum())
    result.clustered = len(ids) - result.outliers

    old_members: dict[str, set[int]] = {}
    for r in rows:
        if r.cluster_id in old_clusters:
            old_members.setdefault(r.cluster_id, set()).add(r.id)

    centroid_matrix = compute_centroids(vectors, labels) if members_by_label else np.zeros((0, 0))
    docs: dict[str, list[str]] = {}
    assignment: dict[int, str] = {}
    claimed: set[str] = set()
    # Largest clusters pick their predecessor first, so a split keeps the id on its bigger half.
    for label in sorted(members_by_label, key=lambda lab: -len(members_by_label[lab])):
        positions = members_by_label[label]
        member_ids = [ids[p] for p in positions]
        cluster_id = _match_previous(set(member_ids), old_members, claimed, settings.cluster_match_overlap)
        if cluster_id is None:
            cluster_id = _new_cluster_id(app_id, member_ids)
            result.created += 1
        else:
            result.kept += 1
        claimed.add(cluster_id)
        docs[cluster_id] = [rows[p].query for p in positions]
        for member in member_ids:
            assignment[member] = cluster_id
        existing = old_clusters.get(cluster_id) or session.get(Cluster, cluster_id)
        centroid = centroid_matrix[label].astype(np.float32).tobytes()
        if existing is None:
            existing = Cluster(id=cluster_id, app_id=app_id, label="", keywords=[], size=0, centroid=centroid)
            session.add(existing)
        existing.size = len(member_ids)
        existing.centroid = centroid
        existing.active = True
        existing.updated_at = utcnow()
        result.cluster_ids.append(cluster_id)

    keywords = cluster_keywords(docs)
    for cluster_id, words in keywords.items():
        cluster = session.get(Cluster, cluster_id)
        assert cluster is not None
        cluster.keywords = words
        cluster.label = " / ".join(words[:3]) or "(no keywords)"

    for cluster_id, cluster in old_clusters.items():
        if cluster_id not in claimed:
            cluster.active = False
            result.retired += 1

    # Write cluster ids only where they changed: a re-run on the same data writes nothing.
    current = {r.id: r.cluster_id for r in rows}
    changes: dict[str | None, list[int]] = {}
    for interaction_id in ids:
        new = assignment.get(interaction_id)
        if current[interaction_id] != new:
            changes.setdefault(new, []).append(interaction_id)
    for new, members in changes.items():
        session.execute(update(Interaction).where(Interaction.id.in_(members)).values(cluster_id=new))
    session.flush()
    return result


def _match_previous(
    members: set[int], old_members: dict[str, set[int]], claimed: set[str], min_overlap: float
) -> str | None:
    best_id, best_overlap = None, 0.0
    for cluster_id, previous in old_members.items():
        if cluster_id in claimed:
            continue
        # Overlap over the smaller side: a cluster that grew is still the same failure mode.
        overlap = len(members & previous) / min(len(members), len(previous))
        if overlap > best_overlap:
            best_id, best_overlap = cluster_id, overlap
    return best_id if best_overlap >= min_overlap else None
