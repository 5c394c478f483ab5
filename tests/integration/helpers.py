"""Helpers for integration tests: produce events to the real broker, run the real roles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer

from refinery.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def produce(bootstrap: str, topic: str, events: Iterable[dict | bytes], key: bytes = b"app") -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    sent = 0
    for event in events:
        value = event if isinstance(event, bytes) else json.dumps(event).encode()
        producer.send(topic, key=key, value=value)
        sent += 1
    producer.flush()
    producer.close()
    return sent


def produce_workload(settings: Settings, work) -> None:  # type: ignore[no-untyped-def]
    assert settings.kafka_bootstrap_servers
    produce(settings.kafka_bootstrap_servers, settings.topic_interactions, work.interactions)
    produce(settings.kafka_bootstrap_servers, settings.topic_feedback, work.feedback)


def read_topic(bootstrap: str, topic: str, *, expect: int, timeout_s: float = 30) -> list:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=1000,
    )
    records: list = []
    deadline = time.monotonic() + timeout_s
    while len(records) < expect and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    consumer.close()
    return records


def role_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a `refinery` subprocess that sees the same services as the test."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "REDIS_", "DATABASE_"))
    }
    for field in (
        "kafka_bootstrap_servers",
        "redis_url",
        "database_url",
        "topic_interactions",
        "topic_feedback",
        "topic_dead_letter",
        "topic_approved",
        "ingest_group_id",
    ):
        value = getattr(settings, field)
        if value is not None:
            env[field.upper()] = str(value)
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


def start_role(
    settings: Settings, *args: str, log_path: Path, **extra_env: str
) -> subprocess.Popen:
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "refinery.cli", *args],
            cwd=REPO,
            env=role_env(settings, **extra_env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def wait_for(predicate, *, timeout_s: float, interval_s: float = 0.25, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
