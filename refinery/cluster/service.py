"""Re-cluster one app's failing queries and persist clusters with stable ids, lineage and labels.

Owns the clusters, cluster_runs and cluster_events tables and interactions.cluster_id /
cluster_checked_at. Single writer per app: its caller holds the app's cluster lock
(refinery.cluster.lock) around `recluster_app`, and streaming assignment (refinery.cluster.assign)
takes the same lock. Never mixes apps: every query is scoped by app_id.

One run, over the failing interactions of the last CLUSTER_WINDOW_DAYS that have a vector:
1. cluster them (refinery.cluster.algorithm, no k given), then split a cluster whose members
   fail in clearly different ways (refinery.cluster.split, by refinery.signals.evidence);
2. give each new cluster, largest first, the id of the old active cluster it shares most members
   with (overlap over the smaller side >= CLUSTER_MATCH_OVERLAP); then clusters still without
   one take the id of the most similar unclaimed old centroid (>= CLUSTER_MATCH_CENTROID_SIMILARITY:
   the same failure mode after its old members left the window); the rest get an id derived
   from their members. Old clusters left unclaimed are retired;
3. record merges, splits, new and retired clusters (refinery.cluster.lineage) under the run id;
4. store size, centroid, vector sum, keywords, representative queries, then the trends
   (refinery.cluster.trends). Titles, when CLUSTER_TITLE_ENDPOINT is set, are asked for after the
   commit (`recluster_and_commit`): a remote model never holds the re-cluster's transaction.
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
from refinery.cluster.lineage import LineageEvent, lineage
from refinery.cluster.split import split_by_failure_type
from refinery.cluster.titles import Titler, make_titler
from refinery.cluster.trends import refresh_trends
from refinery.embed import embedding_model_name
from refinery.embed.service import has_query_vector, query_vector, vectors_from_rows
from refinery.ops.metrics import CLUSTERS
from refinery.settings import ClusterSettings, ProposeSettings, Settings
from refinery.signals.evidence import (
    TYPED_FEEDBACK_KINDS,
    UNSPECIFIED,
    FeedbackTuple,
    failure_type,
)
from refinery.store.db import session_scope
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


@dataclass(frozen=True)
class TitleRequest:
    """A cluster whose title is due (never titled, or its keywords changed): what to ask."""

    cluster_id: str
    keywords: list[str]
    queries: list[str]  # its representative queries


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
    # Clusters whose title is due, left for the caller when no titler was given in the
    # transaction (recluster_and_commit asks for them after its commit).
    titles_due: list[TitleRequest] = field(default_factory=list)


@dataclass
class _Previous:
    """The app's active clusters before the run, and which of the window's queries each holds."""

    clusters: dict[str, Cluster]
    members: dict[str, set[int]]


@dataclass
class _Cut:
    """The window's queries grouped: one label per row (-1: outlier)."""

    vectors: np.ndarray  # (n, dim) float32, one per row
    labels: np.ndarray  # (n,) int64
    threshold: float | None  # the similarity the merge tree was cut at; None without queries
    type_splits: int = 0
    members: dict[int, list[int]] = field(default_factory=dict)  # label -> row positions
    centroids: np.ndarray | None = None  # (labels, dim), row = label; None without clusters


@dataclass
class _Naming:
    """The id each label takes, and the labels largest first (the order ids were given in)."""

    names: dict[int, str]
    order: list[int]
    claimed: set[str]  # old ids taken over
    kept_by_centroid: int


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
    """Re-cluster the app's failing queries of the window (the steps in the module docstring),
    in the caller's transaction: everything is flushed, nothing committed. The caller holds the
    app's cluster lock. `titler` is asked inside that transaction; without one, the titles due
    are left in `result.titles_due` (`recluster_and_commit` asks for them after its commit)."""
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
    rows = _failing_in_window(session, app_id, model, window_start)
    previous = _previous_clusters(session, app_id, rows)
    _release_recovered(session, app_id)
    cut = _cut(session, app_id, rows, window_start, settings)
    result.type_splits = cut.type_splits
    result.outliers = int((cut.labels < 0).sum())
    result.clustered = len(rows) - result.outliers

    naming = _name_clusters(app_id, rows, cut, previous, settings)
    result.kept_by_centroid = naming.kept_by_centroid
    result.kept = sum(1 for name in naming.names.values() if name in previous.clusters)
    result.created = len(naming.names) - result.kept

    events = _record_lineage(session, run, rows, cut, naming, previous, settings, now)
    result.merges = sum(e.kind == "merge" for e in events)
    result.splits = sum(e.kind == "split" for e in events)

    assignment, docs = _store_clusters(session, run, rows, cut, naming, previous, settings, now)
    result.cluster_ids = [naming.names[label] for label in naming.order]
    titles_due = _label_clusters(session, docs, settings)
    if titler is None:
        result.titles_due = titles_due
    else:
        _store_titles(session, app_id, _ask_titles(titler, titles_due))
    result.retired = _retire_unclaimed(previous, naming.claimed, run, now)
    _write_membership(session, rows, assignment, now)
    session.flush()
    refresh_trends(session, app_id, settings, now=now)

    run.finished_at = utcnow()
    run.counts = _run_counts(result, cut.threshold)
    session.add(run)
    session.flush()
    return result


