"""The Emitter: never blocks the app, drops and counts when full, surfaces delivery errors, redacts,
keys by session; and against the real broker: acks=all, idempotent, every event delivered."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime

import pytest
from kafka import KafkaConsumer

from refinery.emitter import Emitter, event_key
from refinery.emitter.client import supports_idempotence
from refinery.redact import Redactor
from schemas.events import FeedbackEvent, InteractionEvent

NOW = datetime.now(UTC)


def interaction(n: int = 0, query: str = "where is my order?") -> InteractionEvent:
    return InteractionEvent(
        event_id=f"e{n}",
        app_id="shop",
        session_id="s1",
        interaction_id=f"i{n}",
        occurred_at=NOW,
        query=query,
        response="it shipped",
    )


def thumbs_down(n: int = 0) -> FeedbackEvent:
    return FeedbackEvent(
        event_id=f"f{n}", app_id="shop", interaction_id=f"i{n}", occurred_at=NOW, kind="thumbs_down"
    )


class Future:
    def __init__(self) -> None:
        self.callbacks: list = []
        self.errbacks: list = []

    def add_callback(self, fn):  # type: ignore[no-untyped-def]
        self.callbacks.append(fn)
        return self

    def add_errback(self, fn):  # type: ignore[no-untyped-def]
        self.errbacks.append(fn)
        return self


class FakeProducer:
    """Records sends; each send blocks until `gate` is set (a slow or unreachable Kafka)."""

    def __init__(self, config: dict) -> None:
        self.config = config
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.futures: list[Future] = []
        self.gate = threading.Event()
        self.gate.set()

    def send(self, topic, key=None, value=None):  # type: ignore[no-untyped-def]
        self.gate.wait()
        self.sent.append((topic, key, value))
        future = Future()
        self.futures.append(future)
        return future

    def flush(self, timeout=None):  # type: ignore[no-untyped-def]
        pass

    def close(self, timeout=None):  # type: ignore[no-untyped-def]
        pass


def fake_emitter(**kwargs):  # type: ignore[no-untyped-def]
    holder: dict = {}

    def factory(config: dict) -> FakeProducer:
        holder["producer"] = FakeProducer(config)
        return holder["producer"]

    emitter = Emitter("unused:9092", producer_factory=factory, **kwargs)
    return emitter, holder


def wait(predicate, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_emit_never_blocks_and_drops_and_counts_when_the_buffer_is_full():
    emitter, holder = fake_emitter(max_buffered=10)
    emitter.emit(interaction(0))
    wait(lambda: "producer" in holder)
    holder["producer"].gate.clear()  # Kafka hangs
    emitter.emit(interaction(1))  # taken by the sender thread, which now hangs in send()
    wait(lambda: emitter.buffered == 0)
    started = time.perf_counter()
    results = [emitter.emit(interaction(n)) for n in range(2, 2000)]
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, f"emit blocked the caller: {elapsed:.3f} s for 2000 events"
    assert results.count(True) == 10 and results.count(False) == 1988
    assert emitter.stats.dropped == 1988
    holder["producer"].gate.set()
    wait(lambda: len(holder["producer"].sent) == 12)
    for future in holder["producer"].futures:
        future.callbacks[0](None)
    assert emitter.flush(5)
    assert (emitter.stats.enqueued, emitter.stats.delivered, emitter.stats.failed) == (12, 12, 0)
    emitter.close()
    assert emitter.emit(interaction(99)) is False and emitter.stats.dropped == 1989


def test_delivery_errors_reach_the_callback_and_are_counted():
    errors: list = []
    emitter, holder = fake_emitter(
        on_error=lambda event, exc: errors.append((event.event_id, str(exc)))
    )
    emitter.emit_interaction(interaction(1))
    emitter.emit_feedback(thumbs_down(1))
    wait(lambda: "producer" in holder and len(holder["producer"].futures) == 2)
    first, second = holder["producer"].futures
    first.callbacks[0](None)
    second.errbacks[0](RuntimeError("NotEnoughReplicas"))
    assert emitter.flush(5)
    assert errors == [("f1", "NotEnoughReplicas")]
    assert (emitter.stats.delivered, emitter.stats.failed) == (1, 1)
    emitter.close()


def test_a_raising_callback_does_not_stop_the_sender():
    def bad_callback(event, exc):  # type: ignore[no-untyped-def]
        raise ValueError("app bug")

    emitter, holder = fake_emitter(on_error=bad_callback)
    emitter.emit(interaction(1))
    wait(lambda: "producer" in holder and holder["producer"].futures)
    holder["producer"].futures[0].errbacks[0](RuntimeError("boom"))
    emitter.emit(interaction(2))
    wait(lambda: len(holder["producer"].futures) == 2)
    assert emitter.stats.failed == 1
    emitter.close(timeout_s=0.5)


def test_topics_keys_config_and_redaction():
    emitter, holder = fake_emitter(
        redactor=Redactor(), topic_interactions="ti", topic_feedback="tf"
    )
    emitter.emit(interaction(1, query="mail me at jane@example.org"))
    emitter.emit(thumbs_down(1))
    wait(lambda: "producer" in holder and len(holder["producer"].sent) == 2)
    (t1, k1, v1), (t2, k2, v2) = holder["producer"].sent
    assert (t1, k1) == ("ti", b"shop/s1") and (t2, k2) == ("tf", b"shop")
    assert json.loads(v1)["query"] == "mail me at <EMAIL>"
    assert json.loads(v2)["kind"] == "thumbs_down"
    config = holder["producer"].config
    assert config["acks"] == "all" and config["linger_ms"] > 0
    assert config.get("enable_idempotence") is supports_idempotence() is True
    assert emitter.idempotent
    emitter.close(timeout_s=0.5)


def test_typed_helpers_refuse_the_other_event_type():
    emitter, _ = fake_emitter()
    with pytest.raises(TypeError):
        emitter.emit_interaction(thumbs_down())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        emitter.emit_feedback(interaction())  # type: ignore[arg-type]
    emitter.close(timeout_s=0.5)


def test_event_key():
    assert event_key(interaction()) == b"shop/s1"
    assert event_key(thumbs_down()) == b"shop"


def test_against_the_real_broker_every_event_is_delivered_once(kafka_bootstrap):
    topic = f"emitter-{time.monotonic_ns()}"
    with Emitter(
        kafka_bootstrap, topic_interactions=topic, topic_feedback=topic + ".fb"
    ) as emitter:
        for n in range(200):
            assert emitter.emit_interaction(interaction(n))
        assert emitter.flush(30)
        assert emitter.idempotent
        assert (emitter.stats.delivered, emitter.stats.failed, emitter.stats.dropped) == (200, 0, 0)
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    try:
        ids = [json.loads(r.value)["event_id"] for r in consumer]
    finally:
        consumer.close()
    assert sorted(ids) == sorted(f"e{n}" for n in range(200))
