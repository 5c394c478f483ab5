"""Tables of llm-refinery (SQLAlchemy 2). Migrations in ./migrations mirror this file.

Idempotency lives here: every event table is unique on event_id, interactions on
(app_id, interaction_id), embeddings on (model, text_hash), and at most one pending proposal
exists per (cluster, kind).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Interaction(Base):
    __tablename__ = "interactions"
    __table_args__ = (
        UniqueConstraint("app_id", "interaction_id", name="uq_interactions_app_interaction"),
        Index("ix_interactions_app_failing", "app_id", "failing"),
        # Failing interactions waiting for streaming assignment: a small partial index, so the
        # assignment pass never scans an app's outlier pool or its healthy traffic.
        Index(
            "ix_interactions_cluster_due",
            "app_id",
            sqlite_where=text("failing = 1 AND cluster_id IS NULL AND cluster_checked_at IS NULL"),
            postgresql_where=text(
                "failing = true AND cluster_id IS NULL AND cluster_checked_at IS NULL"
            ),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    app_id: Mapped[str] = mapped_column(String(64))
    interaction_id: Mapped[str] = mapped_column(String(128))
    session_id: Mapped[str] = mapped_column(String(128))
    turn_index: Mapped[int | None] = mapped_column(Integer)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    query: Mapped[str] = mapped_column(Text)
    response: Mapped[str] = mapped_column(Text)
    prompt_name: Mapped[str | None] = mapped_column(String(128))
    prompt_version: Mapped[str | None] = mapped_column(String(128))
    model: Mapped[str | None] = mapped_column(String(200))
    sources: Mapped[list[Any]] = mapped_column(JSON, default=list)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    # sha256 of the normalized query: the key of the embedding cache.
    query_hash: Mapped[str] = mapped_column(String(64))
    failing: Mapped[bool] = mapped_column(Boolean, default=False)
    failure_reasons: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # Weighted sum of its signals (refinery.ingest.failure); failing = score >= FAILURE_THRESHOLD.
    failure_score: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    cluster_id: Mapped[str | None] = mapped_column(String(40), index=True)
    # When the cluster stage last placed this failing interaction (in a cluster or the outlier
    # pool). NULL on a failing one: its assignment is due (refinery.cluster.assign).
    cluster_checked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ingested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Feedback(Base):
    """Every signal on an interaction: sent by apps (source "app") or detected from sessions
    (source "system": rephrase, abandon; re-derived whenever the session changes)."""

    __tablename__ = "feedback"
    __table_args__ = (
        Index("ix_feedback_app_interaction", "app_id", "interaction_id"),
        # The orphan sweep: feedback whose interaction has not arrived, oldest first.
        Index("ix_feedback_unjoined", "joined", "ingested_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    app_id: Mapped[str] = mapped_column(String(64))
    # Not a foreign key: feedback may arrive before its interaction and waits here for it.
    interaction_id: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))
    value: Mapped[float | None] = mapped_column(Float)
    scale_max: Mapped[float] = mapped_column(Float, default=5)
    text: Mapped[str | None] = mapped_column(Text)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ingested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    session_id: Mapped[str | None] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(16), default="app", server_default="app")
    # What a system signal saw (e.g. {"after_s": 40, "similarity": 0.83, "next": "i-2"}).
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # True once its interaction is stored; the orphan sweep dead-letters what stays False.
    joined: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Where the event was read, for the dead-letter headers of an orphan.
    kafka_topic: Mapped[str | None] = mapped_column(String(249))
    kafka_partition: Mapped[int | None] = mapped_column(Integer)
    kafka_offset: Mapped[int | None] = mapped_column(BigInteger)


class SessionState(Base):
    """One row per conversation: what the abandon sweep needs without scanning interactions."""

    __tablename__ = "sessions"
    __table_args__ = (Index("ix_sessions_open_quiet", "closed_at", "last_seen_at"),)

    app_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    last_occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # event time
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # arrival time
    # Set when the sweep found the session ended; a later turn reopens it (NULL again).
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The last_seen_at that the latest rephrase analysis covered; older than last_seen_at (or
    # NULL) means turns arrived since and the analysis is due.
    analyzed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Embedding(Base):
    """Embedding cache: one vector per (model, normalized query text)."""

    __tablename__ = "embeddings"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    text_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, L2-normalized
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Cluster(Base):
    __tablename__ = "clusters"
    __table_args__ = (Index("ix_clusters_app_active", "app_id", "active"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    app_id: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(400))
    keywords: Mapped[list[Any]] = mapped_column(JSON, default=list)
    size: Mapped[int] = mapped_column(Integer)
    centroid: Mapped[bytes] = mapped_column(LargeBinary)  # float32, L2-normalized
    # float32 sum of the member vectors: streaming assignment adds to it and re-normalizes the
    # centroid, so size and centroid always describe the current members.
    vector_sum: Mapped[bytes | None] = mapped_column(LargeBinary)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Labels: member queries closest to the centroid (distinct), and an optional short title
    # written by an OpenAI-compatible chat endpoint (CLUSTER_TITLE_ENDPOINT).
    representative_queries: Mapped[list[Any]] = mapped_column(JSON, default=list)
    title: Mapped[str | None] = mapped_column(String(200))
    # Trend, as of the last re-cluster (refinery.cluster.trends): failing interactions per
    # bucket, oldest first [{"start": iso, "count": n}], growth of the newest bucket over the
    # baseline, and the emerging flag with its reason ("new" | "rising").
    first_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    trend: Mapped[list[Any]] = mapped_column(JSON, default=list)
    growth_rate: Mapped[float | None] = mapped_column(Float)
    emerging: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    emerging_reason: Mapped[str | None] = mapped_column(String(16))
    # Failing / all interactions near the centroid, from a sample of non-failing traffic
    # (refinery.cluster.region); NULL until a sample was drawn.
    region_failure_rate: Mapped[float | None] = mapped_column(Float)
    region_sampled: Mapped[int | None] = mapped_column(Integer)
    last_run_id: Mapped[str | None] = mapped_column(String(40))


class Prompt(Base):
    """Prompt registry: every version of every app's system prompts; the highest is current."""

    __tablename__ = "prompts"
    __table_args__ = (UniqueConstraint("app_id", "name", "version", name="uq_prompts_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    app_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(128))
    # Monotonic per (app, name): orders versions whatever their names are.
    seq: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(32))  # cli | event | approval
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ProposalRow(Base):
    __tablename__ = "proposals"
    __table_args__ = (
        # One open proposal per cluster and kind: re-running the proposer updates it.
        Index(
            "uq_proposals_open_per_cluster_kind",
            "cluster_id",
            "kind",
            unique=True,
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
        Index("ix_proposals_app_status", "app_id", "status"),
        # The review queue: newest first, optionally by status and kind. Without these a page sorts
        # the whole table, reading every payload on the way (bench/bench_api.py).
        Index("ix_proposals_created", "created_at", "id"),
        Index("ix_proposals_status_created", "status", "created_at", "id"),
        Index("ix_proposals_kind_status_created", "kind", "status", "created_at", "id"),
        Index("ix_proposals_claimed_status", "claimed_by", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    app_id: Mapped[str] = mapped_column(String(64))
    cluster_id: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    # Optimistic concurrency: every change bumps it; a decision names the version it read.
    version: Mapped[int] = mapped_column(Integer, default=1)
    title: Mapped[str] = mapped_column(String(400))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    fingerprint: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    decided_by: Mapped[str | None] = mapped_column(String(128))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    decision_comment: Mapped[str | None] = mapped_column(Text)
    # Who took the proposal to review, and since when (refinery.review.service.claim): a claim
    # changes neither the artifact nor the status, so it does not bump the version.
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditEntry(Base):
    """Append-only: every attempt on a proposal, allowed or refused."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    proposal_id: Mapped[str] = mapped_column(String(40), index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str | None] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16))  # ok | refused
    detail: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class OutboxRow(Base):
    """Transactional outbox: written with the approval, published by `refinery relay`."""

    __tablename__ = "outbox"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    proposal_id: Mapped[str] = mapped_column(String(40), ForeignKey("proposals.id"))
    topic: Mapped[str] = mapped_column(String(200))
    key: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)


class ApiToken(Base):
    """Tokens of the review API: only the sha256 of the secret is stored (refinery.api.tokens)."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))  # viewer | reviewer | admin
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(128))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class UiSession(Base):
    """A web UI log-in: the cookie holds a random id, only its sha256 is stored. It ends at
    `expires_at`, on log-out (`revoked_at`), or when its token is revoked (refinery.api.tokens)."""

    __tablename__ = "ui_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[str] = mapped_column(String(40), ForeignKey("api_tokens.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ClusterRun(Base):
    """One re-cluster of one app: what it saw and what it changed."""

    __tablename__ = "cluster_runs"
    __table_args__ = (Index("ix_cluster_runs_app_started", "app_id", "started_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    app_id: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    window_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # {"clustered", "outliers", "clusters", "kept", "created", "retired", "merges", "splits"}
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ClusterEvent(Base):
    """Lineage of cluster ids: which clusters a re-cluster merged, split, created or retired.

    from_ids -> to_ids: merge [a, b] -> [a]; split [a] -> [a, c]; new [] -> [c];
    retired [a] -> [] (its members went to the outlier pool or out of the window)."""

    __tablename__ = "cluster_events"
    __table_args__ = (Index("ix_cluster_events_app_at", "app_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(40), index=True)
    app_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # merge | split | new | retired
    from_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    to_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # Members that flowed along each edge: {"old->new": n}.
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FailedWork(Base):
    """Work the database says is due and that has not progressed (refinery.reconcile): one row
    per item while the reconciler re-enqueues it (`attempts`), parked (`parked_at`) after
    RECONCILE_MAX_ATTEMPTS with the last error a task recorded. Deleted once the item progressed.

    kind: embed | assign (key: interactions.id), session (key: "app_id/session_id"),
    refine (key: app_id)."""

    __tablename__ = "failed_work"
    __table_args__ = (
        UniqueConstraint("kind", "item_key", name="uq_failed_work_kind_key"),
        Index("ix_failed_work_parked", "parked_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    item_key: Mapped[str] = mapped_column(String(200))
    app_id: Mapped[str] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    parked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class RefinementImpact(Base):
    """Did an approved refinement help (refinery.impact): when it shipped and the latest verdict
    on its cluster's region, before vs after. One row per approved proposal, recomputed."""

    __tablename__ = "refinement_impacts"
    __table_args__ = (Index("ix_refinement_impacts_app", "app_id"),)

    proposal_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    app_id: Mapped[str] = mapped_column(String(64))
    cluster_id: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(32))
    approved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When it shipped: reported (status applied, audited) or inferred (the first interaction
    # carrying the prompt version its approval registered); NULL while not applied.
    applied_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    applied_how: Mapped[str | None] = mapped_column(String(16))  # reported | inferred
    applied_version: Mapped[str | None] = mapped_column(String(128))
    # improved | no_change | regressed | not_enough_data | not_applied
    verdict: Mapped[str] = mapped_column(String(20), default="not_applied")
    # Counts and interval of the verdict by time (refinery.impact.verdict.Assessment.as_dict),
    # and the region's counts per prompt version.
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    by_version: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    computed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set when the regression alert was written to the outbox: alerted once.
    alerted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Corpus(Base):
    """An app's candidate corpus (refinery.corpus): documents it could add to its retrieval index.
    `version` grows with every registration; the in-memory FAISS index is cached per version."""

    __tablename__ = "corpora"

    app_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CorpusChunk(Base):
    """One chunk of a candidate document with its vector (float32, L2-normalized, `model`)."""

    __tablename__ = "corpus_chunks"
    __table_args__ = (
        UniqueConstraint("app_id", "doc_id", "chunk_index", name="uq_corpus_chunks_doc_chunk"),
        Index("ix_corpus_chunks_app_model", "app_id", "model"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    app_id: Mapped[str] = mapped_column(String(64))
    doc_id: Mapped[str] = mapped_column(String(200))
    title: Mapped[str] = mapped_column(Text)
    heading: Mapped[str] = mapped_column(Text)
    chunk_index: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(200))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