def recluster_and_commit(app_id: str, settings: Settings) -> ClusterRunResult:
    """`recluster_app` in a transaction of its own, then the app's cluster-count gauge, then
    titles when CLUSTER_TITLE_ENDPOINT is set (`_title_after_commit`). The caller holds the app's
    cluster lock."""
    model, now = embedding_model_name(settings), utcnow()
    _label_complaints_first(app_id, settings, model, now)
    with session_scope(settings.database_url) as session:
        result = recluster_app(session, app_id, settings, model, now=now)
    # Committed: the app's cluster count as its single writer left it.
    CLUSTERS.labels(app_id=app_id).set(len(result.cluster_ids))
    _title_after_commit(app_id, settings, result.titles_due)
    return result


def _title_after_commit(app_id: str, settings: Settings, due: list[TitleRequest]) -> None:
    """Ask the titler (a remote model) with no transaction open: inside the re-cluster's it held
    the SQLite write lock, or the clusters' rows, for as long as the server took. The titles are
    stored in a short transaction of their own, each only where the cluster's keywords are still
    the ones asked about. The caller still holds the app's cluster lock, and a refine drafts its
    proposals after this returns: they read the titles as before."""
    titler = make_titler(settings, app_id) if due else None
    if titler is None:
        return
    try:
        titled = _ask_titles(titler, due)
    finally:
        titler.close()
    if titled:
        with session_scope(settings.database_url) as session:
            _store_titles(session, app_id, titled)


def apps_with_failures(session: Session) -> list[str]:
    """Every app with failing interactions, sorted: the apps a periodic refine covers."""
    return sorted(
        session.scalars(select(Interaction.app_id).where(Interaction.failing.is_(True)).distinct())
    )


def _failing_in_window(
    session: Session, app_id: str, model: str, window_start: datetime
) -> Sequence[Row[Any]]:
    """The app's failing interactions of the window that have a vector, in id order."""
    return session.execute(
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
        .join(Embedding, query_vector(model))
        .where(
            Interaction.app_id == app_id,
            Interaction.failing == true(),
            Interaction.occurred_at >= window_start,
        )
        .order_by(Interaction.id)
    ).all()


def _previous_clusters(session: Session, app_id: str, rows: Sequence[Row[Any]]) -> _Previous:
    clusters = {
        c.id: c
        for c in session.scalars(
            select(Cluster).where(Cluster.app_id == app_id, Cluster.active.is_(True))
        )
    }
    members: dict[str, set[int]] = {}
    for r in rows:
        if r.cluster_id in clusters:
            members.setdefault(r.cluster_id, set()).add(r.id)
    return _Previous(clusters, members)


def _release_recovered(session: Session, app_id: str) -> None:
    """Interactions that stopped failing (a later thumbs-up) leave their cluster."""
    session.execute(
        update(Interaction)
        .where(
            Interaction.app_id == app_id,
            Interaction.failing == false(),
            Interaction.cluster_id.is_not(None),
        )
        .values(cluster_id=None)
    )


