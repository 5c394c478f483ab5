"""Failure signals end to end on the real broker and the real embedding model: each explicit and
implicit signal and their combinations, rephrase and abandon detected from sessions with no help
from the app, out-of-order and late arrival, duplicates."""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from refinery.embed import embedding_model_name
from refinery.embed.embedder import get_embedder
from refinery.ingest.storage import query_hash
from refinery.signals.sessions import analyze_sessions, sweep_abandoned
from refinery.store.db import migrate, session_factory
from refinery.store.models import Embedding, Feedback, Interaction, SessionState
from tests.integration.helpers import start_role, wait_for
from tests.integration.test_signals_support import (
    feedback,
    ingest,
    interaction,
    private_celery,
    produce,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def celery_broker(redis_url):  # type: ignore[no-untyped-def]
    yield from private_celery(redis_url)


def verdicts(db_url: str) -> dict[str, tuple[bool, float, list[str]]]:
    with session_factory(db_url)() as session:
        return {
            row.interaction_id: (row.failing, row.failure_score, list(row.failure_reasons))
            for row in session.scalars(select(Interaction))
        }


def sweep(settings, *, after_s: float = 1.0):  # type: ignore[no-untyped-def]
    """The abandon sweep, as beat would run it once ABANDON_QUIET_S has passed."""
    now = datetime.now(UTC) + timedelta(seconds=settings.abandon_quiet_s + after_s)
    with session_factory(settings.database_url).begin() as session:
        return sweep_abandoned(session, settings, now=now)


ALICE = [  # asks the same thing three times, 40 s and 35 s apart, then leaves
    ("a1", "How do I reset my password?", -3600),
    ("a2", "what are the steps to reset my password?", -3560),
    ("a3", "I forgot my password, how do I reset it?", -3525),
]
BOB = [  # two different questions, then leaves
    ("b1", "Which payment methods do you accept?", -3600),
    ("b2", "Does the laptop come with a charger?", -3540),
]


def test_a_user_who_rephrases_twice_and_leaves(kafka_bootstrap, topics, db_url, make_settings):
    settings = make_settings(kafka_bootstrap_servers=kafka_bootstrap, database_url=db_url, **topics)
    migrate(db_url)
    events = [interaction(i, q, session="alice", turn=n, t=t) for n, (i, q, t) in enumerate(ALICE)]
    # Bob's app sends no turn_index: his turns are ordered by time; they arrive newest first.
    events += [interaction(i, q, session="bob", t=t) for i, q, t in reversed(BOB)]
    produce(kafka_bootstrap, settings.topic_interactions, events)

    run = ingest(settings)
    assert run.stats.stored == 5 and run.stats.dead_lettered == {}
    assert sorted(set(run.sessions)) == [("shop", "alice"), ("shop", "bob")]
    result = sweep(settings)
    assert result.sessions == 2 and result.abandoned == 2

    v = verdicts(db_url)
    assert v["a1"] == (True, 1.0, ["rephrased within 40 s"])
    assert v["a2"] == (True, 1.0, ["rephrased within 35 s"])
    assert v["a3"] == (True, 1.0, ["abandoned after rephrasing"])
    assert v["b1"] == (False, 0.0, [])
    assert v["b2"] == (
        False,
        settings.signal_weight_abandon,
        [],
    )  # a quiet ending alone is no failure
    with session_factory(db_url)() as session:
        rows = session.scalars(select(Feedback).where(Feedback.source == "system")).all()
        detail = {(f.interaction_id, f.kind): f.detail for f in rows}
        assert detail[("a1", "rephrase")]["next"] == "a2"
        assert detail[("a1", "rephrase")]["similarity"] >= settings.rephrase_similarity_threshold
        # The failing queries are embedded already (rephrase detection embedded the session).
        model = embedding_model_name(settings)
        hashes = {query_hash(q) for _, q, _ in ALICE}
        assert (
            session.scalar(
                select(func.count())
                .select_from(Embedding)
                .where(Embedding.model == model, Embedding.text_hash.in_(hashes))
            )
            == 3
        )
    assert run.enqueued == []
    # Idempotent: analysing and sweeping again changes nothing.
    assert sweep(settings).sessions == 0
    ingest(settings)
    assert verdicts(db_url) == v


def test_out_of_order_turns_and_a_session_that_goes_on_after_it_was_closed(
    kafka_bootstrap, topics, db_url, make_settings
):
    settings = make_settings(kafka_bootstrap_servers=kafka_bootstrap, database_url=db_url, **topics)
    migrate(db_url)
    first = interaction("c1", "How do I cancel my subscription?", session="carol", turn=0, t=-3600)
    middle = interaction(
        "c2", "What's the weather like in Paris?", session="carol", turn=1, t=-3560
    )
    third = interaction("c3", "How can I cancel my subscription?", session="carol", turn=2, t=-3500)
    fourth = interaction(
        "c4", "how do I stop my subscription from renewing", session="carol", turn=3, t=-3480
    )

    # Turns 3 and 1 arrive first: turn 3 is the next query after turn 1, and a rephrase of it.
    produce(kafka_bootstrap, settings.topic_interactions, [third, first])
    ingest(settings)
    assert verdicts(db_url)["c1"] == (True, 1.0, ["rephrased within 100 s"])

    # Turn 2 arrives late: it, not turn 3, followed turn 1, and it asked something else.
    produce(kafka_bootstrap, settings.topic_interactions, [middle])
    ingest(settings)
    v = verdicts(db_url)
    assert v["c1"] == (False, 0.0, []) and v["c2"] == (False, 0.0, [])

    # The session goes quiet: closed, its last turn (c3) abandoned, weakly.
    assert sweep(settings).abandoned == 1
    assert verdicts(db_url)["c3"] == (False, settings.signal_weight_abandon, [])
    with session_factory(db_url)() as session:
        assert session.scalar(select(SessionState.closed_at)) is not None

    # Then a fourth turn arrives, asking turn 3 again: the session had not ended at turn 3.
    produce(kafka_bootstrap, settings.topic_interactions, [fourth])
    ingest(settings)
    v = verdicts(db_url)
    assert v["c3"] == (True, 1.0, ["rephrased within 20 s"])
    with session_factory(db_url)() as session:
        assert session.scalar(select(SessionState.closed_at)) is None
        kinds = session.execute(select(Feedback.interaction_id, Feedback.kind)).all()
        assert sorted(kinds) == [("c3", "rephrase")]
    assert sweep(settings).abandoned == 1
    assert verdicts(db_url)["c4"] == (True, 1.0, ["abandoned after rephrasing"])


def test_a_positive_signal_on_the_last_turn_means_no_abandon(
    kafka_bootstrap, topics, sqlite_url, make_settings
):
    settings = make_settings(
        kafka_bootstrap_servers=kafka_bootstrap, database_url=sqlite_url, **topics
    )
    migrate(sqlite_url)
    produce(
        kafka_bootstrap,
        settings.topic_interactions,
        [interaction(i, q, session="alice", turn=n, t=t) for n, (i, q, t) in enumerate(ALICE)],
    )
    produce(kafka_bootstrap, settings.topic_feedback, [feedback("a3", "copy", t=-3500)])
    ingest(settings)
    assert sweep(settings).abandoned == 0
    v = verdicts(sqlite_url)
    assert v["a3"] == (False, 0.0, []) and v["a2"][0] and v["a1"][0]
    # ... and a thumbs-up that comes back later clears the rephrase of the first turn.
    produce(kafka_bootstrap, settings.topic_feedback, [feedback("a1", "thumbs_up", t=-3000)])
    ingest(settings)
    assert verdicts(sqlite_url)["a1"] == (False, 0.0, [])


# interaction id -> (feedback events, expected (failing, score, reasons))
SCENARIOS: dict[str, tuple[list[dict], tuple[bool, float, list[str]]]] = {
    "down": ([feedback("down", "thumbs_down")], (True, 1.0, ["thumbs_down"])),
    "up": ([feedback("up", "thumbs_up")], (False, 0.0, [])),
    "rating-low": ([feedback("rating-low", "rating", value=1)], (True, 1.0, ["rating 1/5"])),
    "rating-ten": ([feedback("rating-ten", "rating", value=7, scale_max=10)], (False, 0.0, [])),
    "comment": ([feedback("comment", "comment", text="ok I guess")], (False, 0.0, [])),
    "correction": (
        [feedback("correction", "correction", text="It ships in 2 days.")],
        (True, 1.0, ["correction"]),
    ),
    "regenerate": ([feedback("regenerate", "regenerate")], (True, 1.0, ["regenerate"])),
    "edit": ([feedback("edit", "edit", text="edited answer")], (True, 1.0, ["edit"])),
    "escalate": ([feedback("escalate", "escalate")], (True, 1.0, ["escalate"])),
    "copy": ([feedback("copy", "copy")], (False, 0.0, [])),
    "app-rephrase": ([feedback("app-rephrase", "rephrase")], (True, 1.0, ["rephrase"])),
    "app-abandon": ([feedback("app-abandon", "abandon")], (False, 0.5, [])),
    "regenerate-copy": (
        [
            feedback("regenerate-copy", "regenerate", t=-3500),
            feedback("regenerate-copy", "copy", t=-3400),
        ],
        (False, 0.5, []),
    ),
    "copy-regenerate": (
        [
            feedback("copy-regenerate", "copy", t=-3500),
            feedback("copy-regenerate", "regenerate", t=-3400),
        ],
        (True, 1.0, ["regenerate"]),
    ),
    "escalate-down": (
        [
            feedback("escalate-down", "escalate", t=-3500),
            feedback("escalate-down", "thumbs_down", t=-3400),
        ],
        (True, 2.0, ["escalate", "thumbs_down"]),
    ),
    "up-down": (
        [feedback("up-down", "thumbs_up", t=-3500), feedback("up-down", "thumbs_down", t=-3400)],
        (True, 1.0, ["thumbs_down"]),
    ),
    # Five hours after its interaction (the interactions below are seven hours old).
    "late": ([feedback("late", "thumbs_down", t=-2 * 3600)], (True, 1.0, ["thumbs_down"])),
    "duplicate": (
        [
            feedback("duplicate", "thumbs_down", n=1),
            feedback("duplicate", "thumbs_down", n=2),
            feedback("duplicate", "thumbs_down", n=1),
        ],
        (True, 1.0, ["thumbs_down"]),
    ),
}


def test_each_signal_and_combination_through_kafka(kafka_bootstrap, topics, db_url, make_settings):
    settings = make_settings(kafka_bootstrap_servers=kafka_bootstrap, database_url=db_url, **topics)
    migrate(db_url)
    # Feedback first: it waits in the store for its interaction (either may arrive first).
    produce(
        kafka_bootstrap, settings.topic_feedback, [f for fbs, _ in SCENARIOS.values() for f in fbs]
    )
    ingest(settings, analyze=False)
    assert verdicts(db_url) == {}
    produce(
        kafka_bootstrap,
        settings.topic_interactions,
        [interaction(iid, f"question {iid}", session=iid, t=-7 * 3600) for iid in SCENARIOS],
    )
    run = ingest(settings, analyze=False)
    v = verdicts(db_url)
    for iid, (_, expected) in SCENARIOS.items():
        assert v[iid] == expected, iid
    assert sorted(run.enqueued) == sorted(i for i, row in _ids(db_url).items() if v[row][0]), (
        "every failing interaction is enqueued for embedding"
    )
    with session_factory(db_url)() as session:  # the correction is kept as the fine-tuning target
        assert (
            session.scalar(select(Feedback.text).where(Feedback.kind == "correction"))
            == "It ships in 2 days."
        )

    # Later feedback: a thumbs-up clears "down"; feedback past FEEDBACK_WINDOW_S does not count.
    produce(
        kafka_bootstrap,
        settings.topic_interactions,
        [interaction("too-late", "q", session="tl", t=-9 * 86400)],
    )
    produce(
        kafka_bootstrap,
        settings.topic_feedback,
        [
            feedback("down", "thumbs_up", t=-60),
            feedback("too-late", "thumbs_down", t=-9 * 86400 + settings.feedback_window_s + 60),
        ],
    )
    ingest(settings, analyze=False)
    v = verdicts(db_url)
    assert v["down"] == (False, 0.0, [])
    assert v["too-late"] == (False, 0.0, [])


def _ids(db_url: str) -> dict[int, str]:
    with session_factory(db_url)() as session:
        return {
            i: iid for i, iid in session.execute(select(Interaction.id, Interaction.interaction_id))
        }


def test_refinery_ingest_alone_finds_rephrases_and_the_abandon(
    kafka_bootstrap, topics, tmp_path, make_settings
):
    """The whole role, as deployed without Redis: `refinery ingest` detects the rephrases and,
    once the session is quiet, the abandon; the app sent interactions only."""
    db_url = f"sqlite:///{tmp_path}/refinery.db"
    settings = make_settings(kafka_bootstrap_servers=kafka_bootstrap, database_url=db_url, **topics)
    migrate(db_url)
    produce(
        kafka_bootstrap,
        settings.topic_interactions,
        [interaction(i, q, session="alice", turn=n, t=t) for n, (i, q, t) in enumerate(ALICE)],
    )
    log = tmp_path / "ingest.log"
    process = start_role(
        settings, "ingest", log_path=log, ABANDON_QUIET_S="3", SIGNALS_SWEEP_INTERVAL_S="0.5"
    )
    try:
        wait_for(
            lambda: verdicts(db_url).get("a3", (False,))[0],
            timeout_s=240,
            what="the last turn to be marked abandoned",
        )
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    v = verdicts(db_url)
    assert [v[i][2] for i, _, _ in ALICE] == [
        ["rephrased within 40 s"],
        ["rephrased within 35 s"],
        ["abandoned after rephrasing"],
    ], log.read_text()[-3000:]


def test_rephrase_and_abandon_on_a_celery_worker_over_redis(
    kafka_bootstrap, topics, postgres_url, make_settings, activate, celery_broker, tmp_path
):
    """The deployed wiring: ingest hands sessions to Celery (Redis), a `refinery worker` on the
    signals queue detects the rephrases, and the beat task finds the abandon."""
    from refinery.ingest.consumer import IngestConsumer
    from refinery.kafka.clients import make_producer
    from refinery.runtime import celery_enqueue
    from refinery.signals.enqueue import session_enqueue
    from workers.celery_app import app

    settings = activate(make_settings(
        kafka_bootstrap_servers=kafka_bootstrap, database_url=postgres_url,
        redis_url=celery_broker, **topics,
    ))  # fmt: skip
    migrate(postgres_url)
    produce(
        kafka_bootstrap,
        settings.topic_interactions,
        [interaction(i, q, session="alice", turn=n, t=t) for n, (i, q, t) in enumerate(ALICE)],
    )
    log = tmp_path / "worker.log"
    worker = start_role(
        settings,
        "worker",
        "--queues",
        "embed,propose,signals",
        "--pool",
        "solo",
        log_path=log,
        ABANDON_QUIET_S="2",
    )
    try:
        producer = make_producer(settings)
        consumer = IngestConsumer.on_event_topics(
            settings,
            producer=producer,
            sessions=session_factory(postgres_url),
            enqueue=celery_enqueue(settings),
            enqueue_sessions=session_enqueue(settings),
        )
        try:
            stats = consumer.run(until_caught_up=True)
        finally:
            consumer.close()
            producer.close()
        assert stats.sessions_enqueued == 1
        ingested_at = time.monotonic()
        wait_for(lambda: verdicts(postgres_url)["a2"][0], timeout_s=240, what="rephrases detected")
        assert verdicts(postgres_url)["a1"] == (True, 1.0, ["rephrased within 40 s"])
        time.sleep(max(0.0, 2.5 - (time.monotonic() - ingested_at)))  # ABANDON_QUIET_S=2 passes
        app.send_task("refinery.sweep_abandoned_sessions").get(timeout=120)
        assert verdicts(postgres_url)["a3"] == (True, 1.0, ["abandoned after rephrasing"]), (
            log.read_text()[-3000:]
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()


def test_a_session_whose_analysis_is_pending_is_analysed_before_it_is_closed(
    kafka_bootstrap, topics, sqlite_url, make_settings
):
    settings = make_settings(
        kafka_bootstrap_servers=kafka_bootstrap, database_url=sqlite_url, **topics
    )
    migrate(sqlite_url)
    produce(
        kafka_bootstrap,
        settings.topic_interactions,
        [interaction(i, q, session="alice", turn=n, t=t) for n, (i, q, t) in enumerate(ALICE)],
    )
    ingest(settings, analyze=False)  # the analysis task was lost
    pending: list = []
    now = datetime.now(UTC) + timedelta(seconds=settings.abandon_quiet_s + 1)
    with session_factory(sqlite_url).begin() as session:
        result = sweep_abandoned(session, settings, now=now, on_pending=pending.extend)
    assert pending == [("shop", "alice")] and result.sessions == result.abandoned == 0
    with session_factory(sqlite_url).begin() as session:  # the re-enqueued task runs
        analyze_sessions(session, pending, settings, get_embedder(settings))
    with session_factory(sqlite_url).begin() as session:
        assert sweep_abandoned(session, settings, now=now, on_pending=pending.extend).abandoned == 1
    assert verdicts(sqlite_url)["a3"] == (True, 1.0, ["abandoned after rephrasing"])
