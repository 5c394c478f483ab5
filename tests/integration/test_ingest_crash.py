"""Kill `refinery ingest` with SIGKILL mid-stream, twice, restart it: no event lost, none stored
twice, and every failing interaction still reaches the Celery queue (Redis)."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
import redis
from sqlalchemy import func, select

from refinery.store.db import migrate, session_factory
from refinery.store.models import Feedback, Interaction
from tests.integration.helpers import produce, start_role, wait_for

pytestmark = pytest.mark.integration

INTERACTIONS = 3000

NOW = (datetime.now(UTC) - timedelta(hours=1)).isoformat()  # inside the event-time limits


def _events():
    interactions, feedback = [], []
    for i in range(INTERACTIONS):
        interactions.append(
            {
                "event_id": f"crash-i{i}",
                "app_id": f"app{i % 3}",
                "session_id": f"s{i // 4}",
                "interaction_id": f"i{i}",
                "occurred_at": NOW,
                "query": f"question number {i} about topic {i % 17}",
                "response": "an answer",
            }
        )
        if i % 2 == 0:  # half get feedback; every 5th of those fails
            kind = "thumbs_down" if i % 10 == 0 else "thumbs_up"
            feedback.append(
                {
                    "event_id": f"crash-f{i}",
                    "app_id": f"app{i % 3}",
                    "interaction_id": f"i{i}",
                    "occurred_at": NOW,
                    "kind": kind,
                }
            )
    return interactions, feedback


def _enqueued_ids(redis_url: str) -> set[int]:
    client = redis.Redis.from_url(redis_url)
    ids: set[int] = set()
    for raw in client.lrange("embed", 0, -1):
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        ids.update(args[0])
    client.close()
    return ids


def test_sigkill_mid_stream_loses_and_duplicates_nothing(
    kafka_bootstrap, topics, db_url, redis_url, make_settings, tmp_path
):
    settings = make_settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        database_url=db_url,
        redis_url=redis_url,
        ingest_batch_max_records=50,
        **topics,
    )
    migrate(db_url)
    sessions = session_factory(db_url)
    interactions, feedback = _events()
    produce(kafka_bootstrap, settings.topic_interactions, interactions)
    produce(kafka_bootstrap, settings.topic_feedback, feedback)

    def stored() -> int:
        with sessions() as session:
            return session.scalar(select(func.count(Interaction.id))) or 0

    log = tmp_path / "ingest.log"
    env = {"INGEST_BATCH_MAX_RECORDS": "50"}
    killed_at = []
    for threshold in (300, 1200):
        process = start_role(settings, "ingest", log_path=log, **env)
        wait_for(lambda t=threshold: stored() >= t, timeout_s=120, what=f"{threshold} rows stored")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        killed_at.append(stored())
    assert killed_at[-1] < INTERACTIONS, (
        "the consumer finished before it could be killed mid-stream"
    )

    final = start_role(settings, "ingest", "--until-caught-up", log_path=log, **env)
    try:
        assert final.wait(timeout=240) == 0, log.read_text()[-3000:]
    except subprocess.TimeoutExpired:
        final.kill()
        raise

    with sessions() as session:
        assert session.scalar(select(func.count(Interaction.id))) == INTERACTIONS
        assert (
            session.scalar(select(func.count(func.distinct(Interaction.event_id)))) == INTERACTIONS
        )
        assert session.scalar(select(func.count(Feedback.id))) == len(feedback)
        failing = set(session.scalars(select(Interaction.id).where(Interaction.failing.is_(True))))
    assert len(failing) == INTERACTIONS // 10
    # At-least-once into Celery: each failing interaction was enqueued (perhaps twice; tasks are
    # idempotent), none was forgotten by the crash.
    assert failing <= _enqueued_ids(redis_url)
