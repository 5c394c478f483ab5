"""Thin Celery tasks: ids in, a service call, counts out. All idempotent, retried with backoff.

Heavy work lives in refinery.embed / refinery.cluster / refinery.propose; the embedding model
loads lazily once per worker process (refinery.embed.embedder.get_embedder).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from celery import chain
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from refinery.cluster.assign import AssignResult, apps_with_due, assign_due
from refinery.cluster.region import refresh_region_rates as region_service
from refinery.cluster.service import recluster_app
from refinery.cluster.titles import make_titler
from refinery.embed import embedding_model_name
from refinery.embed.embedder import get_embedder
from refinery.embed.service import embed_interactions as embed_service
from refinery.ops.metrics import CLUSTERS
from refinery.ops.optional import REGION_RATES, optional_step
from refinery.propose.service import propose_for_app as propose_service
from refinery.settings import get_settings
from refinery.signals.orphans import sweep_orphans
from refinery.signals.sessions import analyze_sessions, sweep_abandoned
from refinery.store.db import session_scope
from refinery.store.models import Interaction
from workers.celery_app import app

log = logging.getLogger(__name__)

# Transient errors worth a retry: the database or the broker was briefly unreachable.
RETRYABLE = (OperationalError, ConnectionError, TimeoutError)


@contextlib.contextmanager
def app_lock(app_id: str) -> Iterator[None]:
    """Single writer per app for clustering and proposing (Redis lock; eager mode needs none)."""
    settings = get_settings()
    if settings.redis_url is None:
        yield
        return
    import redis

    client = redis.Redis.from_url(settings.redis_url)
    with client.lock(f"refinery:app-lock:{app_id}", timeout=600, blocking_timeout=600):
        yield


@contextlib.contextmanager
def cluster_lock(app_id: str, *, wait_s: float | None = None) -> Iterator[bool]:
    """Single writer of an app's clusters and interactions.cluster_id: the re-cluster and
    streaming assignment. Yields whether it was acquired: with `wait_s` set, gives up after that
    long (assignment then leaves its queries due, for the sweep). Eager mode needs none."""
    settings = get_settings()
    if settings.redis_url is None:
        yield True
        return
    import redis

    client = redis.Redis.from_url(settings.redis_url)
    lock = client.lock(
        f"refinery:cluster-lock:{app_id}",
        timeout=600,
        blocking_timeout=600 if wait_s is None else wait_s,
    )
    if not lock.acquire():
        yield False
        return
    try:
        yield True
    finally:
        with contextlib.suppress(redis.exceptions.LockError):  # expired under a very long run
            lock.release()


def _assign(app_ids: list[str], *, wait_s: float) -> list[AssignResult]:
    """Streaming assignment of every due, embedded failing query of these apps."""
    settings = get_settings()
    model = embedding_model_name(settings)
    results = []
    for app_id in app_ids:
        with cluster_lock(app_id, wait_s=wait_s) as acquired:
            if not acquired:
                log.info("assignment for %s deferred: a re-cluster holds its lock", app_id)
                continue
            with session_scope(settings.database_url) as session:
                results.append(assign_due(session, app_id, settings, model))
    return results


@app.task(
    name="refinery.embed_interactions",
    autoretry_for=RETRYABLE,
    retry_backoff=True,
    max_retries=get_settings().celery_task_max_retries,
)
def embed_interactions(interaction_ids: list[int]) -> dict:
    """Embed, then at once place the app's due failing queries in its clusters (streaming)."""
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        result = embed_service(session, interaction_ids, get_embedder(settings))
    placed = _assign(result.app_ids, wait_s=settings.cluster_assign_lock_wait_s)
    return {
        "embedded": result.embedded,
        "cached": result.cached,
        "app_ids": result.app_ids,
        "assigned": sum(r.assigned for r in placed),
        "outliers": sum(r.outliers for r in placed),
    }


@app.task(
    name="refinery.assign_clusters",
    autoretry_for=RETRYABLE,
    retry_backoff=True,
    max_retries=get_settings().celery_task_max_retries,
)
def assign_clusters(app_ids: list[str] | None = None) -> dict:
    """Beat: the assignment sweep. Places failing queries whose vector was already cached (ingest
    does not enqueue those for embedding) and any an embed task had to leave due."""
    settings = get_settings()
    if app_ids is None:
        with session_scope(settings.database_url) as session:
            app_ids = apps_with_due(session)
    placed = _assign(app_ids, wait_s=settings.cluster_assign_lock_wait_s)
    return {
        "apps": len(placed),
        "assigned": sum(r.assigned for r in placed),
        "outliers": sum(r.outliers for r in placed),
    }


@app.task(
    name="refinery.cluster_app",
    autoretry_for=RETRYABLE,
    retry_backoff=True,
    max_retries=get_settings().celery_task_max_retries,
)
def cluster_app(app_id: str) -> dict:
    settings = get_settings()
    titler = make_titler(settings, app_id)
    try:
        with (
            app_lock(app_id),
            cluster_lock(app_id),
            session_scope(settings.database_url) as session,
        ):
            result = recluster_app(
                session, app_id, settings, embedding_model_name(settings), titler=titler
            )
    finally:
        if titler is not None:
            titler.close()
    # Committed: the app's cluster count as its single writer left it.
    CLUSTERS.labels(app_id=app_id).set(len(result.cluster_ids))
    return {
        "app_id": app_id,
        "run_id": result.run_id,
        "clusters": len(result.cluster_ids),
        "outliers": result.outliers,
        "kept": result.kept,
        "created": result.created,
        "retired": result.retired,
        "merges": result.merges,
        "splits": result.splits,
    }


