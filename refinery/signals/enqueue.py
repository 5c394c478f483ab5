"""The ingest consumer's hand-off to rephrase detection: Celery send_task on the embed queue, or
a direct run in eager mode (no REDIS_URL). A session travels as "app_id/session_id" (an app id
has no "/"): ids only, already pseudonymized where they held PII, never user text."""

from __future__ import annotations

from collections.abc import Callable

from refinery.ingest.storage import SessionKey
from refinery.settings import Settings

TASK_DETECT = "refinery.detect_session_signals"


def session_ref(key: SessionKey) -> str:
    return f"{key[0]}/{key[1]}"


def parse_session_ref(ref: str) -> SessionKey:
    app_id, _, session_id = ref.partition("/")
    return app_id, session_id


def session_enqueue(settings: Settings) -> Callable[[list[SessionKey]], None] | None:
    """None when rephrase detection is off (REPHRASE_DETECTION_ENABLED=false)."""
    if not settings.rephrase_detection_enabled:
        return None
    if settings.celery_eager:
        from workers.tasks import detect_session_signals

        return lambda keys: detect_session_signals.apply(
            args=([session_ref(k) for k in keys],)
        ).get()

    from workers.celery_app import app

    # send_task keeps the consumer from importing the task modules (and their ML imports).
    # ignore_result: see refinery.runtime.celery_enqueue.
    return lambda keys: app.send_task(
        TASK_DETECT, args=([session_ref(k) for k in keys],), queue="signals", ignore_result=True
    )
