"""The contract: JSON Schema files match the models; events validate as documented."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas import FeedbackEvent, InteractionEvent
from schemas.export import EXPORTS, JSON_DIR, render


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_json_schema_files_match_models(name):
    path = JSON_DIR / name
    assert path.exists(), f"{path} missing: run `make schemas`"
    assert path.read_text(encoding="utf-8") == render(EXPORTS[name]), (
        f"{name} is stale: run `make schemas`"
    )


def interaction(**overrides):
    base = {
        "event_id": "e1",
        "app_id": "shop",
        "session_id": "s1",
        "interaction_id": "i1",
        "occurred_at": "2026-11-27T10:00:00Z",
        "query": "where is my order?",
        "response": "It shipped.",
    }
    return {**base, **overrides}


def test_minimal_interaction_defaults():
    event = InteractionEvent.model_validate(interaction())
    assert event.schema_version == "1.0"
    assert event.retrieved_sources == []
    assert event.occurred_at == datetime(2026, 11, 27, 10, tzinfo=UTC)


def test_unknown_fields_of_a_minor_version_are_ignored():
    event = InteractionEvent.model_validate(interaction(schema_version="1.7", new_field=1))
    assert event.schema_version == "1.7"


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"schema_version": "2.0"}, "schema_version"),
        ({"app_id": "Bad App!"}, "app_id"),
        ({"occurred_at": "2026-11-27T10:00:00"}, "occurred_at"),  # naive timestamp
        ({"query": ""}, "query"),
        ({"latency_ms": -1}, "latency_ms"),
    ],
)
def test_interaction_rejections_name_the_field(override, field):
    with pytest.raises(ValidationError) as info:
        InteractionEvent.model_validate(interaction(**override))
    assert field in str(info.value)


def test_limits_come_from_the_validation_context():
    payload = interaction(query="x" * 50)
    InteractionEvent.model_validate(payload)
    with pytest.raises(ValidationError, match="more than the limit 10"):
        InteractionEvent.model_validate(payload, context={"max_query_chars": 10})


def feedback(**overrides):
    base = {
        "event_id": "f1",
        "app_id": "shop",
        "interaction_id": "i1",
        "occurred_at": "2026-11-27T10:00:05+01:00",
        "kind": "thumbs_down",
    }
    return {**base, **overrides}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"kind": "rating"}, "needs a numeric value"),
        ({"kind": "rating", "value": 9}, "outside 0..5"),
        ({"kind": "correction"}, "needs a non-empty text"),
        ({"kind": "comment", "text": "   "}, "needs a non-empty text"),
        ({"kind": "love_it"}, "kind"),
    ],
)
def test_feedback_value_must_fit_its_kind(override, message):
    with pytest.raises(ValidationError, match=message):
        FeedbackEvent.model_validate(feedback(**override))


@given(
    query=st.text(min_size=1, max_size=200),
    app=st.from_regex(r"^[a-z0-9][a-z0-9_.-]{0,20}$", fullmatch=True),
)
def test_any_text_round_trips_through_json(query, app):
    event = InteractionEvent.model_validate(interaction(query=query, app_id=app))
    again = InteractionEvent.model_validate_json(event.model_dump_json())
    assert again == event
    assert json.loads(event.model_dump_json())["query"] == query
