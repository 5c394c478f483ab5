"""The Celery app. Broker and results on Redis (REDIS_URL); with no REDIS_URL, tasks run eagerly
in the calling process (the embedded default), which `refinery` says at start-up.

`celery -A workers.celery_app:app inspect active` and `celery -A workers.celery_app:app flower`
work against it.
"""

from __future__ import annotations

from celery import Celery

from refinery.settings import Settings, get_settings

# "signals" (session analysis: embeds every turn) apart from "embed" (failing queries only),
# so rephrase detection never delays a failing query's path to its cluster.
QUEUES = ("embed", "cluster", "propose", "signals")


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
            # Failure signals (refinery.signals): rephrase detection embeds, so the embed queue
            # (whose messages all carry ids); the periodic sweeps carry none and never embed:
            # the propose queue, served by the same stateless workers.
            "refinery.detect_session_signals": {"queue": "signals"},
            "refinery.sweep_abandoned_sessions": {"queue": "propose"},
            "refinery.sweep_orphan_feedback": {"queue": "propose"},
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
            "sweep-orphan-feedback": {
                "task": "refinery.sweep_orphan_feedback",
                "schedule": settings.signals_sweep_interval_s,
            },
        },
        worker_hijack_root_logger=False,
    )
    return app


app = configure(Celery("refinery", include=["workers.tasks"]), get_settings())
