"""Downstream exactly once, by outbox id: approvals made through the API reach the approved-
refinements topic even when the relay process is SIGKILLed, repeatedly, after Kafka acknowledged
a batch and before the relay marked it sent. Redelivered records carry the same outbox_id header
(and payload), so consumers de-duplicate on it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from sqlalchemy import func, select

from refinery.store.models import OutboxRow
from tests.api.helpers import insert_proposal

# kafka-python loads its protocol schemas with a deprecated importlib call; a mark (unlike the ini
# filters) outranks `-W error`, and kafka is imported inside the test so collection never sees it.
pytestmark = [
    pytest.mark.filterwarnings("ignore:read_text is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:open_text is deprecated:DeprecationWarning"),
]

RELAY = Path(__file__).with_name("relay_with_pause.py")
BATCH = 4


def _start_relay(
    api_env, kafka_bootstrap, tmp_path, pause_on: int | None
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": api_env.settings.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "TOPIC_APPROVED": api_env.settings.topic_approved,
        "OUTBOX_BATCH_SIZE": str(BATCH),
        "OUTBOX_POLL_INTERVAL_S": "0.1",
        "RELAY_TEST_ACKED_FILE": str(tmp_path / "acked"),
    }
    env.pop("RELAY_TEST_PAUSE_ON_BATCH", None)
    if pause_on:
        env["RELAY_TEST_PAUSE_ON_BATCH"] = str(pause_on)
    # cwd: the tmp dir, so that no .env file of the checkout changes its settings.
    with open(tmp_path / "relay.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, str(RELAY)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def _wait_for(
    predicate, timeout_s: float, what: str, proc: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(
                f"relay exited ({proc.returncode}) before {what}: {log.read_text()[-2000:]}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _unsent(api_env) -> int:
    with api_env.sessions() as s:
        return s.scalar(
            select(func.count()).select_from(OutboxRow).where(OutboxRow.published_at.is_(None))
        )


def test_relay_killed_between_publish_and_mark_loses_nothing(
    api_env, client, kafka_bootstrap, tmp_path
):
    reviewer = api_env.auth("reviewer")

    def approve_new(n: int) -> list[str]:
        ids = []
        for i in range(n):
            pid = insert_proposal(api_env.sessions, ["rag_source", "fine_tune_dataset"][i % 2])
            r = client.post(
                f"/v1/proposals/{pid}/approve", headers=reviewer, json={"expected_version": 1}
            )
            assert r.status_code == 200
            ids.append(pid)
        return ids

    approved = approve_new(6)
    acked = tmp_path / "acked"
    kills = 0
    # Round 1 dies on its first batch; later rounds mark one batch sent, then die on the next.
    for round_no, pause_on in enumerate([1, 2, 2], start=1):
        proc = _start_relay(api_env, kafka_bootstrap, tmp_path, pause_on)
        _wait_for(
            lambda n=round_no: acked.exists() and len(acked.read_text().splitlines()) >= n,
            60,
            f"round {round_no} to publish",
            proc,
            tmp_path / "relay.log",
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        kills += 1
        assert _unsent(api_env) > 0  # the killed batch was published but not marked
        approved += approve_new(3)

    proc = _start_relay(api_env, kafka_bootstrap, tmp_path, None)
    try:
        _wait_for(
            lambda: _unsent(api_env) == 0, 60, "the outbox to drain", proc, tmp_path / "relay.log"
        )
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert kills == 3

    with api_env.sessions() as s:
        outbox = {row.id: row.proposal_id for row in s.scalars(select(OutboxRow))}
    assert sorted(outbox.values()) == sorted(approved)

    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        api_env.settings.topic_approved,
        bootstrap_servers=kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=3000,
    )
    seen: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    deadline = time.monotonic() + 60
    try:
        while set(seen) != set(outbox) and time.monotonic() < deadline:
            for record in consumer:
                headers = dict(record.headers)
                payload = json.loads(record.value)
                seen[headers["outbox_id"].decode()].append((record.key.decode(), payload))
    finally:
        consumer.close()

    assert set(seen) == set(outbox), "every approval reached the topic"
    for outbox_id, deliveries in seen.items():
        for key, payload in deliveries:
            assert key == outbox[outbox_id] == payload["proposal_id"]
            assert payload["outbox_id"] == outbox_id
        assert all(p == deliveries[0][1] for _, p in deliveries), "a redelivery is the same message"
    duplicates = sum(len(d) - 1 for d in seen.values())
    assert duplicates >= kills, "each kill after the ack left a batch to be published again"
