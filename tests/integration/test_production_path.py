"""The production path as users run it: every role a process, default settings, both databases.

`refinery migrate`, `ingest`, a prefork `worker` and `beat` run as subprocesses over a
Kafka-protocol broker (Tansu), Redis, and PostgreSQL or SQLite, with nothing set but where the
services are. The demo's workload is produced the way an app would: healthy traffic with some
noise, and three planted failure modes. Nobody sends a task by hand: the queue must fill by
itself (refine on arriving work, beat as the safety net), with one proposal per planted mode, of
the right kind, none for healthy traffic, and the optional region-rate step done on each database.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from refinery.demo.workload import APP_ID, generate
from refinery.scenario.plant import from_labelled_events
from refinery.scenario.run import run_scenario
from refinery.store.db import session_scope
from refinery.store.models import Cluster, ProposalRow
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("database", ["postgres", "sqlite"])
def test_roles_as_processes_fill_the_queue(
    database, request, kafka_bootstrap, topics, redis_url, tmp_path
):
    database_url = request.getfixturevalue(f"{database}_url")
    work = generate()
    scenario = from_labelled_events(APP_ID, work.interactions, work.feedback, work.planted)
    services = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        **{name.upper(): value for name, value in topics.items()},
    }
    run = run_scenario(scenario, services, workdir=tmp_path / "roles", timeout_s=420)

    assert not run.timed_out, "the queue was not complete within the time limit"
    score = run.score
    assert {s.intent: (s.recalled, s.kind) for s in score.intents} == {
        intent: (True, kind) for intent, kind in work.planted.items()
    }
    assert score.redundant == 0 and score.spurious == 0 and score.impure_clusters == 0
    with session_scope(database_url) as session:
        pending = session.scalars(
            select(ProposalRow).where(ProposalRow.app_id == APP_ID, ProposalRow.status == "pending")
        ).all()
    assert len(pending) == len(work.planted)

    def region_rates() -> list[float | None]:
        with session_scope(database_url) as session:
            rates = session.scalars(
                select(Cluster.region_failure_rate).where(
                    Cluster.id.in_({row.cluster_id for row in pending})
                )
            ).all()
        return list(rates) if rates and all(r is not None for r in rates) else []

    # The optional region step ran on this database (it once overflowed on PostgreSQL), after
    # the proposals, never before them: each planted mode's region is mostly failing, since
    # the healthy traffic asks other things.
    rates = wait_for(region_rates, timeout_s=180, interval_s=1, what="region failure rates")
    assert all(rate is not None and rate > 0.5 for rate in rates), rates
