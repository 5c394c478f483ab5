"""Bad input through the real Kafka-protocol broker: every case is dead-lettered with its reason and
source topic/partition/offset, counted in the metric, and the consumer goes on to store the valid
event sent after them. Duplicates are dropped and counted, not dead-lettered. Too many dead
letters stop the consumer instead. Orphan feedback is dead-lettered by the sweep; `refinery dlq`
lists and replays."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from refinery.cli import build_parser
from refinery.ingest.deadletter import DeadLetterCapExceeded, DeadLetterQueue
from refinery.kafka.clients import make_producer
from refinery.ops.metrics import EVENTS_DEAD_LETTERED, EVENTS_DUPLICATE
from refinery.signals.orphans import sweep_orphans
from refinery.store.db import migrate, session_factory
from refinery.store.models import Feedback, Interaction
from tests.integration.test_signals_support import (
    NOW,
    at,
    dead_letters,
    feedback,
    ingest,
    interaction,
    produce,
)

pytestmark = pytest.mark.integration


def nested(depth: int) -> dict:
    value: object = "x"
    for _ in range(depth):
        value = {"k": value}
    return value  # type: ignore[return-value]


def raw(event: dict) -> bytes:
    return json.dumps(event).encode()


# (case, reason, record value); each on the interactions topic.
BAD = [
    ("malformed json", "malformed_json", b'{"event_id": "x", '),
    ("schema violation", "schema_violation", raw({"event_id": "x", "app_id": "shop"})),
    (
        "unknown major version",
        "unsupported_schema_version",
        raw(interaction("v9", "q", schema_version="9.0")),
    ),
    ("over-size", "oversize", raw(interaction("big", "q", response="r" * 300_000))),
    ("deeply nested", "too_deep", raw(interaction("deep", "q", metadata=nested(40)))),
    ("parser-exhausting nesting", "too_deep", b"[" * 50_000 + b"]" * 50_000),
    ("invalid UTF-8", "invalid_utf8", raw(interaction("utf", "q"))[:-20] + b"\xff\xfe" + b'"}'),
    (
        "lone surrogate",
        "lone_surrogate",
        raw(interaction("sur", "q")).replace(b'"q"', b'"a \\ud800 b"'),
    ),
    ("NUL escape", "nul_character", raw(interaction("nul", "q")).replace(b'"q"', b'"a \\u0000 b"')),
    ("NUL byte", "nul_character", raw(interaction("nulb", "q")).replace(b'"q"', b'"a \x00 b"')),
    ("1,000,000-character query", "oversize", raw(interaction("huge", "q" * 1_000_000))),
    (
        "far future",
        "timestamp_future",
        raw({**interaction("fut", "q"), "occurred_at": at(30 * 86400)}),
    ),
    (
        "far past",
        "timestamp_past",
        raw({**interaction("old", "q"), "occurred_at": "1970-01-01T00:00:00Z"}),
    ),
    ("unknown app", "unknown_app", raw(interaction("app", "q", app="stranger"))),
    # Python's json writes NaN and Infinity; PostgreSQL's json refuses them, which once failed
    # the whole batch at the insert, on every redelivery.
    (
        "NaN source score",
        "schema_violation",
        raw(
            interaction("nan", "q", retrieved_sources=[{"source_id": "kb", "score": float("nan")}])
        ),
    ),
    (
        "infinite metadata value",
        "schema_violation",
        raw(interaction("inf", "q", metadata={"cost": float("inf")})),
    ),
    (
        "feedback on the interactions topic",
        "wrong_topic",
        raw({**feedback("i", "thumbs_up"), "event_type": "feedback"}),
    ),
    ("tombstone", "empty", None),
]


def test_every_bad_input_is_dead_lettered_with_reason_and_source(
    kafka_bootstrap, topics, db_url, make_settings
):
    settings = make_settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        database_url=db_url,
        registered_app_ids=["shop"],
        **topics,
    )
    migrate(db_url)
    before = {
        reason: EVENTS_DEAD_LETTERED.labels(reason=reason)._value.get() for _, reason, _ in BAD
    }
    duplicates_before = EVENTS_DUPLICATE._value.get()
    valid = interaction("ok", "where is my order?")
    sent = produce(
        kafka_bootstrap,
        settings.topic_interactions,
        [value for _, _, value in BAD] + [valid, valid],
    )  # the valid one twice

    run = ingest(settings, analyze=False)

    letters = dead_letters(settings, expect=len(BAD))
    assert len(letters) == len(BAD)
    by_source = {
        (
            d.headers["source_topic"],
            int(d.headers["source_partition"]),
            int(d.headers["source_offset"]),
        ): d
        for d in letters
    }
    for (case, reason, _), where in zip(BAD, sent.where, strict=False):
        letter = by_source[where]
        assert letter.reason == reason, case
        assert letter.headers["detail"], case
        assert letter.headers["source"] == "kafka"
    assert run.stats.dead_lettered == {r: sum(1 for _, x, _ in BAD if x == r) for _, r, _ in BAD}
    for _, reason, _ in BAD:
        assert EVENTS_DEAD_LETTERED.labels(reason=reason)._value.get() > before[reason]
    # The valid event after them is stored, once; its duplicate is counted, not dead-lettered.
    with session_factory(db_url)() as session:
        assert session.scalars(select(Interaction.interaction_id)).all() == ["ok"]
    assert run.stats.stored == 1 and run.stats.duplicates == 1
    assert EVENTS_DUPLICATE._value.get() == duplicates_before + 1


def test_dead_letter_detail_and_value_are_redacted(
    kafka_bootstrap, topics, sqlite_url, make_settings
):
    settings = make_settings(
        kafka_bootstrap_servers=kafka_bootstrap, database_url=sqlite_url, **topics
    )
    migrate(sqlite_url)
    email = "jane.doe.canary@example.org"
    # A metadata key that is an e-mail and a value that is not allowed: pydantic names the key in
    # its error location, which the detail header carries.
    bad_key = interaction("k", f"mail me at {email}", metadata={email: {"nested": 1}})
    escaped = raw(interaction("esc", "q", schema_version="7.0")).replace(
        b'"q"', b'"write to jane.doe.canary\\u0040example.org"'
    )
    produce(
        kafka_bootstrap,
        settings.topic_interactions,
        [raw(bad_key), escaped, b'{"query": "call +1 415 555 0199 or ' + email.encode() + b'"'],
        key=email.encode(),
    )
    ingest(settings, analyze=False)
    letters = dead_letters(settings, expect=3)
    assert sorted(d.reason for d in letters) == [
        "malformed_json",
        "schema_violation",
        "unsupported_schema_version",
    ]
    for letter in letters:
        blob = (
            json.dumps(letter.headers)
            + (letter.value or b"").decode("utf-8", "replace")
            + (letter.key or b"").decode()
        )
        assert email not in blob and "jane.doe.canary" not in blob and "555 0199" not in blob
    schema = next(d for d in letters if d.reason == "schema_violation")
    assert "<EMAIL>" in schema.headers["detail"] and "valid string" in schema.headers["detail"]


@pytest.mark.parametrize("mode", ["consecutive", "ratio"])
def test_the_dead_letter_cap_stops_the_consumer_without_committing(
    kafka_bootstrap, topics, sqlite_url, make_settings, mode
):
    if mode == "consecutive":
        limits = {"dead_letter_max_consecutive": 5}
        values = [b"nope"] * 8
    else:  # one good in three: never 5 in a row, but 2/3 of the window is bad
        limits = {
            "dead_letter_max_consecutive": 0,
            "dead_letter_max_ratio": 0.5,
            "dead_letter_ratio_window": 9,
        }
        values = [raw(interaction(f"g{i}", "q")) if i % 3 == 0 else b"nope" for i in range(12)]
    settings = make_settings(
        kafka_bootstrap_servers=kafka_bootstrap, database_url=sqlite_url, **limits, **topics
    )
    migrate(sqlite_url)
    produce(kafka_bootstrap, settings.topic_interactions, values)
    with pytest.raises(DeadLetterCapExceeded) as info:
        ingest(settings, analyze=False)
    message = str(info.value)
    assert "malformed_json" in message and "restart" in message
    assert (
        "DEAD_LETTER_MAX_CONSECUTIVE" if mode == "consecutive" else "DEAD_LETTER_MAX_RATIO"
    ) in message
    # Nothing was committed: once the cause is fixed (here: the cap lifted), it is read again.
    relaxed = settings.model_copy(
        update={"dead_letter_max_consecutive": 0, "dead_letter_max_ratio": 1.0}
    )
    again = ingest(relaxed, analyze=False)
    assert again.stats.consumed == len(values)


def test_orphan_feedback_is_dead_lettered_after_the_join_window_and_replayed(
    kafka_bootstrap, topics, db_url, make_settings
):
    settings = make_settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        database_url=db_url,
        feedback_join_window_s=3600,
        **topics,
    )
    migrate(db_url)
    sent = produce(
        kafka_bootstrap,
        settings.topic_feedback,
        [feedback("never-seen", "thumbs_down"), feedback("late", "thumbs_down")],
    )
    ingest(settings, analyze=False)
    sessions = session_factory(db_url)
    producer = make_producer(settings)
    try:
        dlq = DeadLetterQueue(producer, settings.topic_dead_letter)
        with sessions.begin() as session:  # within the window: nothing happens
            assert sweep_orphans(session, dlq, settings, now=NOW + timedelta(seconds=1800)) == 0
        # "late"'s interaction arrives within the window: joined, not an orphan.
        produce(kafka_bootstrap, settings.topic_interactions, [interaction("late", "q")])
        ingest(settings, analyze=False)
        with sessions.begin() as session:
            assert sweep_orphans(session, dlq, settings, now=NOW + timedelta(seconds=7200)) == 1
    finally:
        producer.close()
    [letter] = dead_letters(settings, expect=1)
    assert letter.reason == "orphan_feedback"
    assert (
        letter.headers["source_topic"],
        int(letter.headers["source_partition"]),
        int(letter.headers["source_offset"]),
    ) == sent.where[0]
    assert json.loads(letter.value)["interaction_id"] == "never-seen"
    with sessions() as session:
        assert session.scalars(select(Feedback.interaction_id)).all() == ["late"]
        assert session.scalar(
            select(Interaction.failing).where(Interaction.interaction_id == "late")
        )

    # `refinery dlq list`, then `refinery dlq replay --reason orphan_feedback`: back on the feedback
    # topic, stored again, waiting for its interaction once more.
    args = build_parser().parse_args(["dlq", "list", "--json"])
    assert args.func(settings, args) == 0
    args = build_parser().parse_args(["dlq", "replay", "--reason", "orphan_feedback"])
    assert args.func(settings, args) == 0
    produce(kafka_bootstrap, settings.topic_interactions, [interaction("never-seen", "q")])
    ingest(settings, analyze=False)
    with sessions() as session:
        assert session.scalar(select(func.count(Feedback.id))) == 2
        assert session.scalar(
            select(Interaction.failing).where(Interaction.interaction_id == "never-seen")
        )


def test_replay_redrives_a_dead_letter_once_the_cause_is_fixed(
    kafka_bootstrap, topics, sqlite_url, make_settings, capsys
):
    settings = make_settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        database_url=sqlite_url,
        registered_app_ids=["shop"],
        **topics,
    )
    migrate(sqlite_url)
    produce(kafka_bootstrap, settings.topic_interactions, [interaction("n1", "q", app="newapp")])
    ingest(settings, analyze=False)
    [letter] = dead_letters(settings, expect=1)
    assert letter.reason == "unknown_app"

    args = build_parser().parse_args(["dlq", "list"])
    assert args.func(settings, args) == 0
    out = capsys.readouterr().out
    assert "unknown_app" in out and settings.topic_interactions in out

    args = build_parser().parse_args(["dlq", "replay"])
    assert args.func(settings, args) == 2  # replay wants a selection
    registered = settings.model_copy(update={"registered_app_ids": ["shop", "newapp"]})
    args = build_parser().parse_args(
        ["dlq", "replay", "--offset", f"{letter.partition}:{letter.offset}"]
    )
    assert args.func(registered, args) == 0
    assert "replayed 1 of 1" in capsys.readouterr().out
    ingest(registered, analyze=False)
    with session_factory(sqlite_url)() as session:
        assert session.scalars(select(Interaction.app_id)).all() == ["newapp"]
