"""Metrics move where the work happens (embedding, proposals, review decisions, the outbox relay),
count only what became durable, and are all documented; the roles' readiness helpers are bounded.
Role processes end to end: tests/integration/test_ops_roles.py."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import Counter, Gauge, Histogram

from refinery.ops import metrics, roles
from refinery.ops.metrics import REGISTRY
from refinery.store.db import migrate, session_factory

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS_DOC = ROOT / "docs" / "operations.md"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def delta(read: Callable[[], float]) -> Callable[[], float]:
    """How much `read()` moved since this call (the registry is process-wide)."""
    start = read()
    return lambda: read() - start


@pytest.fixture
def sessions(tmp_path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path}/ops.db"
    migrate(url)
    return session_factory(url)


# --- the catalogue ------------------------------------------------------------------------------


def test_every_metric_is_documented_in_operations_md() -> None:
    doc = OPERATIONS_DOC.read_text()
    families = {
        m._name: m for m in vars(metrics).values() if isinstance(m, Counter | Gauge | Histogram)
    }
    assert families, "no metric found"
    for name, metric in families.items():
        shown = f"{name}_total" if isinstance(metric, Counter) else name
        assert f"`{shown}`" in doc, f"docs/operations.md does not list {shown}"
        for label in metric._labelnames:
            assert re.search(rf"`{re.escape(shown)}`[^\n]*\b{label}\b", doc), (shown, label)


def test_roles_spell_the_multiprocess_variable_like_metrics() -> None:
    assert roles.MULTIPROC_ENV == metrics.MULTIPROC_ENV


# --- counted where it happens -------------------------------------------------------------------


def test_embedding_counts_texts_cache_hits_and_batch_time(sessions) -> None:
    from refinery.embed.service import embed_interactions
    from tests.unit.test_cluster_service_support import TopicEmbedder, add_interactions

    embedder = TopicEmbedder()
    texts = delta(lambda: value("refinery_embedding_texts_total"))
    hits = delta(lambda: value("refinery_embedding_cache_hits_total"))
    batches = delta(lambda: value("refinery_embedding_batch_seconds_count"))
    with sessions() as session:
        ids = add_interactions(session, "shop", ["refund please", "where is my parcel", "reset"])
        embed_interactions(session, ids, embedder)
        assert (texts(), hits(), batches()) == (3, 0, 1)
        embed_interactions(session, ids, embedder)  # every vector cached now: no encoder call
        assert (texts(), hits(), batches()) == (3, 3, 1)


def test_proposals_are_counted_when_the_pass_commits_not_when_it_rolls_back(sessions) -> None:
    from refinery.cluster.service import recluster_app
    from refinery.propose.service import propose_for_app
    from tests.unit.test_cluster_service_support import (
        MODEL,
        NOW,
        TopicEmbedder,
        add_interactions,
        settings,
        topic_queries,
    )

    embedder = TopicEmbedder()
    pending = delta(lambda: value("refinery_proposals_total", kind="rag_source", status="pending"))
    with sessions() as session:
        add_interactions(session, "shop", topic_queries("refund", 12), embedder=embedder)
        add_interactions(session, "shop", topic_queries("shipping", 8), embedder=embedder)
        recluster_app(session, "shop", settings(), MODEL, now=NOW)
        session.commit()
        assert len(propose_for_app(session, "shop", settings(), MODEL).created) == 2
        session.rollback()  # the pass failed later: nothing was created
        assert pending() == 0
        assert len(propose_for_app(session, "shop", settings(), MODEL).created) == 2
        assert pending() == 0, "not before the commit"
        session.commit()
        assert pending() == 2
        session.commit()
        assert pending() == 2, "once"


def test_review_decisions_and_status_changes_counted_once_per_attempt(sessions) -> None:
    from refinery.review import decisions as review
    from refinery.review import errors
    from refinery.review.edits import ArtifactEdit
    from tests.api.helpers import insert_proposal

    def decisions(decision: str, outcome: str) -> Callable[[], float]:
        return delta(
            lambda: value("refinery_review_decisions_total", decision=decision, outcome=outcome)
        )

    approved, conflict, invalid, edited = (
        decisions("approve", "applied"), decisions("approve", "conflict"),
        decisions("reject", "invalid"), decisions("edit", "applied"),
    )  # fmt: skip
    status = {
        s: delta(lambda s=s: value("refinery_proposals_total", kind="rag_source", status=s))
        for s in ("approved", "applied", "rejected")
    }
    proposal = insert_proposal(sessions, "rag_source")
    review.edit_proposal(
        sessions,
        proposal,
        actor="ann",
        edit=ArtifactEdit(topic="earbuds"),
        expected_version=1,
    )
    with pytest.raises(errors.DecisionConflict):  # an outdated version: someone else won
        review.approve(sessions, proposal, actor="bob", topic="t", expected_version=1)
    review.approve(sessions, proposal, actor="ann", topic="t", expected_version=2)
    with pytest.raises(errors.TransitionRefused):  # approved cannot be rejected
        review.reject(sessions, proposal, actor="bob")
    review.mark_applied(sessions, proposal, actor="downstream")
    assert (edited(), conflict(), approved(), invalid()) == (1, 1, 1, 1)
    assert {s: read() for s, read in status.items()} == {"approved": 1, "applied": 1, "rejected": 0}


def test_relay_counts_published_rows_and_sets_the_backlog(sessions) -> None:
    from refinery.review.decisions import approve
    from refinery.review.relay import relay_once
    from tests.api.helpers import insert_proposal

    class Acked:
        def get(self, timeout: float) -> None:
            pass

    class Producer:
        sent = 0

        def send(self, *_: object, **__: object) -> Acked:
            self.sent += 1
            return Acked()

    for _ in range(3):
        approve(sessions, insert_proposal(sessions, "rag_source"), actor="ann", topic="t")
    published = delta(lambda: value("refinery_outbox_published_total"))
    producer = Producer()
    assert relay_once(sessions, producer, batch_size=2) == 2
    assert value("refinery_outbox_backlog_rows") == 3 and published() == 2
    assert relay_once(sessions, producer, batch_size=2) == 1
    assert value("refinery_outbox_backlog_rows") == 1 and published() == 3
    assert relay_once(sessions, producer, batch_size=2) == 0
    assert value("refinery_outbox_backlog_rows") == 0 and producer.sent == 3


def test_relay_waits_out_an_unreachable_database(sessions) -> None:
    from sqlalchemy.exc import OperationalError

    from refinery.review import relay

    calls: list[str] = []

    def failing_then_stop(*_: object) -> int:
        calls.append("pass")
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    original = relay.relay_once
    relay.relay_once = failing_then_stop  # type: ignore[assignment]
    try:
        relay.run_relay(
            sessions, None, batch_size=1, idle_sleep_s=0.01, should_stop=lambda: len(calls) >= 3
        )
    finally:
        relay.relay_once = original  # type: ignore[assignment]
    assert calls == ["pass"] * 3, "kept going instead of raising"


# --- readiness helpers --------------------------------------------------------------------------


def test_bounded_check_answers_false_in_time_and_keeps_one_stuck_thread() -> None:
    release = threading.Event()
    calls: list[int] = []

    def hangs() -> bool:
        calls.append(1)
        release.wait(30)
        return True

    check = roles.bounded(hangs, "hangs", timeout_s=0.2)
    started = time.monotonic()
    assert check() is False
    assert check() is False  # still stuck: answered at once, no second thread
    assert time.monotonic() - started < 1.0 and len(calls) == 1
    release.set()
    time.sleep(0.1)
    assert check() is True and len(calls) == 2

    def raises() -> bool:
        raise ConnectionError("down")

    assert roles.bounded(raises, "raises")() is False


def test_polled_within_follows_the_consumer_loop() -> None:
    class Loop:
        last_poll_at = 0.0

    loop = Loop()
    check = roles.polled_within(loop, max_age_s=60)
    assert check() is False, "never polled"
    loop.last_poll_at = time.monotonic()
    assert check() is True
    loop.last_poll_at = time.monotonic() - 61
    assert check() is False


def test_database_check_and_redis_check_against_dead_services(tmp_path) -> None:
    assert roles.database_check(f"sqlite:///{tmp_path}/x.db")() is True
    dead_pg = roles.bounded(
        roles.database_check("postgresql+psycopg://postgres@127.0.0.1:1/none"), "db"
    )
    assert dead_pg() is False
    assert roles.bounded(roles.redis_check("redis://127.0.0.1:1/0"), "broker")() is False


def test_start_health_is_off_at_port_zero_and_serves_bounded_checks(make_settings) -> None:
    import json
    import urllib.error
    import urllib.request

    assert roles.start_health(make_settings(health_port=0), {"x": lambda: True}) is None
    settings = make_settings(health_port=_free_port())
    server = roles.start_health(settings, {"fine": lambda: True, "down": lambda: 1 / 0 > 0})
    assert server is not None
    try:
        url = f"http://127.0.0.1:{settings.health_port}/readyz"
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(url, timeout=5)
        assert error.value.code == 503
        assert json.loads(error.value.read())["checks"] == {"fine": True, "down": False}
    finally:
        roles.stop_health(server)


def test_clear_multiprocess_dir_empties_it_and_keeps_it(tmp_path, monkeypatch) -> None:
    directory = tmp_path / "prom"
    (directory / "sub").mkdir(parents=True)
    (directory / "counter_1.db").write_bytes(b"x")
    (directory / "sub" / "y").write_bytes(b"y")
    monkeypatch.setenv(roles.MULTIPROC_ENV, str(directory))
    assert roles.clear_multiprocess_dir() == directory
    assert directory.is_dir() and not any(directory.iterdir())
    monkeypatch.delenv(roles.MULTIPROC_ENV)
    assert roles.clear_multiprocess_dir() is None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_int8_encoder_is_refused_on_a_gpu_device() -> None:
    """EMBEDDING_DEVICE moves the encoder to a GPU worker; int8 dynamic quantization is CPU-only."""
    from refinery.embed.embedder import SentenceTransformerEmbedder

    with pytest.raises(ValueError, match="CPU"):
        SentenceTransformerEmbedder(None, name="m+int8", batch_size=64, int8=True, device="cuda")
    SentenceTransformerEmbedder(None, name="m", batch_size=64, device="cuda")  # loads lazily
