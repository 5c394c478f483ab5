"""Thin Celery tasks: ids in, a service call, counts out. All idempotent, retried with backoff.

Heavy work lives in refinery.embed / refinery.cluster / refinery.propose; the embedding model
loads lazily once per worker process (refinery.embed.embedder.get_embedder).
"""

from __future__ import annotations

import logging

from celery import Task, chain
from celery.signals import worker_ready

from refinery.cluster.assign import AssignResult, apps_with_due, assign_apps
from refinery.cluster.lock import refine_locks
from refinery.cluster.region import refresh_region_rates as region_service
from refinery.cluster.service import apps_with_failures, recluster_and_commit
from refinery.embed import embedding_model_name
from refinery.embed.embedder import get_embedder
from refinery.embed.service import embed_interactions as embed_service
from refinery.ingest.storage import SessionKey
from refinery.ops.optional import REGION_RATES, optional_step
from refinery.propose.service import propose_and_commit
from refinery.reconcile.service import Enqueuers, pass_lock
from refinery.reconcile.service import reconcile as reconcile_pass
from refinery.settings import get_settings
from refinery.signals.enqueue import parse_session_ref, session_ref
from refinery.signals.orphans import sweep_to_dead_letters
from refinery.signals.sessions import analyze_sessions, sweep_abandoned
from refinery.store.db import session_scope
from refinery.store.locks import redis_client
from workers.retry import RETRYABLE, refinery_task
from workers.scheduling import RefineScheduler

log = logging.getLogger(__name__)


# Tries of a task that found its app's locks taken (one per REFINE_DEBOUNCE_S, at least 1 s):
# enough to outwait the longest re-cluster; apart from the retries on transient errors.
LOCK_RETRIES = 720


def _scheduler() -> RefineScheduler | None:
    """The refine scheduler, or None in eager mode (no Redis: nothing runs in the background)."""
    settings = get_settings()
    if settings.redis_url is None:
        return None
    return RefineScheduler(redis_client(settings.redis_url), settings)


def _lock_countdown() -> float:
    return max(get_settings().refine_debounce_s, 1.0)


def request_refine(app_ids: list[str], *, urgent: bool = False, resend: bool = False) -> None:
    """Ask for a refine of these apps (workers.scheduling: debounced, one at a time per app);
    `urgent`: due now (the periodic pass); `resend`: send a task even if one is marked as on its
    way (the reconciler: that one was lost). Eager mode: nothing (no background refine)."""
    scheduler = _scheduler()
    if scheduler is None:
        return
    for app_id in app_ids:
        countdown = scheduler.request(app_id, urgent=urgent, resend=resend)
        if countdown is not None:
            refine_app.apply_async(args=(app_id,), countdown=countdown)


def _assign(app_ids: list[str]) -> list[AssignResult]:
    """Streaming assignment of every due, embedded failing query of these apps; apps that got new
    failing queries placed (in a cluster or the outlier pool) get a refine requested."""
    settings = get_settings()
    results = assign_apps(
        app_ids,
        settings,
        embedding_model_name(settings),
        wait_s=settings.cluster_assign_lock_wait_s,
    )
    request_refine([r.app_id for r in results if r.assigned or r.outliers])
    return results


@refinery_task(
    "refinery.embed_interactions", work=lambda args, kw: ("embed", [str(i) for i in args[0]], [])
)
def embed_interactions(self: Task, interaction_ids: list[int]) -> dict:
    """Embed, then at once place the app's due failing queries in its clusters (streaming)."""
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        result = embed_service(session, interaction_ids, get_embedder(settings))
    placed = _assign(result.app_ids)
    return {
        "embedded": result.embedded,
        "cached": result.cached,
        "app_ids": result.app_ids,
        "assigned": sum(r.assigned for r in placed),
        "outliers": sum(r.outliers for r in placed),
    }


@refinery_task(
    "refinery.assign_clusters",
    work=lambda args, kw: ("assign", [], (args[0] if args else kw.get("app_ids")) or []),
)
def assign_clusters(self: Task, app_ids: list[str] | None = None) -> dict:
    """Beat: the assignment sweep. Places failing queries whose vector was already cached (ingest
    does not enqueue those for embedding) and any an embed task had to leave due."""
    settings = get_settings()
    if app_ids is None:
        with session_scope(settings.database_url) as session:
            app_ids = apps_with_due(session)
    placed = _assign(app_ids)
    return {
        "apps": len(placed),
        "assigned": sum(r.assigned for r in placed),
        "outliers": sum(r.outliers for r in placed),
    }