def _cut(
    session: Session,
    app_id: str,
    rows: Sequence[Row[Any]],
    window_start: datetime,
    settings: Settings,
) -> _Cut:
    """Cluster the rows' vectors (the cut chosen from the data unless a setting fixes it), then
    split each topic whose members fail in clearly different ways."""
    if not rows:
        return _Cut(np.zeros((0, 0), dtype=np.float32), np.empty(0, dtype=np.int64), None)
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
    # A topic that fails in two clear ways is two failure modes: split it by the members'
    # evidence before ids and lineage are given, so each part is simply a cluster.
    labels, type_splits = split_by_failure_type(
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
        clustering.similarity_threshold,
        "chosen from the data" if clustering.chosen else "fixed",
    )
    if type_splits:
        log.info("app %s: %d clusters split by how their members failed", app_id, type_splits)
    members: dict[int, list[int]] = {}
    for position, label in enumerate(labels.tolist()):
        if label >= 0:
            members.setdefault(label, []).append(position)
    return _Cut(
        vectors,
        labels,
        clustering.similarity_threshold,
        type_splits,
        members,
        compute_centroids(vectors, labels) if members else None,
    )


def _name_clusters(
    app_id: str,
    rows: Sequence[Row[Any]],
    cut: _Cut,
    previous: _Previous,
    settings: ClusterSettings,
) -> _Naming:
    """Stable ids: each new cluster takes the id of the old one it shares most members with, else
    of the most similar unclaimed old centroid, else one derived from its members."""
    ids = [r.id for r in rows]
    # Largest clusters pick their predecessor first, so a split keeps the id on its bigger half.
    order = sorted(cut.members, key=lambda lab: (-len(cut.members[lab]), lab))
    names: dict[int, str] = {}
    claimed: set[str] = set()
    for label in order:
        member_ids = {ids[p] for p in cut.members[label]}
        match = _match_by_members(
            member_ids, previous.members, claimed, settings.cluster_match_overlap
        )
        if match is not None:
            names[label] = match
            claimed.add(match)
    kept_by_centroid = 0
    for label in order:
        if label in names:
            continue
        assert cut.centroids is not None
        match = _match_by_centroid(
            cut.centroids[label],
            previous.clusters,
            claimed,
            settings.cluster_match_centroid_similarity,
        )
        if match is not None:
            names[label] = match
            claimed.add(match)
            kept_by_centroid += 1
        else:
            names[label] = _new_cluster_id(app_id, [ids[p] for p in cut.members[label]])
    return _Naming(names, order, claimed, kept_by_centroid)


def _record_lineage(
    session: Session,
    run: ClusterRun,
    rows: Sequence[Row[Any]],
    cut: _Cut,
    naming: _Naming,
    previous: _Previous,
    settings: ClusterSettings,
    now: datetime,
) -> list[LineageEvent]:
    """Where the members of each old cluster went: merges, splits, new and retired clusters as
    cluster_events rows of the run."""
    flows: Counter[tuple[str, str]] = Counter()
    for label, positions in cut.members.items():
        for p in positions:
            old = rows[p].cluster_id
            if old in previous.clusters:
                flows[(old, naming.names[label])] += 1
    events = lineage(
        dict(flows),
        {cid: len(m) for cid, m in previous.members.items()},
        set(previous.clusters),
        [naming.names[label] for label in naming.order],
        settings.cluster_lineage_min_share,
    )
    for event in events:
        session.add(
            ClusterEvent(
                run_id=run.id,
                app_id=run.app_id,
                kind=event.kind,
                from_ids=event.from_ids,
                to_ids=event.to_ids,
                detail=event.detail,
                at=now,
            )
        )
    return events


