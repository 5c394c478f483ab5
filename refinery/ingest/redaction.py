"""Redaction at the ingest boundary: user text is redacted before it is stored, embedded, put on
a Celery message or dead-lettered. The redactor itself lives in refinery.redact.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TypeVar

from refinery.redact import Redactor
from refinery.redact.redactor import redact_json_strings
from refinery.settings import get_settings
from schemas.events import FeedbackEvent, InteractionEvent

E = TypeVar("E", InteractionEvent, FeedbackEvent)


@lru_cache(maxsize=1)
def _redactor() -> Redactor:
    return Redactor.from_settings(get_settings())


def redact_event(event: E) -> E:
    r = _redactor()
    if isinstance(event, InteractionEvent):
        return event.model_copy(
            update={
                "query": r.redact(event.query),
                "response": r.redact(event.response),
                "metadata": redact_json_strings(event.metadata, r),
            }
        )
    return event.model_copy(
        update={
            "text": r.redact(event.text) if event.text is not None else None,
            "metadata": redact_json_strings(event.metadata, r),
        }
    )


def redact_bytes(raw: bytes | None) -> bytes | None:
    """Redact a raw record for the dead-letter topic, keeping it byte-for-byte otherwise."""
    if raw is None:
        return None
    text = raw.decode("utf-8", "surrogateescape")
    return _redactor().redact(text).encode("utf-8", "surrogateescape")