def _recluster(app_id: str) -> dict:
    """Re-cluster the app; the caller holds its app and cluster locks."""
    result = recluster_and_commit(app_id, get_settings())
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


def _propose(app_id: str) -> dict:
    """Draft the app's proposals; the caller holds its app lock."""
    settings = get_settings()
    result = propose_and_commit(app_id, settings, embedding_model_name(settings))
    return {
        "app_id": app_id,
        "created": len(result.created),
        "updated": len(result.updated),
        "unchanged": len(result.unchanged),
        "superseded": len(result.superseded),
    }


@refinery_task("refinery.cluster_app", work=lambda args, kw: ("refine", [args[0]], []))
def cluster_app(self: Task, app_id: str) -> dict:
    """Re-cluster one app now (the periodic and debounced refines use `refine_app`). Its locks
    taken: sent again after a countdown, never waited for in the worker slot."""
    with refine_locks(app_id, get_settings(), cluster=True) as held:
        if held:
            return _recluster(app_id)
    raise self.retry(countdown=_lock_countdown(), max_retries=LOCK_RETRIES)


@refinery_task("refinery.refresh_region_rates")
def refresh_region_rates(self: Task, app_id: str) -> dict:
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


@refinery_task("refinery.propose_for_app")
def propose_for_app(self: Task, app_id: str) -> dict:
    """Draft one app's proposals now. Its lock taken: sent again after a countdown."""
    with refine_locks(app_id, get_settings(), cluster=False) as held:
        if held:
            return _propose(app_id)
    raise self.retry(countdown=_lock_countdown(), max_retries=LOCK_RETRIES)


# Not retried by the decorator: a failed run asks for a refine again itself (below).
@refinery_task("refinery.refine_app", work=lambda args, kw: ("refine", [args[0]], []), retry=False)
def refine_app(self: Task, app_id: str) -> dict:
    """One app's refine: re-cluster, then propose, in this task (one worker holds the app for
    the whole run); region failure rates follow as an optional task on the embed queue.

    Sent by `request_refine` (new failing queries, the periodic pass) after a countdown, it first
    asks workers.scheduling whether it is due: not yet, or another run holds the app, and it is
    sent again after a countdown; nothing requested, and it returns."""
    scheduler = _scheduler()
    if scheduler is None:  # eager mode: no debounce, run at once
        outcome = {"action": "run", "cluster": _recluster(app_id), "propose": _propose(app_id)}
        _region_follow_up(app_id)
        return outcome
    decision = scheduler.fire(app_id)
    if decision.action == "wait":
        refine_app.apply_async(args=(app_id,), countdown=decision.delay_s)
    if decision.action != "run":
        return {"app_id": app_id, "action": decision.action, "delay_s": decision.delay_s}
    with (
        scheduler.running(app_id, decision.token),
        refine_locks(app_id, get_settings(), cluster=True) as held,
    ):
        if not held:  # a direct cluster_app / propose_for_app holds the app: come back
            log.info("refine of %s deferred: its app or cluster lock is taken", app_id)
            request_refine([app_id])
            return {"app_id": app_id, "action": "deferred"}
        try:
            outcome = {"action": "run", "cluster": _recluster(app_id)}
            outcome["propose"] = _propose(app_id)
        except RETRYABLE:
            # The run consumed the app's requests: ask again, or nothing would refine it
            # before the periodic pass.
            request_refine([app_id])
            raise
    _region_follow_up(app_id)
    return {"app_id": app_id} | outcome


def _region_follow_up(app_id: str) -> None:
    if get_settings().region_sample_size > 0:
        refresh_region_rates.apply_async(args=(app_id,))


@refinery_task("refinery.refine_all_apps")
def refine_all_apps(self: Task) -> list[str]:
    """Beat entry point, the safety net: a refine of every app with failing interactions,
    requested as due now (one at a time per app, like the debounced ones). Eager mode: the
    chain re-cluster -> propose -> region rates, for each app, in this process."""
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        app_ids = apps_with_failures(session)
    if settings.celery_eager:
        for app_id in app_ids:
            steps = [cluster_app.si(app_id), propose_for_app.si(app_id)]
            if settings.region_sample_size > 0:
                steps.append(refresh_region_rates.si(app_id))
            chain(*steps).apply_async()
    else:
        request_refine(app_ids, urgent=True)
    return app_ids


