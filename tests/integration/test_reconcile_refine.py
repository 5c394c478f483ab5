"""A refine lost with a killed worker is sent again by the reconciler and runs (issue 16): the
lost task's `scheduled` marker (workers/scheduling.py) lives REFINE_MAX_DELAY_S + 60 s, and a
re-sent refine must not be coalesced into it, or every attempt is spent on nothing and the app's
refine is parked.

Real Redis and the real reconciler, scheduler and `refine_app`; Celery is replaced by a list of
sent tasks, the refine's work by a recorder, and the reconciler's clock is passed in."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis
from sqlalchemy import select

from refinery.embed import embedding_model_name
from refinery.ingest.storage import query_hash
from refinery.reconcile.service import reconcile
from refinery.store.db import migrate, session_factory
from refinery.store.models import ClusterRun, FailedWork, Interaction
from workers import tasks
from workers.scheduling import RefineScheduler

pytestmark = pytest.mark.integration


class Sent:
    """Stands in for Celery: `refine_app.apply_async` lands in a list; runs are recorded."""

    def __init__(self, monkeypatch) -> None:
        self.tasks: list[str] = []
        self.runs: list[str] = []
        monkeypatch.setattr(tasks.refine_app, "apply_async", self.send)
        monkeypatch.setattr(tasks, "_recluster", self.recluster)
        monkeypatch.setattr(tasks, "_propose", lambda app_id: {"app_id": app_id})

    def send(self, args, countdown: float = 0.0, **options) -> None:
        self.tasks.append(args[0])

    def recluster(self, app_id: str) -> dict:
        self.runs.append(app_id)
        return {"app_id": app_id}

    def take(self) -> list[str]:
        sent, self.tasks = self.tasks, []
        return sent


def test_a_refine_lost_with_its_worker_is_resent_and_runs(
    redis_url, sqlite_url, make_settings, activate, monkeypatch
) -> None:
    settings = activate(
        make_settings(
            redis_url=redis_url, database_url=sqlite_url, reconcile_stale_s=10,
            reconcile_max_attempts=3, region_sample_size=0,
        )
    )  # fmt: skip
    migrate(sqlite_url)
    sessions = session_factory(sqlite_url)
    model = embedding_model_name(settings)
    now = datetime.now(UTC)
    with sessions.begin() as s:
        # The app's failing query was placed after its last re-cluster: a refine is due.
        s.add(ClusterRun(id="r1", app_id="shop", started_at=now - timedelta(hours=2),
                         finished_at=now - timedelta(hours=2)))  # fmt: skip
        s.add(
            Interaction(
                event_id=f"e-{uuid.uuid4().hex}", app_id="shop", interaction_id="i-1",
                session_id="s1", occurred_at=now, query="refund please", response="no",
                sources=[], query_hash=query_hash("refund please"), failing=True,
                failure_reasons=["thumbs_down"], failure_score=1.0,
                cluster_checked_at=now - timedelta(hours=1),
            )
        )  # fmt: skip
    sent = Sent(monkeypatch)

    # New failing queries requested a refine; a worker took the fired task and was killed.
    tasks.request_refine(["shop"])
    assert sent.take() == ["shop"]
    tasks.request_refine(["shop"])
    assert sent.take() == [], "coalesced into the task on its way (the normal case)"

    def reconcile_at(at: datetime) -> dict:
        with sessions.begin() as s:
            return reconcile(
                s, settings, model, tasks.reconcile_enqueuers(), now=at, kinds=("refine",)
            ).as_dict()

    assert reconcile_at(now)["tracked"]["refine"] == 1
    for attempt in range(1, settings.reconcile_max_attempts + 1):
        at = now + timedelta(seconds=11 * attempt)
        assert reconcile_at(at)["reenqueued"]["refine"] == 1
        # Each re-sent refine is a task of its own, not merged into the lost one...
        assert sent.take() == ["shop"], f"attempt {attempt} sent no task"
    # ...and the last one runs the refine.
    outcome = tasks.refine_app.run("shop")
    assert outcome["action"] == "run" and sent.runs == ["shop"]

    # The refine finished (a re-cluster after the placement): the item is forgotten, not parked.
    with sessions.begin() as s:
        s.add(ClusterRun(id="r2", app_id="shop", started_at=now, finished_at=now))
    result = reconcile_at(now + timedelta(seconds=60))
    assert result["forgotten"]["refine"] == 1 and result["parked"]["refine"] == 0
    with sessions() as s:
        assert s.scalars(select(FailedWork)).all() == []


def test_a_resend_replaces_the_marker_and_a_second_fired_task_goes_idle(
    redis_url, make_settings, activate
) -> None:
    settings = activate(make_settings(redis_url=redis_url, refine_min_interval_s=0))
    scheduler = RefineScheduler(redis.Redis.from_url(redis_url), settings)
    assert scheduler.request("shop") is not None  # the task that will be lost
    assert scheduler.request("shop", urgent=True) is None
    assert scheduler.request("shop", urgent=True, resend=True) == 0.0
    # Had the first task not been lost after all: one of the two runs, the other finds nothing.
    assert scheduler.fire("shop").action == "run"
    assert scheduler.fire("shop").action == "idle"
