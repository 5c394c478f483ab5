"""Run a scenario through the real roles and score the queue (`refinery scenario`, the bench).

Order: migrate, start ingest + worker + beat, produce every event in order of occurrence, then
watch the database. The queue is *complete* when every event is stored, no failing interaction
waits for a cluster, a re-cluster has started since then, and the open proposals have not
changed for `settle_s`. The figure reported is the wall time from the last event produced to
the last change of the queue: when a reviewer would see the complete queue.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select

from refinery.kafka.clients import make_producer
from refinery.scenario.plant import Scenario
from refinery.scenario.roles import Roles
from refinery.scenario.score import OPEN_STATUSES, QueueScore, score_queue
from refinery.settings import Settings
from refinery.store.db import session_scope
from refinery.store.models import ClusterRun, Interaction, ProposalRow

POLL_INTERVAL_S = 1.0


@dataclass
class ScenarioRun:
    score: QueueScore
    events: int
    # Last event produced -> last change of the queue; None if it was not complete in time.
    seconds_to_complete_queue: float | None
    timed_out: bool


def run_scenario(
    scenario: Scenario,
    services: dict[str, str],
    *,
    workdir: Path,
    timeout_s: float = 600,
    settle_s: float = 20,
    worker_args: tuple[str, ...] = (),
    then: Callable[[], None] | None = None,
) -> ScenarioRun:
    """`services`: KAFKA_BOOTSTRAP_SERVERS, REDIS_URL, DATABASE_URL (+ topic names), as env.
    `then` runs after the queue is complete and scored, while the roles still run."""
    database_url = services["DATABASE_URL"]
    workdir.mkdir(parents=True, exist_ok=True)
    with Roles(services, workdir) as roles:
        roles.run("migrate")
        roles.start("worker", *worker_args)
        roles.start("beat")
        roles.start("ingest")
        events = _produce(scenario, services)
        last_event = time.monotonic()
        seconds, timed_out = _wait_complete(
            scenario, database_url, roles, last_event, timeout_s=timeout_s, settle_s=settle_s
        )
        with session_scope(database_url) as session:
            score = score_queue(session, scenario)
        if then is not None:
            then()
            roles.check_alive()
    return ScenarioRun(score, events, seconds, timed_out)


def _produce(scenario: Scenario, services: dict[str, str]) -> int:
    # The producer an app would configure from the same settings (SASL/TLS included).
    settings = Settings.model_validate({k.lower(): v for k, v in services.items()})
    topics = {"interaction": settings.topic_interactions, "feedback": settings.topic_feedback}
    producer = make_producer(settings)
    sent = 0
    try:
        for kind, event in scenario.timeline():
            producer.send(
                topics[kind], key=event["app_id"].encode(), value=json.dumps(event).encode()
            )
            sent += 1
        producer.flush()
    finally:
        producer.close()
    return sent


def _wait_complete(
    scenario: Scenario,
    database_url: str,
    roles: Roles,
    last_event: float,
    *,
    timeout_s: float,
    settle_s: float,
) -> tuple[float | None, bool]:
    app_id = scenario.app_id
    expected = len(scenario.interactions)
    snapshot: tuple = ()
    changed_at = last_event
    placed_since: datetime | None = None  # wall time all was stored and placed (database clock)
    deadline = last_event + timeout_s
    while time.monotonic() < deadline:
        roles.check_alive()
        with session_scope(database_url) as session:
            stored = session.scalar(
                select(func.count(Interaction.id)).where(Interaction.app_id == app_id)
            )
            due = session.scalar(
                select(func.count(Interaction.id)).where(
                    Interaction.app_id == app_id,
                    Interaction.failing.is_(True),
                    Interaction.cluster_id.is_(None),
                    Interaction.cluster_checked_at.is_(None),
                )
            )
            current = tuple(
                session.execute(
                    select(ProposalRow.id, ProposalRow.kind, ProposalRow.version)
                    .where(ProposalRow.app_id == app_id, ProposalRow.status.in_(OPEN_STATUSES))
                    .order_by(ProposalRow.id)
                ).all()
            )
            reclustered = placed_since is not None and bool(
                session.scalar(
                    select(func.count(ClusterRun.id)).where(
                        ClusterRun.app_id == app_id,
                        ClusterRun.started_at >= placed_since,
                        ClusterRun.finished_at.is_not(None),
                    )
                )
            )
        now = time.monotonic()
        if current != snapshot:
            snapshot, changed_at = current, now
        if stored == expected and due == 0:
            placed_since = placed_since or datetime.now(UTC)
        else:
            placed_since = None
        if reclustered and current and now - changed_at >= settle_s:
            return round(changed_at - last_event, 1), False
        time.sleep(POLL_INTERVAL_S)
    return None, True