# --- failure signals (refinery.signals) ---------------------------------------------------------


def _embed_later(interaction_ids: list[int]) -> None:
    size = get_settings().enqueue_batch_size
    for start in range(0, len(interaction_ids), size):
        embed_interactions.apply_async(args=(interaction_ids[start : start + size],))


@refinery_task(
    "refinery.detect_session_signals", work=lambda args, kw: ("session", list(args[0]), [])
)
def detect_session_signals(self: Task, sessions: list[str]) -> dict:
    """Rephrase detection on these "app_id/session_id" sessions (embeds their queries)."""
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


@refinery_task("refinery.sweep_abandoned_sessions")
def sweep_abandoned_sessions(self: Task) -> dict:
    """Beat: close quiet sessions, mark abandoned last turns."""
    settings = get_settings()
    if not settings.rephrase_detection_enabled:
        return {"sessions": 0, "abandoned": 0}
    pending: list = []
    with session_scope(settings.database_url) as session:
        result = sweep_abandoned(session, settings, on_pending=pending.extend)
    if pending:  # analysis lost or late: run it; the next sweep closes these sessions
        detect_session_signals.apply_async(args=([session_ref(k) for k in pending],))
    _embed_later(result.to_embed)
    return {"sessions": result.sessions, "abandoned": result.abandoned}


@refinery_task("refinery.sweep_orphan_feedback")
def sweep_orphan_feedback(self: Task) -> dict:
    """Beat: dead-letter feedback whose interaction never arrived within the join window."""
    return {"dead_lettered": sweep_to_dead_letters(get_settings())}


# --- the reconciler (refinery.reconcile) ---------------------------------------------------------


def reconcile_enqueuers() -> Enqueuers:
    """How the reconciler (and `refinery failed retry`) sends each kind of work again: the same
    tasks the pipeline sends, so a re-sent item takes the path a first one takes."""

    def sessions(keys: list[SessionKey]) -> None:
        detect_session_signals.apply_async(args=([session_ref(k) for k in keys],))

    return Enqueuers(
        embed=lambda ids: embed_interactions.apply_async(args=(ids,)),
        assign=lambda app_ids: assign_clusters.apply_async(args=(app_ids,)),
        session=sessions,
        # resend: the app's refine did not progress, so a task marked as on its way was lost
        refine=lambda app_ids: request_refine(app_ids, urgent=True, resend=True),
    )


@refinery_task("refinery.refresh_impact")
def refresh_impact(self: Task, app_id: str | None = None) -> dict:
    """Beat: when each approved refinement shipped, its region's failure rate before and after,
    the verdict; one alert per regression (refinery.impact). Embeds, so the embed queue."""
    from refinery.impact.service import refresh_impacts
    from refinery.store.db import session_factory

    settings = get_settings()
    result = refresh_impacts(
        session_factory(settings.database_url), settings, get_embedder(settings), app_id=app_id
    )
    return {
        "refinements": result.refinements,
        "inferred": result.inferred,
        "alerts": result.alerts,
        "verdicts": result.verdicts,
    }


@refinery_task("refinery.reconcile")
def reconcile(self: Task) -> dict:
    """Beat (and once at worker start): re-enqueue what the database says is due and has not
    progressed within RECONCILE_STALE_S; park what RECONCILE_MAX_ATTEMPTS did not move. One pass
    at a time (a Redis lock; a pass that finds it taken returns)."""
    settings = get_settings()
    with pass_lock(settings) as acquired:
        if not acquired:
            return {"skipped": "another pass holds the lock"}
        with session_scope(settings.database_url) as session:
            result = reconcile_pass(
                session, settings, embedding_model_name(settings), reconcile_enqueuers()
            )
        return result.as_dict()


@worker_ready.connect(weak=False, dispatch_uid="refinery-reconcile-at-start")
def _reconcile_at_start(sender: object = None, **_: object) -> None:
    """A worker that starts (after a crash, a deploy, a broker restarted empty) sends one
    reconciler pass at once rather than waiting for beat's first tick."""
    try:
        reconcile.apply_async()
    except Exception as error:  # noqa: BLE001 - beat sends the next pass anyway
        log.warning("could not send the reconciler pass at worker start: %s", error)