def _store_clusters(
    session: Session,
    run: ClusterRun,
    rows: Sequence[Row[Any]],
    cut: _Cut,
    naming: _Naming,
    previous: _Previous,
    settings: ClusterSettings,
    now: datetime,
) -> tuple[dict[int, str], dict[str, list[str]]]:
    """Create or update each cluster (size, centroid, vector sum, representative queries).
    Returns the new cluster of each member interaction, and each cluster's member queries."""
    docs: dict[str, list[str]] = {}
    assignment: dict[int, str] = {}
    for label in naming.order:
        cluster_id = naming.names[label]
        positions = cut.members[label]
        queries = [rows[p].query for p in positions]
        docs[cluster_id] = queries
        for p in positions:
            assignment[rows[p].id] = cluster_id
        assert cut.centroids is not None
        centroid = cut.centroids[label].astype(np.float32)
        member_vectors = cut.vectors[positions]
        cluster = previous.clusters.get(cluster_id) or session.get(Cluster, cluster_id)
        if cluster is None:
            cluster = Cluster(id=cluster_id, app_id=run.app_id, label="", keywords=[], size=0,
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
    return assignment, docs


def _label_clusters(
    session: Session, docs: dict[str, list[str]], settings: ClusterSettings
) -> list[TitleRequest]:
    """Keywords (c-TF-IDF over the clusters' queries) and the label made of them. Returns the
    clusters whose title is due, in the order they were labelled."""
    keywords = cluster_keywords(docs, top_n=settings.cluster_keywords)
    due: list[TitleRequest] = []
    for cluster_id, words in keywords.items():
        cluster = session.get(Cluster, cluster_id)
        assert cluster is not None
        previous_keywords = list(cluster.keywords or [])
        cluster.keywords = words
        cluster.label = " / ".join(words[:3]) or "(no keywords)"
        # A title is asked for once, and again only when the keywords changed.
        if not cluster.title or previous_keywords != words:
            queries = list(cluster.representative_queries or [])
            due.append(TitleRequest(cluster_id, list(words), queries))
    return due


def _ask_titles(titler: Titler, due: list[TitleRequest]) -> list[tuple[TitleRequest, str]]:
    """The titles the titler gave (none for a cluster it gave none: it keeps the title it has)."""
    titled = []
    for request in due:
        title = titler(request.keywords, request.queries)
        if title:
            titled.append((request, title))
    return titled


def _store_titles(session: Session, app_id: str, titled: list[tuple[TitleRequest, str]]) -> None:
    """Each title on its cluster, unless the cluster's keywords are no longer the ones the titler
    was asked about (a title names the keywords it was asked for)."""
    if not titled:
        return
    clusters = {
        c.id: c
        for c in session.scalars(
            select(Cluster).where(
                Cluster.app_id == app_id, Cluster.id.in_([r.cluster_id for r, _ in titled])
            )
        )
    }
    for request, title in titled:
        cluster = clusters.get(request.cluster_id)
        if cluster is not None and list(cluster.keywords or []) == request.keywords:
            cluster.title = title


def _retire_unclaimed(
    previous: _Previous, claimed: set[str], run: ClusterRun, now: datetime
) -> int:
    """Old clusters no new cluster took the id of are retired; returns how many."""
    retired = 0
    for cluster_id, cluster in previous.clusters.items():
        if cluster_id not in claimed:
            cluster.active = False
            cluster.emerging = False
            cluster.updated_at = now
            cluster.last_run_id = run.id
            retired += 1
    return retired


def _write_membership(
    session: Session, rows: Sequence[Row[Any]], assignment: dict[int, str], now: datetime
) -> None:
    """interactions.cluster_id where it changed (a re-run on the same data writes nothing), and
    cluster_checked_at on every row that was never placed."""
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


def _run_counts(result: ClusterRunResult, threshold: float | None) -> dict[str, Any]:
    """What cluster_runs.counts records of a run."""
    return {
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


def _failure_types(
    session: Session,
    app_id: str,
    window_start: datetime,
    rows: Sequence[Row[Any]],
    settings: ProposeSettings,
) -> list[str]:
    """refinery.signals.evidence.failure_type of each row, from one query for the feedback that
    can type it (corrections and comments of the window's failing interactions). Responses can be
    long, so they are read only for rows that nothing else typed, a chunk at a time."""
    feedback = _typing_feedback(session, app_id, window_start)
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


def _typing_feedback(
    session: Session, app_id: str, window_start: datetime
) -> dict[str, list[FeedbackTuple]]:
    """The corrections and comments of the window's failing interactions, by interaction."""
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
    return feedback


def _label_complaints_first(app_id: str, settings: Settings, model: str, now: datetime) -> None:
    """Have the complaint classifier (refinery.signals.complaints: it embeds each comment and
    caches its label per text) label the comments `_failure_types` will type the re-cluster at
    `now` by, asked in the same order and groups, in a short read transaction of its own: the
    re-cluster's transaction then finds every label cached, the same labels, and embeds nothing
    while it holds the app's interactions."""
    window_start = now - timedelta(days=settings.cluster_window_days)
    with session_scope(settings.database_url) as session:
        feedback = _typing_feedback(session, app_id, window_start)
        in_window = session.scalars(
            select(Interaction.interaction_id)
            .where(
                Interaction.app_id == app_id,
                Interaction.failing == true(),
                Interaction.occurred_at >= window_start,
                has_query_vector(model),
            )
            .order_by(Interaction.id)
        ).all()
    for interaction_id in in_window:
        if interaction_id in feedback:
            failure_type(feedback[interaction_id], None, None, settings.retrieval_low_score)


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
