"""Raw Kafka record bytes -> a validated event, or a reason to dead-letter it.

Never raises on bad input: every way a payload can be wrong maps to one `InvalidEvent` reason,
so the consumer can dead-letter it and move on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from refinery.settings import Settings
from schemas.events import SUPPORTED_MAJOR_VERSION, Event, FeedbackEvent, InteractionEvent

_EVENT_ADAPTER: TypeAdapter[InteractionEvent | FeedbackEvent] = TypeAdapter(Event)


@dataclass(frozen=True)
class InvalidEvent:
    reason: str  # a short, stable code: the metric label and the dead-letter header
    detail: str  # what exactly was wrong, for the person reading the dead-letter topic


def limits_context(settings: Settings) -> dict[str, int]:
    return {
        "max_query_chars": settings.max_query_chars,
        "max_response_chars": settings.max_response_chars,
        "max_feedback_text_chars": settings.max_feedback_text_chars,
        "max_retrieved_sources": settings.max_retrieved_sources,
        "max_metadata_keys": settings.max_metadata_keys,
    }


def _json_depth(value: Any) -> int:
    """Nesting depth, iteratively: a hostile payload must not exhaust the Python stack."""
    depth, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            depth = max(depth, level)
            stack.extend((v, level + 1) for v in node.values())
        elif isinstance(node, list):
            depth = max(depth, level)
            stack.extend((v, level + 1) for v in node)
    return depth


def _major_version(payload: dict[str, Any]) -> int | None:
    version = payload.get("schema_version", "1.0")
    if not isinstance(version, str) or "." not in version:
        return None
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def parse_event(
    raw: bytes | None,
    settings: Settings,
    *,
    expected_type: str | None = None,
) -> InteractionEvent | FeedbackEvent | InvalidEvent:
    """Validate one record. `expected_type` is the event type its topic carries, if any."""
    if raw is None:
        return InvalidEvent("empty", "record has no value (tombstone)")
    if len(raw) > settings.max_event_bytes:
        return InvalidEvent(
            "oversize", f"{len(raw)} bytes, more than MAX_EVENT_BYTES={settings.max_event_bytes}"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return InvalidEvent("invalid_utf8", f"not UTF-8 at byte {exc.start}")
    try:
        payload = json.loads(text)
    except RecursionError:
        return InvalidEvent("too_deep", "JSON nesting exhausted the parser")
    except ValueError as exc:
        return InvalidEvent("malformed_json", str(exc)[:300])
    if not isinstance(payload, dict):
        return InvalidEvent("schema_violation", f"top level is {type(payload).__name__}, not object")
    depth = _json_depth(payload)
    if depth > settings.max_json_depth:
        return InvalidEvent("too_deep", f"nesting depth {depth} > {settings.max_json_depth}")
    major = _major_version(payload)
    if major is not None and major != SUPPORTED_MAJOR_VERSION:
        return InvalidEvent(
            "unsupported_schema_version",
            f"schema_version {payload.get('schema_version')!r}; this consumer reads "
            f"{SUPPORTED_MAJOR_VERSION}.x",
        )
    # The topic says what an event is; on a mixed stream (the HTTP collector) its fields do.
    payload.setdefault("event_type", expected_type or ("feedback" if "kind" in payload else "interaction"))
    if expected_type is not None:
        if payload["event_type"] != expected_type:
            return InvalidEvent(
                "wrong_topic", f"event_type {payload['event_type']!r} on the {expected_type} topic"
            )
    try:
        return _EVENT_ADAPTER.validate_python(payload, context=limits_context(settings))
    except ValidationError as exc:
        return InvalidEvent("schema_violation", _summarize(exc))


def _summarize(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "(event)"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)[:1000]