@app.task(name="refinery.refresh_region_rates")
def refresh_region_rates(app_id: str) -> dict:
    """Sample and embed non-failing interactions of the app; store each cluster's region
    failure rate (refinery.cluster.region). Embeds, so it runs on the embed queue.

    An optional step, after the proposals: a failure is recorded (refinery.ops.optional) and left
    for the app's next refine to try again. When a rate changed, the proposals are drafted again
    so that their evidence carries it (unchanged drafts are left as they are)."""
    settings = get_settings()
    result = None
    with (
        optional_step(REGION_RATES, app_id),
        session_scope(settings.database_url) as session,
    ):
        result = region_service(session, app_id, settings, get_embedder(settings))
    if result is None:
        return {"app_id": app_id, "failed": True}
    if result.changed:
        propose_for_app.apply_async(args=(app_id,))
    return {
        "app_id": app_id,
        "sampled": result.sampled,
        "non_failing": result.non_failing,
        "embedded": result.embedded,
        "clusters": len(result.rates or {}),
        "changed": result.changed,
    }


@app.task(
    name="refinery.propose_for_app",
    autoretry_for=RETRYABLE,
    retry_backoff=True,
    max_retries=get_settings().celery_task_max_retries,
)
def propose_for_app(app_id: str) -> dict:
    settings = get_settings()
    with app_lock(app_id), session_scope(settings.database_url) as session:
        result = propose_service(session, app_id, settings, embedding_model_name(settings))
    return {
        "app_id": app_id,
        "created": len(result.created),
        "updated": len(result.updated),
        "unchanged": len(result.unchanged),
        "superseded": len(result.superseded),
    }


@app.task(name="refinery.refine_all_apps")
def refine_all_apps() -> list[str]:
    """Beat entry point: re-cluster then propose for every app with failing interactions; region
    failure rates follow as an optional step that never holds the proposals back."""
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        app_ids = sorted(
            session.scalars(
                select(Interaction.app_id).where(Interaction.failing.is_(True)).distinct()
            )
        )
    for app_id in app_ids:
        steps = [cluster_app.si(app_id), propose_for_app.si(app_id)]
        if settings.region_sample_size > 0:
            steps.append(refresh_region_rates.si(app_id))
        chain(*steps).apply_async()
    return app_ids


# --- failure signals (refinery.signals) ---------------------------------------------------------


def _embed_later(interaction_ids: list[int]) -> None:
    size = get_settings().enqueue_batch_size
    for start in range(0, len(interaction_ids), size):
        embed_interactions.apply_async(args=(interaction_ids[start : start + size],))


@app.task(
    name="refinery.detect_session_signals",
    autoretry_for=RETRYABLE,
    retry_backoff=True,
    max_retries=get_settings().celery_task_max_retries,
)
def detect_session_signals(sessions: list[str]) -> dict:
    """Rephrase detection on these "app_id/session_id" sessions (embeds their queries)."""
    from refinery.signals.enqueue import parse_session_ref

    settings = get_settings()
    with session_scope(settings.database_url) as session:
        result = analyze_sessions(
            session, [parse_session_ref(ref) for ref in sessions], settings, get_embedder(settings)
        )
    _embed_later(result.to_embed)
    return {
        "sessions": result.sessions,
        "rephrases": result.rephrases,
        "changed": len(result.changed),
    }


@app.task(
    name="refinery.sweep_abandoned_sessions",
    autoretry_for=RETRYABLE,
    retry_backoff=True,
    max_retries=get_settings().celery_task_max_retries,
)
def sweep_abandoned_sessions() -> dict:
    """Beat: close quiet sessions, mark abandoned last turns."""
    settings = get_settings()
    if not settings.rephrase_detection_enabled:
        return {"sessions": 0, "abandoned": 0}
    from refinery.signals.enqueue import session_ref

    pending: list = []
    with session_scope(settings.database_url) as session:
        result = sweep_abandoned(session, settings, on_pending=pending.extend)
    if pending:  # analysis lost or late: run it; the next sweep closes these sessions
        detect_session_signals.apply_async(args=([session_ref(k) for k in pending],))
    _embed_later(result.to_embed)
    return {"sessions": result.sessions, "abandoned": result.abandoned}


@app.task(
    name="refinery.sweep_orphan_feedback",
    autoretry_for=RETRYABLE,
    retry_backoff=True,
    max_retries=get_settings().celery_task_max_retries,
)
def sweep_orphan_feedback() -> dict:
    """Beat: dead-letter feedback whose interaction never arrived within the join window."""
    from refinery.ingest.deadletter import DeadLetterQueue
    from refinery.kafka.clients import make_producer

    settings = get_settings()
    if settings.kafka_bootstrap_servers is None:
        log.warning("orphan feedback sweep skipped: KAFKA_BOOTSTRAP_SERVERS is unset")
        return {"dead_lettered": 0}
    producer = make_producer(settings)
    try:
        dead_letters = DeadLetterQueue(
            producer,
            settings.topic_dead_letter,
            max_value_bytes=settings.dead_letter_max_value_bytes,
        )
        with session_scope(settings.database_url) as session:
            count = sweep_orphans(session, dead_letters, settings)
    finally:
        producer.close()
    return {"dead_lettered": count}
