"""The reconciler's invariant, with the real roles on PostgreSQL, Redis and Tansu: Redis loses the
queue after `refinery ingest` enqueued the failing interactions (FLUSHDB, as a Redis restarted
empty would); one reconciler pass and a worker later, every failing interaction is in a terminal
state: embedded and placed (in a cluster or the outlier pool), or parked with a reason."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta

import pytest
import redis
from sqlalchemy import exists, select, true

from refinery.store.db import migrate, session_factory
from refinery.store.models import FailedWork, Interaction
from tests.integration.helpers import produce, start_role, wait_for

pytestmark = pytest.mark.integration

NOW = (datetime.now(UTC) - timedelta(minutes=30)).isoformat()
TOPICS = ["my card was declined", "how do I reset my password", "where is my parcel"]


def _events(n: int) -> tuple[list[dict], list[dict]]:
    interactions = [
        {"event_id": f"rr-i{i}", "app_id": "shop", "session_id": f"s{i}", "interaction_id": f"i{i}",
         "occurred_at": NOW, "query": f"{TOPICS[i % 3]} (case {i})", "response": "Sorry."}
        for i in range(n)
    ]  # fmt: skip
    feedback = [
        {"event_id": f"rr-f{i}", "app_id": "shop", "interaction_id": f"i{i}", "occurred_at": NOW,
         "kind": "thumbs_down"}
        for i in range(0, n, 2)
    ]  # fmt: skip
    return interactions, feedback


def test_queue_lost_after_ingest_every_failing_interaction_reaches_a_terminal_state(
    kafka_bootstrap, topics, postgres_url, redis_url, make_settings, activate, tmp_path
) -> None:
    from workers import tasks

    settings = activate(
        make_settings(
            kafka_bootstrap_servers=kafka_bootstrap, database_url=postgres_url,
            redis_url=redis_url, reconcile_stale_s=0, region_sample_size=0,
            rephrase_detection_enabled=False, **topics,
        )
    )  # fmt: skip
    migrate(postgres_url)
    sessions = session_factory(postgres_url)
    interactions, feedback = _events(60)
    produce(kafka_bootstrap, settings.topic_interactions, interactions)
    produce(kafka_bootstrap, settings.topic_feedback, feedback)
    log = tmp_path / "roles.log"
    env = {
        "RECONCILE_STALE_S": "0",
        "REGION_SAMPLE_SIZE": "0",
        "REPHRASE_DETECTION_ENABLED": "false",
    }
    ingest = start_role(settings, "ingest", "--until-caught-up", log_path=log, **env)
    assert ingest.wait(timeout=120) == 0, log.read_text()[-3000:]

    with sessions() as session:
        failing = set(session.scalars(select(Interaction.id).where(Interaction.failing == true())))
    assert len(failing) == 30
    client = redis.Redis.from_url(redis_url)
    assert client.llen("embed") > 0, "ingest enqueued the failing interactions"
    client.flushdb()  # Redis lost its queue

    result = tasks.reconcile.apply().get()
    assert result["reenqueued"]["embed"] == len(failing)
    assert client.llen("embed") > 0

    worker = start_role(settings, "worker", "--pool", "solo", log_path=log, **env)
    try:

        def terminal() -> bool:
            with sessions() as session:
                parked = exists().where(
                    FailedWork.item_key == Interaction.id.cast(FailedWork.item_key.type),
                    FailedWork.parked_at.is_not(None),
                )
                left = session.scalars(
                    select(Interaction.id).where(
                        Interaction.failing == true(),
                        Interaction.cluster_checked_at.is_(None),
                        ~parked,
                    )
                ).all()
            return not left

        wait_for(terminal, timeout_s=180, interval_s=1, what="every failing interaction placed")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except Exception:  # noqa: BLE001 - a worker that will not stop is killed
            worker.kill()
        client.close()
    with sessions() as session:
        placed = session.scalars(
            select(Interaction.id).where(Interaction.cluster_checked_at.is_not(None))
        ).all()
    assert set(placed) == failing, log.read_text()[-3000:]
