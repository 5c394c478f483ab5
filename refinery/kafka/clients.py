"""kafka-python clients configured from settings (bootstrap, SASL/TLS, group timeouts), and the
rule for a long-lived producer: replaced after a failed send (`ReplacingProducer`)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError

from refinery.settings import ServiceSettings, Settings

log = logging.getLogger(__name__)


def security_config(settings: ServiceSettings) -> dict[str, Any]:
    config: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if settings.kafka_sasl_mechanism:
        config["sasl_mechanism"] = settings.kafka_sasl_mechanism
        config["sasl_plain_username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            config["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_ssl_cafile:
        config["ssl_cafile"] = settings.kafka_ssl_cafile
    return config


def bootstrap(settings: ServiceSettings) -> str:
    if settings.kafka_bootstrap_servers is None:
        raise RuntimeError("KAFKA_BOOTSTRAP_SERVERS is unset and no embedded broker was started")
    return settings.kafka_bootstrap_servers


def make_producer(settings: ServiceSettings, **overrides: Any) -> KafkaProducer:
    """A producer that does not lose acknowledged writes: acks=all, retries, in-order."""
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap(settings),
        "acks": "all",
        "retries": 5,
        "linger_ms": 5,
        "max_in_flight_requests_per_connection": 1,
        **security_config(settings),
    }
    config.update(overrides)
    return KafkaProducer(**config)


def make_consumer(
    settings: Settings, *topics: str, group_id: str, **overrides: Any
) -> KafkaConsumer:
    """A group consumer that never auto-commits: callers commit after their effects are durable."""
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap(settings),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": settings.kafka_session_timeout_ms,
        "heartbeat_interval_ms": settings.kafka_heartbeat_interval_ms,
        "max_poll_interval_ms": settings.kafka_max_poll_interval_ms,
        # Oversized records are still fetched whole so that they can be dead-lettered.
        "max_partition_fetch_bytes": max(settings.max_event_bytes * 8, 1_048_576),
        **security_config(settings),
    }
    config.update(overrides)
    return KafkaConsumer(*topics, **config)


class ReplacingProducer:
    """A process's long-lived producer, made again after a send failed.

    kafka-python's producer (idempotent by default) is left failing every send once the broker
    restarts without its state (`UnknownProducerIdError`, then `KafkaError` from InitProducerId)
    until it is replaced. So any `KafkaError` that `send` raises, or that a sent record's future
    fails with, marks the producer broken, and the next `send` closes it (without waiting: what
    it still held has failed) and makes a new one. The failed send is not retried here: its
    caller sees the error and retries as on any Kafka failure (the relay's next pass, ingest's
    rewind), then through the new producer.

    Stands in for a KafkaProducer where callers use `send`, `flush`, `close`; `current` is the
    producer in use (None before the first), for readiness checks. The collector keeps its own
    per-app-state producer (refinery/collector/router.py) by the same rule."""

    def __init__(self, make: Callable[[], KafkaProducer]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._producer: KafkaProducer | None = None
        self._broken: KafkaProducer | None = None
        self._closed = False
        self.replaced = 0  # producers replaced after a failure, for tests and logs

    @property
    def current(self) -> KafkaProducer | None:
        return self._producer

    def get(self) -> KafkaProducer:
        """The producer to send with: made on first use, or again after one failed. Raises what
        making it raises (NoBrokersAvailable: Kafka is down)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("ReplacingProducer is closed")
            old = self._producer
            if self._broken is not None and old is self._broken:
                self._producer = None
                self.replaced += 1
                log.warning("Kafka producer replaced after a failed send")
                with contextlib.suppress(Exception):  # already failing: nothing to wait for
                    old.close(timeout=0)
            if self._producer is None:
                self._producer = self._make()
            return self._producer

    def failed(self, producer: KafkaProducer | None = None) -> None:
        """Mark `producer` (default: the one in use) broken: the next `get` replaces it. Safe
        from the producer's own I/O thread (a future's errback), which must not close it."""
        target = producer if producer is not None else self._producer
        if target is not None:
            self._broken = target

    def send(self, topic: str, **kwargs: Any) -> Any:
        """KafkaProducer.send through the current producer; a KafkaError, raised here or by the
        returned future, marks that producer broken."""
        producer = self.get()
        try:
            future = producer.send(topic, **kwargs)
        except KafkaError:
            self.failed(producer)
            raise
        future.add_errback(self._on_error, producer)
        return future

    def _on_error(self, producer: KafkaProducer, error: BaseException) -> None:
        if isinstance(error, KafkaError):
            self.failed(producer)

    def flush(self, timeout: float | None = None) -> None:
        producer = self._producer
        if producer is not None:
            producer.flush(timeout=timeout)

    def close(self, timeout: float | None = None) -> None:
        with self._lock:
            self._closed = True
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=timeout)
