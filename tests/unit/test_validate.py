"""Every way a record can be bad maps to one dead-letter reason; nothing raises."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from refinery.ingest.validate import InvalidEvent, parse_event
from refinery.settings import Settings
from schemas import FeedbackEvent, InteractionEvent

SETTINGS = Settings(_env_file=None, max_event_bytes=4096, max_query_chars=500, max_json_depth=8)

NOW = (datetime.now(UTC) - timedelta(hours=1)).isoformat()  # inside the event-time limits


def good(**overrides) -> dict:
    return {
        "event_id": "e1",
        "app_id": "shop",
        "session_id": "s1",
        "interaction_id": "i1",
        "occurred_at": NOW,
        "query": "hello",
        "response": "hi",
        **overrides,
    }


def test_valid_interaction_and_feedback():
    assert isinstance(parse_event(json.dumps(good()).encode(), SETTINGS), InteractionEvent)
    fb = {
        "event_id": "f",
        "app_id": "shop",
        "interaction_id": "i1",
        "occurred_at": NOW,
        "kind": "thumbs_up",
    }
    assert isinstance(
        parse_event(json.dumps(fb).encode(), SETTINGS, expected_type="feedback"), FeedbackEvent
    )


def nested(depth: int) -> dict:
    value: object = "x"
    for _ in range(depth):
        value = {"k": value}
    return good(metadata=value)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "empty"),
        (b"{not json", "malformed_json"),
        (b"[1, 2]", "schema_violation"),
        (json.dumps({"event_id": "x"}).encode(), "schema_violation"),
        (json.dumps(good(schema_version="2.0")).encode(), "unsupported_schema_version"),
        (json.dumps(good(query="q" * 600)).encode(), "schema_violation"),
        (json.dumps(good(response="r" * 5000)).encode(), "oversize"),
        (b'{"event_id": "\xff\xfe"}', "invalid_utf8"),
        (json.dumps(nested(20)).encode(), "too_deep"),
        (json.dumps(good(latency_ms=float("inf"))).encode(), "schema_violation"),
        (json.dumps(good(metadata={"x": float("nan")})).encode(), "schema_violation"),
        (b"[" * 100_000 + b"]" * 100_000, "oversize"),
    ],
)
def test_bad_records_get_a_reason(raw, reason):
    settings = SETTINGS if reason != "too_deep" else SETTINGS
    result = parse_event(raw, settings)
    assert isinstance(result, InvalidEvent)
    assert result.reason == reason
    assert result.detail


def test_deep_nesting_within_size_does_not_blow_the_stack():
    raw = b"[" * 3000 + b"]" * 3000
    result = parse_event(raw, Settings(_env_file=None, max_event_bytes=10_000))
    assert isinstance(result, InvalidEvent) and result.reason in {"too_deep", "schema_violation"}


def test_event_on_the_wrong_topic():
    raw = json.dumps(good(event_type="interaction")).encode()
    result = parse_event(raw, SETTINGS, expected_type="feedback")
    assert isinstance(result, InvalidEvent) and result.reason == "wrong_topic"


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(raw):
    result = parse_event(raw, SETTINGS)
    assert isinstance(result, InvalidEvent | InteractionEvent | FeedbackEvent)
