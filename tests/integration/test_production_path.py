"""The production path as users run it: every role a process, default settings, both databases.

`refinery migrate`, `ingest`, a prefork `worker` and `beat` run as subprocesses over a
Kafka-protocol broker (Tansu), Redis, and PostgreSQL or SQLite, with nothing set but where the
services are. The demo's workload is produced the way an app would: healthy traffic with some
noise, and three planted failure modes. Nobody sends a task by hand: the queue must fill by
itself (refine on arriving work, beat as the safety net), with one proposal per planted mode, of
the right kind, none for healthy traffic, and the optional region-rate step done on each
database. Then every Celery task is sent once more by name, on that database: each succeeds and
none changes the complete queue.
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

EVERY_TASK = {  # name: args; "APP" stands for the app id, "SESSION" for a session ref
    "refinery.embed_interactions": ([1, 2, 3],),
    "refinery.assign_clusters": (),
    "refinery.cluster_app": ("APP",),
    "refinery.propose_for_app": ("APP",),
    "refinery.refresh_region_rates": ("APP",),
    "refinery.refine_app": ("APP",),
    "refinery.refine_all_apps": (),
    "refinery.detect_session_signals": (["SESSION"],),
    "refinery.sweep_abandoned_sessions": (),
    "refinery.sweep_orphan_feedback": (),
    "refinery.reconcile": (),
    "refinery.refresh_impact": (),
}


def test_every_registered_task_is_run_on_the_production_path() -> None:
    """A task added to the worker without a line above would escape the both-databases run."""
    import workers.tasks  # noqa: F401  (registers the tasks)
    from workers.celery_app import app

    assert {name for name in app.tasks if name.startswith("refinery.")} == set(EVERY_TASK)


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
    seen: dict[str, object] = {}

    def region_rates() -> list[float]:
        with session_scope(database_url) as session:
            pending = {row.cluster_id for row in _pending(session)}
            rates = session.scalars(
                select(Cluster.region_failure_rate).where(Cluster.id.in_(pending))
            ).all()
        return [r for r in rates if r is not None] if len(rates) == len(pending) else []

    def every_task_again() -> None:
        from celery import Celery

        # The optional region step runs after the proposals, never before them.
        seen["rates"] = wait_for(region_rates, timeout_s=180, interval_s=1, what="region rates")
        with session_scope(database_url) as session:
            seen["before"] = _versions(session)
        from workers.celery_app import app

        client = Celery("operator", broker=redis_url, backend=redis_url)
        session_ref = f"{APP_ID}/{work.interactions[0]['session_id']}"
        for name, args in EVERY_TASK.items():
            args = tuple(
                APP_ID if a == "APP" else [session_ref] if a == ["SESSION"] else a for a in args
            )
            queue = app.conf.task_routes[name]["queue"]  # where the worker listens for it
            client.send_task(name, args=args, queue=queue).get(timeout=180)
        client.close()
        with session_scope(database_url) as session:
            seen["after"] = _versions(session)

    run = run_scenario(
        scenario, services, workdir=tmp_path / "roles", timeout_s=420, then=every_task_again
    )

    assert not run.timed_out, "the queue was not complete within the time limit"
    score = run.score
    assert {s.intent: (s.recalled, s.kind) for s in score.intents} == {
        intent: (True, kind) for intent, kind in work.planted.items()
    }
    assert score.redundant == 0 and score.spurious == 0 and score.impure_clusters == 0
    assert score.proposals == len(work.planted)
    # Region rates were stored on this database (the sample once overflowed on PostgreSQL):
    # each planted mode's region is mostly failing, since the healthy traffic asks other things.
    rates = seen["rates"]
    assert isinstance(rates, list) and all(rate > 0.5 for rate in rates), rates
    # Every task ran again on this database and left the complete queue as it was.
    assert seen["before"] == seen["after"] and len(seen["after"]) == len(work.planted)  # type: ignore[arg-type]


def _pending(session) -> list[ProposalRow]:  # type: ignore[no-untyped-def]
    return list(
        session.scalars(
            select(ProposalRow).where(ProposalRow.app_id == APP_ID, ProposalRow.status == "pending")
        )
    )


def _versions(session) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    return sorted((row.id, row.version) for row in _pending(session))
