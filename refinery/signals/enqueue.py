"""The ingest consumer's hand-off to rephrase detection, through the installed dispatcher
(refinery.dispatch: Celery send_task on the signals queue, or a direct run in eager mode, no
REDIS_URL). A session travels as "app_id/session_id" (an app id has no "/"): ids only, already
pseudonymized where they held PII, never user text."""

from __future__ import annotations

from collections.abc import Callable

from refinery.dispatch import dispatcher
from refinery.ingest.storage import SessionKey
from refinery.settings import Settings


def session_ref(key: SessionKey) -> str:
    return f"{key[0]}/{key[1]}"


def parse_session_ref(ref: str) -> SessionKey:
    app_id, _, session_id = ref.partition("/")
    return app_id, session_id


def session_enqueue(settings: Settings) -> Callable[[list[SessionKey]], None] | None:
    """None when rephrase detection is off (REPHRASE_DETECTION_ENABLED=false)."""
    if not settings.rephrase_detection_enabled:
        return None
    return dispatcher(settings).detect_session_signals
