"""The Celery app. Broker and results on Redis (REDIS_URL); with no REDIS_URL, tasks run eagerly
in the calling process (the embedded default), which `refinery` says at start-up.

`celery -A workers.celery_app:app inspect active` and `celery -A workers.celery_app:app flower`
work against it.
"""

from __future__ import annotations

from celery import Celery

from refinery.settings import Settings, WorkerSettings, get_settings

# "signals" (session analysis: embeds every turn) apart from "embed" (failing queries only),
# so rephrase detection never delays a failing query's path to its cluster.
QUEUES = ("embed", "cluster", "propose", "signals")

# (soft, hard) time limit of each task, seconds. At the soft limit the task gets
# SoftTimeLimitExceeded and is retried (workers/retry.py) within TASK_RETRY_BUDGET_S; the hard
# limit kills a task stuck where that exception cannot reach it (C code, a hung socket): its
# message is acknowledged as failed (task_acks_on_timeout, Celery's default, so that a task that
# always hangs cannot loop forever) and the reconciler re-enqueues its items from the database.
# Sized for the defaults with room to spare: an embed batch of 64 texts takes ~1 s on a CPU, a
# re-cluster of a large app (10k distinct queries, sampled) a few minutes.
TIME_LIMITS: dict[str, tuple[float, float]] = {
    "refinery.embed_interactions": (240, 300),
    "refinery.assign_clusters": (120, 150),
    "refinery.cluster_app": (540, 600),
    "refinery.refine_app": (540, 600),
    "refinery.propose_for_app": (240, 300),
    "refinery.refresh_region_rates": (240, 300),
    "refinery.refine_all_apps": (60, 90),
    "refinery.detect_session_signals": (240, 300),
    "refinery.sweep_abandoned_sessions": (120, 150),
    "refinery.sweep_orphan_feedback": (120, 150),
    "refinery.reconcile": (120, 150),
    "refinery.refresh_impact": (240, 300),
}
# Slack for clock skew, broker round trips and the worker noticing a timed-out child.
VISIBILITY_MARGIN_S = 60.0


def longest_countdown_s(settings: WorkerSettings) -> float:
    """The longest delay a message is sent with: a retry's backoff (with its 25% jitter) or a
    refine waiting for its app (workers/scheduling.py: at most the max delay or the min interval
    away, or one debounce behind a busy run)."""
    return max(
        settings.task_retry_backoff_max_s * 1.25,
        settings.refine_max_delay_s,
        settings.refine_min_interval_s,
        settings.refine_debounce_s,
        1.0,
    )


def visibility_timeout_s(settings: WorkerSettings) -> float:
    """How long Redis keeps a reserved, unacknowledged message (acks_late) before handing it to
    another worker. It must outlast the longest a message can honestly stay reserved, or a live
    task runs twice:

        longest countdown (a reserved ETA message waits in the worker for it)
      + 2 x longest hard time limit (it then waits for a pool slot, held at most that long by
        the task before it, and runs at most that long itself)
      + VISIBILITY_MARGIN_S

    With the defaults: 75 + 2 x 600 + 60 = 1335 s (22 min), instead of kombu's 1 h. That is how
    long a message reserved by a worker killed with SIGKILL waits before another worker gets it;
    the reconciler (RECONCILE_STALE_S, 5 min by default) usually re-enqueues the work first."""
    longest_hard = max(hard for _, hard in TIME_LIMITS.values())
    return longest_countdown_s(settings) + 2 * longest_hard + VISIBILITY_MARGIN_S


def configure(app: Celery, settings: Settings) -> Celery:
    """(Re)apply settings; tests call it after changing the process's settings."""
    broker = settings.redis_url or "memory://"
    app.conf.update(
        broker_url=broker,
        result_backend=settings.redis_url or "cache+memory://",
        task_always_eager=settings.celery_eager,
        task_eager_propagates=True,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_expires=3600,
        # Tasks are idempotent, so redelivery after a worker dies mid-task is safe and wanted.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        # When Redis takes back reserved messages it has not seen acknowledged (see
        # visibility_timeout_s for the arithmetic): after a worker died, not while a task runs.
        broker_transport_options={"visibility_timeout": visibility_timeout_s(settings)},
        # Lost the broker connection: cancel running acks_late tasks rather than finish them. Their
        # messages go back to the queue with the connection anyway, so finishing them would run
        # each one twice (and their acks could not be delivered on the dead connection).
        worker_cancel_long_running_tasks_on_connection_loss=True,
        task_routes={
            "refinery.embed_interactions": {"queue": "embed"},
            "refinery.cluster_app": {"queue": "cluster"},
            "refinery.propose_for_app": {"queue": "propose"},
            "refinery.refine_all_apps": {"queue": "cluster"},
            # The debounced refine (re-cluster + propose in one task, workers/scheduling.py): the
            # cluster queue; its "not yet due" answers cost a message, not a waiting worker.
            "refinery.refine_app": {"queue": "cluster"},
            # The assignment sweep is milliseconds of FAISS search and carries no ids: not behind
            # a long re-cluster (cluster queue) nor an embedding backlog (embed queue), but on the
            # propose queue of the same stateless workers. The per-app cluster lock keeps it a
            # single writer with the re-cluster.
            "refinery.assign_clusters": {"queue": "propose"},
            # Embeds a sample of healthy traffic, so it needs the model: the embed queue.
            "refinery.refresh_region_rates": {"queue": "embed"},
            # Failure signals (refinery.signals): rephrase detection embeds, on a queue of its
            # own so that it never delays the embed queue; the periodic sweeps never embed:
            # the propose queue, served by the same stateless workers.
            "refinery.detect_session_signals": {"queue": "signals"},
            "refinery.sweep_abandoned_sessions": {"queue": "propose"},
            "refinery.sweep_orphan_feedback": {"queue": "propose"},
            # Database queries and sends, no model: the propose queue too.
            "refinery.reconcile": {"queue": "propose"},
            # Embeds the before/after samples of each refinement's region: the embed queue.
            "refinery.refresh_impact": {"queue": "embed"},
        },
        task_default_queue="embed",
        beat_schedule={
            "refine-all-apps": {
                "task": "refinery.refine_all_apps",
                "schedule": settings.refine_interval_s,
            },
            "assign-clusters": {
                "task": "refinery.assign_clusters",
                "schedule": settings.cluster_assign_interval_s,
                # A sweep stuck behind a backlog is superseded by the next one: drop it.
                "options": {"expires": max(5 * settings.cluster_assign_interval_s, 10.0)},
            },
            "sweep-abandoned-sessions": {
                "task": "refinery.sweep_abandoned_sessions",
                "schedule": settings.signals_sweep_interval_s,
            },
            "reconcile": {
                "task": "refinery.reconcile",
                "schedule": settings.reconcile_interval_s,
                "options": {"expires": max(settings.reconcile_interval_s, 10.0)},
            },
            "sweep-orphan-feedback": {
                "task": "refinery.sweep_orphan_feedback",
                "schedule": settings.signals_sweep_interval_s,
            },
            "refresh-impact": {
                "task": "refinery.refresh_impact",
                "schedule": settings.impact_interval_s,
                "options": {"expires": max(settings.impact_interval_s, 10.0)},
            },
        },
        worker_hijack_root_logger=False,
    )
    # Forget the connection and producer pools made for the previous broker URL (Celery keeps
    # them per app, as it does across a fork): sends go to the broker configured now.
    app._pool = None
    if "amqp" in app.__dict__:
        app.amqp._producer_pool = None
    return app


app = configure(Celery("refinery", include=["workers.tasks"]), get_settings())
