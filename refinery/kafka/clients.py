"""kafka-python clients configured from settings (bootstrap, SASL/TLS, group timeouts)."""

from __future__ import annotations

from typing import Any

from kafka import KafkaConsumer, KafkaProducer

from refinery.settings import Settings


def security_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if settings.kafka_sasl_mechanism:
        config["sasl_mechanism"] = settings.kafka_sasl_mechanism
        config["sasl_plain_username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            config["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_ssl_cafile:
        config["ssl_cafile"] = settings.kafka_ssl_cafile
    return config


def bootstrap(settings: Settings) -> str:
    if settings.kafka_bootstrap_servers is None:
        raise RuntimeError("KAFKA_BOOTSTRAP_SERVERS is unset and no embedded broker was started")
    return settings.kafka_bootstrap_servers


def make_producer(settings: Settings, **overrides: Any) -> KafkaProducer:
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
