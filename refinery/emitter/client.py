"""`Emitter`: a bounded buffer before a kafka-python producer, drained by one background thread.

Promises:
- `emit*` never blocks and never raises on a healthy call: it puts the event in a bounded queue
  and returns True, or, when the queue is full (Kafka slow or down), drops the event, counts it
  and returns False. Serialization, redaction and the producer's own blocking (metadata, a full
  producer buffer) all happen on the background thread.
- Delivery is acks=all with idempotence (when the installed kafka-python and the broker support
  it; `Emitter.idempotent` says), retried by the producer; events are batched (linger_ms,
  batch_size).
- Every event ends in exactly one of the counters `delivered`, `failed` (the broker refused it,
  retries ran out, or it could not be serialized; `on_error(event, exception)` is called) or
  `dropped` (buffer full or emitter closed). `on_error` runs on a background thread; keep it short.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer
from kafka.errors import IncompatibleBrokerVersion, UnsupportedVersionError

from refinery.redact import Redactor
from refinery.redact.events import redact_event_with
from schemas.events import FeedbackEvent, InteractionEvent

log = logging.getLogger(__name__)

Event = InteractionEvent | FeedbackEvent
ErrorCallback = Callable[[Event, BaseException], None]

DEFAULT_TOPIC_INTERACTIONS = "refinery.interactions"
DEFAULT_TOPIC_FEEDBACK = "refinery.feedback"


def event_key(event: Event) -> bytes:
    """The partition key: app and session, so that a session's turns stay in order on one
    partition while a large app still spreads over all of them."""
    if event.session_id:
        return f"{event.app_id}/{event.session_id}".encode()
    return event.app_id.encode()


def supports_idempotence() -> bool:
    """Whether the installed kafka-python has an idempotent producer (2.1 and later)."""
    return "enable_idempotence" in KafkaProducer.DEFAULT_CONFIG


@dataclass
class EmitterStats:
    enqueued: int = 0
    delivered: int = 0
    failed: int = 0
    dropped: int = 0


_STOP = object()


class Emitter:
    def __init__(
        self,
        bootstrap_servers: str,
        *,
        topic_interactions: str = DEFAULT_TOPIC_INTERACTIONS,
        topic_feedback: str = DEFAULT_TOPIC_FEEDBACK,
        max_buffered: int = 10_000,
        on_error: ErrorCallback | None = None,
        redactor: Redactor | None = None,
        linger_ms: int = 20,
        batch_size: int = 65_536,
        producer_config: dict[str, Any] | None = None,
        producer_factory: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        """`redactor`: redacts user text before it leaves the process (None: send as is; the
        ingest consumer redacts before storing either way). `producer_config`: extra
        kafka-python settings (security, timeouts). `producer_factory`: builds the producer
        from its config (tests inject a fake)."""
        self.topics = {"interaction": topic_interactions, "feedback": topic_feedback}
        self.on_error = on_error
        self.redactor = redactor
        self.stats = EmitterStats()
        self.idempotent = False
        self._lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_buffered)
        self._closed = False
        self._config: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            "acks": "all",
            "linger_ms": linger_ms,
            "batch_size": batch_size,
            "max_in_flight_requests_per_connection": 5,
            **(producer_config or {}),
        }
        self._factory = producer_factory or (lambda config: KafkaProducer(**config))
        self._producer: Any = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="refinery-emitter", daemon=True)
        self._thread.start()

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> Emitter:
        """An emitter for a refinery deployment's settings (topics, security, redaction)."""
        from refinery.kafka.clients import bootstrap, security_config

        kwargs.setdefault("redactor", Redactor.from_settings(settings))
        config = {**security_config(settings), **kwargs.pop("producer_config", {})}
        return cls(
            bootstrap(settings),
            topic_interactions=settings.topic_interactions,
            topic_feedback=settings.topic_feedback,
            producer_config=config,
            **kwargs,
        )

    # --- the app's side: never blocks ------------------------------------------------------

    def emit(self, event: Event) -> bool:
        """Buffer one event for sending; False if it was dropped (buffer full, or closed)."""
        if self._closed:
            self._count("dropped")
            return False
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._count("dropped")
            return False
        self._count("enqueued")
        return True

    def emit_interaction(self, event: InteractionEvent) -> bool:
        if not isinstance(event, InteractionEvent):
            raise TypeError(
                f"emit_interaction takes an InteractionEvent, not {type(event).__name__}"
            )
        return self.emit(event)

    def emit_feedback(self, event: FeedbackEvent) -> bool:
        if not isinstance(event, FeedbackEvent):
            raise TypeError(f"emit_feedback takes a FeedbackEvent, not {type(event).__name__}")
        return self.emit(event)

    @property
    def buffered(self) -> int:
        return self._queue.qsize()

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every buffered event is delivered or failed; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        if self._queue.unfinished_tasks:
            return False
        if self._producer is not None:
            try:
                self._producer.flush(timeout=max(deadline - time.monotonic(), 0.0))
            except Exception:  # a timeout: report it as not flushed
                return False
        return self._settled()

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush, then stop the background thread and close the producer. Events emitted after
        this are dropped (and counted)."""
        self.flush(timeout_s)
        self._closed = True
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=max(timeout_s, 0.1))
        self._thread.join(timeout=timeout_s)
        if self._producer is not None:
            self._producer.close(timeout=timeout_s)

    def __enter__(self) -> Emitter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- the background thread ------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self.stats, name, getattr(self.stats, name) + n)

    def _settled(self) -> bool:
        with self._lock:
            s = self.stats
            return s.delivered + s.failed >= s.enqueued

    def _connect(self) -> Any:
        """The producer, idempotent when possible; retried with backoff while Kafka is down."""
        delay = 0.5
        while not self._closed:
            config = dict(self._config)
            want_idempotence = supports_idempotence() and "enable_idempotence" not in config
            if want_idempotence:
                config["enable_idempotence"] = True
            try:
                producer = self._factory(config)
                self.idempotent = bool(config.get("enable_idempotence"))
                return producer
            except (UnsupportedVersionError, IncompatibleBrokerVersion):
                if not want_idempotence:
                    raise
                log.warning("the broker does not support idempotent producers; sending without")
                self._config["enable_idempotence"] = False
            except Exception as exc:
                log.warning("emitter: cannot reach Kafka (%s); retrying in %.1f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        return None

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                if self._producer is None:
                    self._producer = self._connect()
                    if self._producer is None:  # closed while Kafka was unreachable
                        self._fail(
                            item, ConnectionError("emitter closed before Kafka was reachable")
                        )
                        continue
                self._send(item)
            finally:
                self._queue.task_done()

    def _send(self, event: Event) -> None:
        try:
            if self.redactor is not None:
                event = redact_event_with(event, self.redactor)
            value = event.model_dump_json().encode("utf-8")
            future = self._producer.send(
                self.topics[event.event_type], key=event_key(event), value=value
            )
        except Exception as exc:  # serialization, a full producer buffer, metadata timeout
            self._fail(event, exc)
            return
        future.add_callback(lambda _meta: self._count("delivered"))
        future.add_errback(lambda exc: self._fail(event, exc))

    def _fail(self, event: Event, exc: BaseException) -> None:
        self._count("failed")
        if self.on_error is not None:
            try:
                self.on_error(event, exc)
            except Exception:  # the app's callback must not kill the sender
                log.exception("emitter on_error callback raised")
