"""Raw Kafka record bytes -> a validated event, or a reason to dead-letter it.

Never raises on bad input: every way a payload can be wrong maps to one `InvalidEvent` reason,
so the consumer can dead-letter it and move on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError

from refinery.redact.events import redact_text
from refinery.settings import IngestSettings
from schemas.events import SUPPORTED_MAJOR_VERSION, Event, FeedbackEvent, InteractionEvent

_EVENT_ADAPTER: TypeAdapter[InteractionEvent | FeedbackEvent] = TypeAdapter(Event)
_TYPED_ADAPTERS: dict[str, TypeAdapter[InteractionEvent] | TypeAdapter[FeedbackEvent]] = {
    "interaction": TypeAdapter(InteractionEvent),
    "feedback": TypeAdapter(FeedbackEvent),
}
# A \u0000 or a surrogate escape (paired or not): the fast path leaves those to the full checks.
_RISKY_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
# json.loads joins valid surrogate pairs, so any surrogate left in a string is a lone one.
_SURROGATE = re.compile(r"[\ud800-\udfff]")

# Every reason code, for dashboards and `refinery dlq list --reason`.
REASONS = (
    "empty",  # a tombstone: the record has no value
    "oversize",  # more than MAX_EVENT_BYTES
    "nul_character",  # a NUL byte, or a \u0000 escape in a string (PostgreSQL text cannot hold it)
    "invalid_utf8",  # bytes that are not UTF-8
    "lone_surrogate",  # a \ud800-style escape with no pair: not a character, cannot be stored
    "malformed_json",
    "too_deep",  # nesting beyond MAX_JSON_DEPTH
    "unsupported_schema_version",  # an unknown major schema_version
    "wrong_topic",  # a feedback event on the interactions topic, or the reverse
    "schema_violation",  # the event does not match its model (a field missing, too long, ...)
    "unknown_app",  # app_id not in REGISTERED_APP_IDS
    "timestamp_future",  # occurred_at beyond MAX_EVENT_FUTURE_S from now
    "timestamp_past",  # occurred_at older than MAX_EVENT_AGE_S
    "orphan_feedback",  # feedback whose interaction never arrived (refinery.signals.orphans)
)


@dataclass(frozen=True)
class InvalidEvent:
    reason: str  # a short, stable code (REASONS): the metric label and the dead-letter header
    # What exactly was wrong, for the person reading the dead-letter topic. Redacted of PII: a
    # detail can echo input (a metadata key, a schema_version), and it travels in a header.
    detail: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "detail", redact_text(self.detail))


def limits_context(settings: IngestSettings) -> dict[str, int]:
    return {
        "max_query_chars": settings.max_query_chars,
        "max_response_chars": settings.max_response_chars,
        "max_feedback_text_chars": settings.max_feedback_text_chars,
        "max_retrieved_sources": settings.max_retrieved_sources,
        "max_metadata_keys": settings.max_metadata_keys,
    }


def _scan(value: Any) -> tuple[int, str | None]:
    """Nesting depth, and the reason a string (key or value) cannot be stored, if one cannot.
    Iterative: a hostile payload must not exhaust the Python stack."""
    depth, bad, stack = 0, None, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            depth = max(depth, level)
            for k, v in node.items():
                bad = bad or _bad_string(k)
                stack.append((v, level + 1))
        elif isinstance(node, list):
            depth = max(depth, level)
            stack.extend((v, level + 1) for v in node)
        elif isinstance(node, str):
            bad = bad or _bad_string(node)
    return depth, bad


def _bad_string(text: str) -> str | None:
    if "\x00" in text:
        return "nul_character"
    if _SURROGATE.search(text):
        return "lone_surrogate"
    return None


def _major_version(payload: dict[str, Any]) -> int | None:
    version = payload.get("schema_version", "1.0")
    if not isinstance(version, str) or "." not in version:
        return None
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def parse_event(
    raw: bytes | None,
    settings: IngestSettings,
    *,
    expected_type: str | None = None,
    now: datetime | None = None,
) -> InteractionEvent | FeedbackEvent | InvalidEvent:
    """Validate one record. `expected_type` is the event type its topic carries, if any; `now`
    is the clock that occurred_at is checked against (this host's by default)."""
    if raw is None:
        return InvalidEvent("empty", "record has no value (tombstone)")
    if len(raw) > settings.max_event_bytes:
        return InvalidEvent(
            "oversize", f"{len(raw)} bytes, more than MAX_EVENT_BYTES={settings.max_event_bytes}"
        )
    if b"\x00" in raw:
        return InvalidEvent("nul_character", f"NUL byte at byte {raw.index(0)}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return InvalidEvent("invalid_utf8", f"not UTF-8 at byte {exc.start}")
    fast = _parse_fast(raw, settings, expected_type)
    if fast is not None:
        return check_event(fast, settings, now=now)
    try:
        payload = json.loads(text)
    except RecursionError:
        return InvalidEvent("too_deep", "JSON nesting exhausted the parser")
    except ValueError as exc:
        return InvalidEvent("malformed_json", str(exc)[:300])
    if not isinstance(payload, dict):
        return InvalidEvent(
            "schema_violation", f"top level is {type(payload).__name__}, not object"
        )
    depth, bad_string = _scan(payload)
    if depth > settings.max_json_depth:
        return InvalidEvent("too_deep", f"nesting depth {depth} > {settings.max_json_depth}")
    if bad_string == "nul_character":
        return InvalidEvent(bad_string, "a string holds U+0000 (a \\u0000 escape)")
    if bad_string == "lone_surrogate":
        return InvalidEvent(
            bad_string, "a string holds an unpaired surrogate (a \\ud800-style escape)"
        )
    major = _major_version(payload)
    if major is not None and major != SUPPORTED_MAJOR_VERSION:
        return InvalidEvent(
            "unsupported_schema_version",
            f"schema_version {payload.get('schema_version')!r}; this consumer reads "
            f"{SUPPORTED_MAJOR_VERSION}.x",
        )
    # The topic says what an event is; on a mixed stream (the HTTP collector) its fields do.
    payload.setdefault(
        "event_type", expected_type or ("feedback" if "kind" in payload else "interaction")
    )
    if expected_type is not None and payload["event_type"] != expected_type:
        return InvalidEvent(
            "wrong_topic", f"event_type {payload['event_type']!r} on the {expected_type} topic"
        )
    try:
        event = _EVENT_ADAPTER.validate_python(payload, context=limits_context(settings))
    except ValidationError as exc:
        return InvalidEvent("schema_violation", _summarize(exc))
    return check_event(event, settings, now=now)


def _parse_fast(
    raw: bytes, settings: IngestSettings, expected_type: str | None
) -> InteractionEvent | FeedbackEvent | None:
    """The event straight from the bytes (pydantic's JSON parser, no dict in between) when it
    is certainly valid, else None: then the full checks below find the reason. Taken only when
    none of those checks can fail: no escape that could be U+0000 or a surrogate, fewer opening
    brackets than the depth limit, the event type known from the topic. A validation error here
    means only "not certainly valid"."""
    if expected_type is None or _RISKY_ESCAPE.search(raw) is not None:
        return None
    if raw.count(b"{") + raw.count(b"[") > settings.max_json_depth:
        return None
    try:
        return _TYPED_ADAPTERS[expected_type].validate_json(raw, context=limits_context(settings))
    except (ValidationError, KeyError):
        return None


def check_event(
    event: InteractionEvent | FeedbackEvent,
    settings: IngestSettings,
    *,
    now: datetime | None = None,
) -> InteractionEvent | FeedbackEvent | InvalidEvent:
    """The deployment's rules on a well-formed event: registered app, plausible timestamp."""
    if settings.registered_app_ids and event.app_id not in settings.registered_app_ids:
        return InvalidEvent("unknown_app", f"app_id {event.app_id!r} is not in REGISTERED_APP_IDS")
    now = now or datetime.now(UTC)
    ahead = (event.occurred_at - now).total_seconds()
    if ahead > settings.max_event_future_s:
        return InvalidEvent(
            "timestamp_future",
            f"occurred_at {event.occurred_at.isoformat()} is {ahead:.0f} s ahead of this host's"
            f" clock (MAX_EVENT_FUTURE_S={settings.max_event_future_s:g})",
        )
    if -ahead > settings.max_event_age_s:
        return InvalidEvent(
            "timestamp_past",
            f"occurred_at {event.occurred_at.isoformat()} is {-ahead:.0f} s old"
            f" (MAX_EVENT_AGE_S={settings.max_event_age_s:g})",
        )
    return event


def _summarize(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        # Each part alone: a metadata key is user input, and glued to "metadata." an address
        # would no longer look like one to the redactor.
        where = ".".join(redact_text(str(p)) for p in error["loc"]) or "(event)"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)[:1000]
