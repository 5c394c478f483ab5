"""Re-cluster one app's failing queries and persist clusters with stable ids, lineage and labels.

Owns the clusters, cluster_runs and cluster_events tables and interactions.cluster_id /
cluster_checked_at. Single writer per app: the Celery task holds the app's cluster lock around
`recluster_app` (streaming assignment, refinery.cluster.assign, takes the same lock). Never mixes
apps: every query is scoped by app_id.

One run, over the failing interactions of the last CLUSTER_WINDOW_DAYS that have a vector:
1. cluster them (refinery.cluster.algorithm, no k given), then split a cluster whose members
   fail in clearly different ways (refinery.cluster.split, by refinery.signals.evidence);
2. give each new cluster, largest first, the id of the old active cluster it shares most members
   with (overlap over the smaller side >= CLUSTER_MATCH_OVERLAP); then clusters still without
   one take the id of the most similar unclaimed old centroid (>= CLUSTER_MATCH_CENTROID_SIMILARITY:
   the same failure mode after its old members left the window); the rest get an id derived
   from their members. Old clusters left unclaimed are retired;
3. record merges, splits, new and retired clusters (refinery.cluster.lineage) under the run id;
4. store size, centroid, vector sum, keywords, representative queries (and a title, if an
   endpoint is set), then the trends (refinery.cluster.trends).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Row, false, select, true, update
from sqlalchemy.orm import Session

from refinery.cluster.algorithm import centroids as compute_centroids
from refinery.cluster.algorithm import fit_clusters
from refinery.cluster.labels import cluster_keywords, representative_queries
from refinery.cluster.lineage import lineage
from refinery.cluster.split import split_by_failure_type
from refinery.cluster.titles import Titler
from refinery.cluster.trends import refresh_trends
from refinery.embed.service import query_vector, vectors_from_rows
from refinery.settings import Settings
from refinery.signals.evidence import (
    TYPED_FEEDBACK_KINDS,
    UNSPECIFIED,
    FeedbackTuple,
    failure_type,
)
from refinery.store.models import (
    Cluster,
    ClusterEvent,
    ClusterRun,
    Embedding,
    Feedback,
    Interaction,
    utcnow,
)

log = logging.getLogger(__name__)

# Rows per UPDATE ... WHERE id IN (...): below SQLite's bound-parameter limit.
_CHUNK = 5000


@dataclass
class ClusterRunResult:
    app_id: str
    run_id: str = ""
    clustered: int = 0
    outliers: int = 0
    cluster_ids: list[str] = field(default_factory=list)
    kept: int = 0  # clusters that kept an earlier id (by members or by centroid)
    kept_by_centroid: int = 0  # of those, kept by centroid similarity alone
    created: int = 0
    retired: int = 0
    merges: int = 0
    splits: int = 0
    type_splits: int = 0  # text clusters split by their members' failure types


def _new_cluster_id(app_id: str, member_ids: list[int]) -> str:
    # Derived from the members, not random: the same first run on the same data gives the same ids.
    digest = hashlib.sha256(f"{app_id}:{','.join(map(str, member_ids))}".encode()).hexdigest()
    return f"c_{digest[:16]}"


def recluster_app(
    session: Session,
    app_id: str,
    settings: Settings,
    model: str,
    *,
    now: datetime | None = None,
    titler: Titler | None = None,
) -> ClusterRunResult:
    now = now or utcnow()
    window_start = now - timedelta(days=settings.cluster_window_days)
    run = ClusterRun(
        id=f"r_{uuid.uuid4().hex[:16]}",
        app_id=app_id,
        started_at=now,
        window_start=window_start,
        counts={},
    )
    result = ClusterRunResult(app_id=app_id, run_id=run.id)
    rows = session.execute(
        select(
            Interaction.id,
            Interaction.query,
            Interaction.cluster_id,
            Interaction.cluster_checked_at,
            Interaction.interaction_id,
            Interaction.sources,
            Embedding.vector,
            Embedding.dim,
        )
        .join(
            Embedding,
            query_vector(model),
        )
        .where(
            Interaction.app_id == app_id,
            Interaction.failing == true(),
            Interaction.occurred_at >= window_start,
        )
        .order_by(Interaction.id)
    ).all()
    old_clusters = {
        c.id: c
        for c in session.scalars(
            select(Cluster).where(Cluster.app_id == app_id, Cluster.active.is_(True))
        )
    }
    # Interactions that stopped failing (a later thumbs-up) leave their cluster.
    session.execute(
        update(Interaction)
        .where(
            Interaction.app_id == app_id,
            Interaction.failing == false(),
            Interaction.cluster_id.is_not(None),
        )
        .values(cluster_id=None)
    )
    ids = [r.id for r in rows]
    if rows:
        vectors = vectors_from_rows([r.vector for r in rows], rows[0].dim)
        clustering = fit_clusters(
            vectors,
            similarity_threshold=settings.cluster_similarity_threshold,
            min_cluster_size=settings.cluster_min_size,
            neighbors=settings.cluster_neighbors,
            attach_threshold=settings.cluster_attach_similarity,
            max_graph_points=settings.cluster_max_graph_points,
            similarity_min=settings.cluster_similarity_min,
            similarity_max=settings.cluster_similarity_max,
        )
        threshold = clustering.similarity_threshold
        # A topic that fails in two clear ways is two failure modes: split it by the members'
        # evidence before ids and lineage are given, so each part is simply a cluster.
        labels, result.type_splits = split_by_failure_type(
            clustering.labels,
            _failure_types(session, app_id, window_start, rows, settings),
            vectors,
            min_size=settings.cluster_min_size,
            min_share=settings.cluster_split_min_share,
        )
        log.info(
            "app %s: %d failing queries cut at similarity %.2f (%s)",
            app_id,
            len(rows),
            threshold,
            "chosen from the data" if clustering.chosen else "fixed",
        )
        if result.type_splits:
            log.info(
                "app %s: %d clusters split by how their members failed", app_id, result.type_splits
            )
    else:
        vectors = np.zeros((0, 0), dtype=np.float32)
        labels = np.empty(0, dtype=np.int64)
        threshold = None
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

    centroid_matrix = compute_centroids(vectors, labels) if members_by_label else None
    # Largest clusters pick their predecessor first, so a split keeps the id on its bigger half.
    order = sorted(members_by_label, key=lambda lab: (-len(members_by_label[lab]), lab))
    names: dict[int, str] = {}
    claimed: set[str] = set()
    for label in order:
        member_ids = {ids[p] for p in members_by_label[label]}
        match = _match_by_members(member_ids, old_members, claimed, settings.cluster_match_overlap)
        if match is not None:
            names[label] = match
            claimed.add(match)
    for label in order:
        if label in names:
            continue
        assert centroid_matrix is not None
        match = _match_by_centroid(
            centroid_matrix[label],
            old_clusters,
            claimed,
            settings.cluster_match_centroid_similarity,
        )
        if match is not None:
            names[label] = match
            claimed.add(match)
            result.kept_by_centroid += 1
        else:
            names[label] = _new_cluster_id(app_id, [ids[p] for p in members_by_label[label]])
    result.kept = sum(1 for name in names.values() if name in old_clusters)
    result.created = len(names) - result.kept

    # Lineage: where the members of each old cluster went.
    flows: Counter[tuple[str, str]] = Counter()
    for label, positions in members_by_label.items():
        for p in positions:
            previous = rows[p].cluster_id
            if previous in old_clusters:
                flows[(previous, names[label])] += 1
    events = lineage(
        dict(flows),
        {cid: len(m) for cid, m in old_members.items()},
        set(old_clusters),
        [names[label] for label in order],
        settings.cluster_lineage_min_share,
    )
    for event in events:
        session.add(
            ClusterEvent(
                run_id=run.id,
                app_id=app_id,
                kind=event.kind,
                from_ids=event.from_ids,
                to_ids=event.to_ids,
                detail=event.detail,
                at=now,
            )
        )
    result.merges = sum(e.kind == "merge" for e in events)
    result.splits = sum(e.kind == "split" for e in events)

    docs: dict[str, list[str]] = {}
    assignment: dict[int, str] = {}
    for label in order:
        cluster_id = names[label]
        positions = members_by_label[label]
        queries = [rows[p].query for p in positions]
        docs[cluster_id] = queries
        for p in positions:
            assignment[ids[p]] = cluster_id
        assert centroid_matrix is not None
        centroid = centroid_matrix[label].astype(np.float32)
        member_vectors = vectors[positions]
        cluster = old_clusters.get(cluster_id) or session.get(Cluster, cluster_id)
        if cluster is None:
            cluster = Cluster(id=cluster_id, app_id=app_id, label="", keywords=[], size=0,
                              centroid=b"", created_at=now)  # fmt: skip
            session.add(cluster)
        cluster.size = len(positions)
        cluster.centroid = centroid.tobytes()
        cluster.vector_sum = member_vectors.sum(axis=0, dtype=np.float32).tobytes()
        cluster.active = True
        cluster.updated_at = now
        cluster.last_run_id = run.id
        cluster.representative_queries = representative_queries(
            queries, member_vectors, centroid, settings.cluster_representatives
        )
        result.cluster_ids.append(cluster_id)

    keywords = cluster_keywords(docs, top_n=settings.cluster_keywords)
    for cluster_id, words in keywords.items():
        cluster = session.get(Cluster, cluster_id)
        assert cluster is not None
        previous_keywords = list(cluster.keywords or [])
        cluster.keywords = words
        cluster.label = " / ".join(words[:3]) or "(no keywords)"
        # A title is asked for once, and again only when the keywords changed.
        if titler is not None and (not cluster.title or previous_keywords != words):
            title = titler(words, list(cluster.representative_queries or []))
            if title:
                cluster.title = title

    for cluster_id, cluster in old_clusters.items():
        if cluster_id not in claimed:
            cluster.active = False
            cluster.emerging = False
            cluster.updated_at = now
            cluster.last_run_id = run.id
            result.retired += 1

    # Write cluster ids only where they changed: a re-run on the same data writes nothing.
    changes: dict[str | None, list[int]] = {}
    for r in rows:
        new = assignment.get(r.id)
        if r.cluster_id != new:
            changes.setdefault(new, []).append(r.id)
    for new, members in changes.items():
        for chunk in _chunks(members):
            session.execute(
                update(Interaction).where(Interaction.id.in_(chunk)).values(cluster_id=new)
            )
    unchecked = [r.id for r in rows if r.cluster_checked_at is None]
    for chunk in _chunks(unchecked):
        session.execute(
            update(Interaction).where(Interaction.id.in_(chunk)).values(cluster_checked_at=now)
        )
    session.flush()
    refresh_trends(session, app_id, settings, now=now)

    run.finished_at = utcnow()
    run.counts = {
        "clustered": result.clustered,
        "outliers": result.outliers,
        "clusters": len(result.cluster_ids),
        "kept": result.kept,
        "kept_by_centroid": result.kept_by_centroid,
        "created": result.created,
        "retired": result.retired,
        "merges": result.merges,
        "splits": result.splits,
        "type_splits": result.type_splits,
        # The average-linkage cut this run used (chosen per run unless the setting fixes it).
        "similarity_threshold": None if threshold is None else round(threshold, 4),
    }
    session.add(run)
    session.flush()
    return result


def _failure_types(
    session: Session,
    app_id: str,
    window_start: datetime,
    rows: Sequence[Row[Any]],
    settings: Settings,
) -> list[str]:
    """refinery.signals.evidence.failure_type of each row, from one query for the feedback that
    can type it (corrections and comments of the window's failing interactions). Responses can be
    long, so they are read only for rows that nothing else typed, a chunk at a time."""
    feedback: dict[str, list[FeedbackTuple]] = {}
    for interaction_id, kind, text in session.execute(
        select(Feedback.interaction_id, Feedback.kind, Feedback.text)
        .join(
            Interaction,
            (Interaction.app_id == Feedback.app_id)
            & (Interaction.interaction_id == Feedback.interaction_id),
        )
        .where(
            Feedback.app_id == app_id,
            Feedback.kind.in_(sorted(TYPED_FEEDBACK_KINDS)),
            Interaction.failing == true(),
            Interaction.occurred_at >= window_start,
        )
        .order_by(Feedback.id)
    ):
        feedback.setdefault(interaction_id, []).append((kind, None, text))
    low = settings.retrieval_low_score
    types = [failure_type(feedback.get(r.interaction_id, []), r.sources, None, low) for r in rows]
    # Only a response admitting it does not know can still type these (as a retrieval gap).
    untyped = {r.id: i for i, r in enumerate(rows) if types[i] == UNSPECIFIED}
    for chunk in _chunks(sorted(untyped)):
        for row_id, response in session.execute(
            select(Interaction.id, Interaction.response).where(Interaction.id.in_(chunk))
        ):
            r = rows[untyped[row_id]]
            types[untyped[row_id]] = failure_type(
                feedback.get(r.interaction_id, []), r.sources, response, low
            )
    return types


def _chunks(items: list[int]) -> list[list[int]]:
    return [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]


def _match_by_members(
    members: set[int], old_members: dict[str, set[int]], claimed: set[str], min_overlap: float
) -> str | None:
    best_id, best_key = None, (0.0, 0)
    for cluster_id in sorted(old_members):
        if cluster_id in claimed:
            continue
        previous = old_members[cluster_id]
        shared = len(members & previous)
        # Overlap over the smaller side: a cluster that grew is still the same failure mode. Ties
        # (two old clusters wholly inside a merged one) go to the one sharing more members.
        key = (shared / min(len(members), len(previous)), shared)
        if key > best_key:
            best_id, best_key = cluster_id, key
    return best_id if best_key[0] >= min_overlap else None


def _match_by_centroid(
    centroid: np.ndarray, old_clusters: dict[str, Cluster], claimed: set[str], min_similarity: float
) -> str | None:
    best_id, best_sim = None, -1.0
    for cluster_id in sorted(old_clusters):
        if cluster_id in claimed or not old_clusters[cluster_id].centroid:
            continue
        old = np.frombuffer(old_clusters[cluster_id].centroid, dtype=np.float32)
        if old.shape != centroid.shape:
            continue  # another embedding model: not comparable
        sim = float(old @ centroid)
        if sim > best_sim:
            best_id, best_sim = cluster_id, sim
    return best_id if best_sim >= min_similarity else None
