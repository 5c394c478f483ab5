"""Property tests (hypothesis) over what ingest does to events: validation never raises and round
trips valid events; redaction of whole events and of raw dead-letter bytes leaves no planted PII,
keeps events valid, is idempotent and keeps distinct ids distinct."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refinery.ingest.validate import REASONS, InvalidEvent, parse_event
from refinery.redact.events import pseudonymize, redact_bytes, redact_event
from refinery.settings import Settings
from schemas.events import FeedbackEvent, FeedbackKind, InteractionEvent
from tests.canary import KINDS, generate_value

SETTINGS = Settings(_env_file=None)
NOW = datetime.now(UTC).replace(microsecond=0)

# Prose that cannot glue onto a planted value (no digits, no address characters).
PROSE = st.text(alphabet=st.sampled_from("abcdefghij klmnop?!,"), max_size=30)
ANY_TEXT = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=60
)
IDS = st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True)


@st.composite
def pii(draw) -> str:  # type: ignore[no-untyped-def]
    return generate_value(draw(st.sampled_from(KINDS)), random.Random(draw(st.integers(0, 2**32))))


@st.composite
def with_pii(draw) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    value = draw(pii())
    return f"{draw(PROSE)} {value} {draw(PROSE)}", value


@st.composite
def interactions(draw) -> tuple[InteractionEvent, list[str]]:  # type: ignore[no-untyped-def]
    (query, q), (response, r), (meta_value, m), (meta_key, k) = (draw(with_pii()) for _ in range(4))
    planted = [q, r, m, k]
    session_id = draw(
        st.one_of(IDS, pii().map(lambda v: f"user {v}").filter(lambda v: len(v) <= 128))
    )
    # An identifier is at most 128 characters (schemas): a long planted value (a JWT) cannot be one.
    interaction_id = draw(st.one_of(IDS, pii().filter(lambda v: len(v) <= 128)))
    planted += [i for i in (session_id, interaction_id) if _holds_pii(i)]
    event = InteractionEvent(
        event_id=draw(IDS),
        app_id="shop",
        session_id=session_id,
        interaction_id=interaction_id,
        turn_index=draw(st.none() | st.integers(0, 50)),
        occurred_at=NOW - timedelta(seconds=draw(st.integers(0, 86400))),
        query=query,
        response=response,
        metadata={meta_key.strip(): meta_value, "plain": draw(st.integers())},
        retrieved_sources=[{"source_id": "kb", "title": draw(with_pii())[0]}],
    )
    return event, planted


def _holds_pii(identifier: str) -> bool:
    from refinery.redact import Redactor

    return Redactor().redact(identifier) != identifier


@st.composite
def feedback_events(draw) -> FeedbackEvent:  # type: ignore[no-untyped-def]
    kind = draw(st.sampled_from(list(FeedbackKind)))
    scale = draw(st.sampled_from([5, 10, 100]))
    return FeedbackEvent(
        event_id=draw(IDS),
        app_id=draw(st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,20}", fullmatch=True)),
        interaction_id=draw(IDS),
        session_id=draw(st.none() | IDS),
        occurred_at=NOW - timedelta(seconds=draw(st.integers(0, 86400))),
        kind=kind,
        value=draw(st.integers(0, scale)) if kind is FeedbackKind.RATING else None,
        scale_max=scale,
        text=draw(ANY_TEXT.filter(str.strip))
        if kind.value in {"comment", "correction", "edit"}
        else None,
    )


@given(interactions())
@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_a_redacted_interaction_holds_no_planted_pii_and_is_still_valid(drawn):
    event, planted = drawn
    redacted = redact_event(event)
    dumped = redacted.model_dump_json()
    for value in planted:
        assert value not in dumped
    for before, after in (
        (event.session_id, redacted.session_id),
        (event.interaction_id, redacted.interaction_id),
    ):
        assert after == before or (after.startswith("pii-") and _holds_pii(before))
    # Still an event ingest accepts, and redacting twice changes nothing.
    again = parse_event(dumped.encode(), SETTINGS)
    assert not isinstance(again, InvalidEvent), again
    assert redact_event(redacted) == redacted


@given(st.lists(st.one_of(IDS, pii()), min_size=2, max_size=6, unique=True))
def test_pseudonyms_keep_distinct_ids_distinct(ids):
    assert len({pseudonymize(i) for i in ids}) == len(ids)
    assert all(pseudonymize(i) == i or i not in pseudonymize(i) for i in ids)


@given(feedback_events())
def test_any_valid_feedback_round_trips_through_validation(event):
    parsed = parse_event(event.model_dump_json().encode(), SETTINGS, expected_type="feedback")
    assert parsed == event


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(ANY_TEXT, children, max_size=4)
    ),
    max_leaves=20,
)
EVENTISH = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.one_of(IDS, JSON),
        "app_id": st.one_of(st.just("shop"), JSON),
        "session_id": IDS,
        "interaction_id": IDS,
        "occurred_at": st.one_of(st.just(NOW.isoformat()), JSON),
        "query": ANY_TEXT,
        "response": ANY_TEXT,
        "kind": st.sampled_from([k.value for k in FeedbackKind]),
        "value": JSON,
        "schema_version": st.sampled_from(["1.0", "1.9", "2.0", "x", ""]),
        "metadata": JSON,
        "event_type": st.sampled_from(["interaction", "feedback", "other"]),
    },
)


@given(EVENTISH)
@settings(deadline=None)
def test_validation_never_raises_and_names_a_known_reason(payload):
    result = parse_event(json.dumps(payload).encode(), SETTINGS)
    if isinstance(result, InvalidEvent):
        assert result.reason in REASONS and result.detail
    else:
        assert result.app_id == "shop"


@given(st.lists(with_pii(), min_size=1, max_size=4), st.booleans(), st.booleans())
def test_dead_letter_bytes_hold_no_planted_pii(pieces, escape, break_json):
    record = {"query": " ".join(text for text, _ in pieces), "metadata": {pieces[0][1]: 1}}
    raw = json.dumps(record, ensure_ascii=False)
    if escape:  # PII written as JSON escapes is PII all the same
        raw = raw.replace("@", "\\u0040").replace(".", "\\u002e")
    if break_json:
        raw = raw[:-1]
    out = redact_bytes(raw.encode()).decode("utf-8", "surrogateescape")
    for _, value in pieces:
        assert value not in out
    if not break_json:
        assert json.loads(out)["query"].count("<") >= len(pieces)
