"""Every Prometheus metric of llm-refinery, in one registry (`REGISTRY`).

Stages import the metric they update from here; nothing defines a metric elsewhere, so this file
is the catalogue an operator reads when writing dashboards and alerts. Names follow Prometheus
conventions: `_total` for counters, base units (seconds, records) in the name.

Processes: each role is its own process and serves its own /metrics. Celery's prefork pool runs
tasks in child processes whose metrics the parent cannot see; with PROMETHEUS_MULTIPROC_DIR set
(the deployments set it for the worker) prometheus_client writes every process's values to files
there, and `scrape_registry()` aggregates them. The directory must be empty when the worker starts
(a tmpfs / emptyDir), and the worker must call
`prometheus_client.multiprocess.mark_process_dead(pid)` when a child exits.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# prometheus_client picked its value class at import from this env var; the files go there as
# soon as a metric below is created, so the directory must exist first.
if os.environ.get(MULTIPROC_ENV):
    os.makedirs(os.environ[MULTIPROC_ENV], exist_ok=True)

REGISTRY = CollectorRegistry(auto_describe=True)
"""The one registry. Not prometheus_client's global default, so that importing a library that
registers its own metrics cannot collide with ours or leak into /metrics."""

_NS = "refinery"

# --- ingest ---------------------------------------------------------------------------------

# Records polled from Kafka and handled (stored, dead-lettered or dropped as duplicate), by topic,
# counted once per batch when the batch is durable. rate() of this is the ingest throughput.
EVENTS_CONSUMED = Counter(
    "events_consumed",
    "Kafka records consumed and handled, by topic.",
    ["topic"],
    namespace=_NS,
    registry=REGISTRY,
)

# Invalid records sent to the dead-letter topic, by reason (the error taxonomy's reason code,
# e.g. invalid_json, schema, too_large, unknown_version). A rise in one reason after a producer
# deploy is the usual alert.
EVENTS_DEAD_LETTERED = Counter(
    "events_dead_lettered",
    "Records sent to the dead-letter topic, by reason.",
    ["reason"],
    namespace=_NS,
    registry=REGISTRY,
)

# Records whose event_id was already stored (redelivery after a crash or rebalance, or a producer
# retry). Non-zero is normal under at-least-once delivery; a ratio near 1 means offsets are not
# being committed.
EVENTS_DUPLICATE = Counter(
    "events_duplicate",
    "Records dropped because their event_id was already stored.",
    namespace=_NS,
    registry=REGISTRY,
)

# Spans received by the collector's POST /v1/traces, by outcome: accepted (became an event or
# the sources of one), invalid (its event was dead-lettered) or the reason it was skipped
# (refinery.otlp.mapping.SKIP_REASONS: not_chat, no_content, foreign_app, ...). A rise of
# no_content means an instrumentation stopped capturing message content.
OTLP_SPANS = Counter(
    "otlp_spans",
    "Spans received on POST /v1/traces, by outcome (accepted, invalid, or why skipped).",
    ["outcome"],
    namespace=_NS,
    registry=REGISTRY,
)

# Log-end offset (the high watermark of the last fetch) minus the consumer's position, per assigned
# partition, refreshed after each commit and each empty poll; after a commit, position = committed.
# A partition's series goes when the partition is revoked, so sum() counts each partition once.
# The signal to scale ingest (up to one consumer per partition).
CONSUMER_LAG = Gauge(
    "consumer_lag_records",
    "Records not yet committed by the ingest consumer group, per partition.",
    ["topic", "partition"],
    namespace=_NS,
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)

# Records per poll-and-commit cycle. Batches pinned at INGEST_BATCH_MAX_RECORDS mean ingest is
# behind; tiny batches under load mean the poll timeout is too short.
INGEST_BATCH_SIZE = Histogram(
    "ingest_batch_size_records",
    "Records handled per poll-and-commit cycle.",
    namespace=_NS,
    registry=REGISTRY,
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
)

# Celery embed tasks sent by ingest, each carrying up to ENQUEUE_BATCH_SIZE failing interactions.
ENQUEUE_BATCHES = Counter(
    "enqueue_batches",
    "Batches of failing interactions enqueued for embedding.",
    namespace=_NS,
    registry=REGISTRY,
)

# --- embedding ------------------------------------------------------------------------------

# Texts encoded by the model (cache misses only); with EMBEDDING_CACHE_HITS, the cache hit ratio.
EMBEDDING_TEXTS = Counter(
    "embedding_texts",
    "Texts encoded by the embedding model.",
    namespace=_NS,
    registry=REGISTRY,
)

# Wall time of one encoder call over the texts a task found missing from the cache (an embed task:
# up to ENQUEUE_BATCH_SIZE; region sampling and rephrase detection send more), encoded in forward
# passes of EMBEDDING_BATCH_SIZE. rate(embedding_texts) / rate(this _sum) is texts/s per busy
# process, the figure that sizes the worker fleet (docs/scaling.md).
EMBEDDING_BATCH_SECONDS = Histogram(
    "embedding_batch_seconds",
    "Seconds per embedding batch (one encoder call).",
    namespace=_NS,
    registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

# Texts whose embedding was found in the cache and not recomputed.
EMBEDDING_CACHE_HITS = Counter(
    "embedding_cache_hits",
    "Texts whose embedding came from the cache.",
    namespace=_NS,
    registry=REGISTRY,
)

# --- clustering and proposals ---------------------------------------------------------------

# Clusters of failing queries after the last re-cluster, per app (outliers excluded). Set by the
# single cluster writer of each app.
CLUSTERS = Gauge(
    "clusters",
    "Clusters after the last re-cluster, per app.",
    ["app_id"],
    namespace=_NS,
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)

# Proposals entering a status, by kind (prompt_edit, rag_source, finetune_dataset) and status
# (pending, approved, rejected, superseded, applied). A counter, not a gauge, so that every
# process counts its own transitions and the sum is right: the pending backlog is
# created(pending) - decided(approved+rejected+superseded).
PROPOSALS = Counter(
    "proposals",
    "Proposals entering a status, by kind and status.",
    ["kind", "status"],
    namespace=_NS,
    registry=REGISTRY,
)

# Failures of an optional step of an app's refine, by step (region_rates, cluster_titles; see
# refinery/ops/optional.py). Proposals are drafted without the step and it is tried again on the
# next refine, so a failure costs freshness of the evidence, not the queue; a steady rate means an
# endpoint is down or a bug, and the error log (with the app id) says which.
OPTIONAL_STEP_FAILURES = Counter(
    "optional_step_failures",
    "Failures of an optional refine step (proposals went on without it), by step.",
    ["step"],
    namespace=_NS,
    registry=REGISTRY,
)

# --- reliability ----------------------------------------------------------------------------

# Items the reconciler (refinery.reconcile) sent again because the database said they were due and
# had not progressed within RECONCILE_STALE_S, by kind (embed, assign, session, refine). Non-zero
# after a broker lost its queue or a worker died; a steady rate means tasks keep failing.
RECONCILE_REENQUEUED = Counter(
    "reconcile_reenqueued",
    "Due items re-enqueued by the reconciler, by kind.",
    ["kind"],
    namespace=_NS,
    registry=REGISTRY,
)

# Items parked in the failed-work table after RECONCILE_MAX_ATTEMPTS re-enqueues, by kind: work
# that needs a person (`refinery failed list`, then `refinery failed retry`). Alert on any increase.
FAILED_WORK_PARKED = Counter(
    "failed_work_parked",
    "Items parked in the failed-work table, by kind.",
    ["kind"],
    namespace=_NS,
    registry=REGISTRY,
)

# Rows of the failed-work table that are parked, by kind, as of the reconciler's last pass.
FAILED_WORK = Gauge(
    "failed_work_rows",
    "Parked failed-work rows, by kind, at the reconciler's last pass.",
    ["kind"],
    namespace=_NS,
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)

# Task retries on a transient error (database, broker, soft time limit), by task.
TASK_RETRIES = Counter(
    "task_retries",
    "Task retries after a transient error, by task.",
    ["task"],
    namespace=_NS,
    registry=REGISTRY,
)

# Tasks that failed for good after TASK_RETRY_BUDGET_S of retries, by task; their items are
# recorded in failed_work for the reconciler. Any increase means an outage outlasted the budget.
TASK_RETRY_BUDGET_EXHAUSTED = Counter(
    "task_retry_budget_exhausted",
    "Tasks that failed for good after TASK_RETRY_BUDGET_S of retries, by task.",
    ["task"],
    namespace=_NS,
    registry=REGISTRY,
)

# Times `refinery ingest` paused because a dependency was unreachable, by dependency (kafka,
# broker, database); it resumes from the last committed offset.
INGEST_DEPENDENCY_ERRORS = Counter(
    "ingest_dependency_errors",
    "Ingest batches interrupted by an unreachable dependency, by dependency.",
    ["dependency"],
    namespace=_NS,
    registry=REGISTRY,
)

# --- review API (refinery api) --------------------------------------------------------------

# Requests the API answered, by method, route template (/v1/proposals/{proposal_id}: never the raw
# path, so ids cannot multiply the series; "<unmatched>" for a path no route matched, a 413 refused
# before routing included) and status code. rate() by status is the API's error rate.
HTTP_REQUESTS = Counter(
    "http_requests",
    "HTTP requests answered by the API, by method, route template and status code.",
    ["method", "route", "status"],
    namespace=_NS,
    registry=REGISTRY,
)

# Seconds from a request's arrival to the end of its response, by method and route template.
# Buckets span a cached token check (~2 ms) to a large dataset page or bulk decision (seconds).
HTTP_REQUEST_SECONDS = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency of the API, by method and route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    namespace=_NS,
    registry=REGISTRY,
)

# --- review and outbox ----------------------------------------------------------------------

# Every review attempt, by decision asked (approve, reject, edit, claim, release; a bulk decision
# counts each proposal) and outcome (applied, conflict when another reviewer won the race,
# invalid). Conflicts are expected; a burst means two reviewers work the same queue.
REVIEW_DECISIONS = Counter(
    "review_decisions",
    "Review attempts, by decision and outcome.",
    ["decision", "outcome"],
    namespace=_NS,
    registry=REGISTRY,
)

# Outbox rows not yet published to the approved-refinements topic, as seen by the relay at its
# last pass. Growing means Kafka is unreachable or the relay is down.
OUTBOX_BACKLOG = Gauge(
    "outbox_backlog_rows",
    "Outbox rows waiting to be published.",
    namespace=_NS,
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)

# Outbox rows published (acknowledged by Kafka) and marked sent.
OUTBOX_PUBLISHED = Counter(
    "outbox_published",
    "Outbox rows published to the approved-refinements topic.",
    namespace=_NS,
    registry=REGISTRY,
)


def scrape_registry() -> CollectorRegistry:
    """The registry a /metrics endpoint should serve: `REGISTRY`, or, when
    PROMETHEUS_MULTIPROC_DIR is set, a registry aggregating every process's files there."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return REGISTRY
    aggregated = CollectorRegistry()
    multiprocess.MultiProcessCollector(aggregated, path=path)
    return aggregated


def after_commit(session: Session, update: Callable[[], None]) -> None:
    """Run `update` (a metric change) when `session`'s transaction commits, and never if it rolls
    back: counters then count what became durable, not attempts a retry repeats."""
    from sqlalchemy import event

    def committed(_: Session) -> None:
        event.remove(session, "after_rollback", rolled_back)
        update()

    def rolled_back(_: Session) -> None:
        event.remove(session, "after_commit", committed)

    event.listen(session, "after_commit", committed, once=True)
    event.listen(session, "after_rollback", rolled_back, once=True)
