"""The reconciler (refinery.reconcile) on SQLite and PostgreSQL: what the database says is due is
re-enqueued when it has not progressed, counted per item, parked after RECONCILE_MAX_ATTEMPTS with
the last error a task recorded, forgotten once it progressed; `refinery failed list|retry`.

The queue is replaced by a recorder here: what is under test is what gets sent, and when
(tests/integration/test_reconcile_redis.py runs it against a real Redis and worker)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import select

from refinery.embed import embedding_model_name
from refinery.ingest.storage import query_hash
from refinery.reconcile.service import Enqueuers, reconcile, record_error
from refinery.store.db import migrate, session_factory
from refinery.store.models import ClusterRun, Embedding, FailedWork, Interaction, SessionState

pytestmark = pytest.mark.integration

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


class Recorder:
    def __init__(self) -> None:
        self.sent: dict[str, list] = {"embed": [], "assign": [], "session": [], "refine": []}

    def enqueuers(self) -> Enqueuers:
        return Enqueuers(
            embed=lambda ids: self.sent["embed"].extend(ids),
            assign=lambda apps: self.sent["assign"].extend(apps),
            session=lambda keys: self.sent["session"].extend(keys),
            refine=lambda apps: self.sent["refine"].extend(apps),
        )

    def take(self) -> dict[str, list]:
        sent, self.sent = self.sent, {k: [] for k in self.sent}
        return sent


def _interaction(app_id: str, query: str, *, failing: bool = True, **extra) -> Interaction:  # type: ignore[no-untyped-def]
    return Interaction(
        event_id=f"e-{uuid.uuid4().hex}", app_id=app_id,
        interaction_id=f"i-{uuid.uuid4().hex[:12]}",
        session_id="s1", occurred_at=NOW, query=query, response="no", sources=[],
        query_hash=query_hash(query), failing=failing, failure_reasons=["thumbs_down"],
        failure_score=1.0, **extra,
    )  # fmt: skip


def _embedding(model: str, query: str) -> Embedding:
    vector = np.ones(4, dtype=np.float32) / 2
    return Embedding(model=model, text_hash=query_hash(query), dim=4, vector=vector.tobytes())


def test_due_work_is_reenqueued_counted_parked_and_forgotten(db_url, make_settings) -> None:
    settings = make_settings(database_url=db_url, reconcile_stale_s=60, reconcile_max_attempts=2)
    migrate(db_url)
    sessions = session_factory(db_url)
    model = embedding_model_name(settings)
    with sessions() as s:
        unembedded = _interaction("a", "where is my parcel")
        unplaced = _interaction("a", "cancel my order")  # embedded, never placed
        placed = _interaction("b", "refund please", cluster_checked_at=NOW - timedelta(hours=1))
        healthy = _interaction("a", "thanks", failing=False)
        s.add_all([unembedded, unplaced, placed, healthy])
        s.add_all([_embedding(model, "cancel my order"), _embedding(model, "refund please")])
        # App b: a query placed after its last re-cluster finished (its refine was lost).
        s.add(ClusterRun(id="r1", app_id="b", started_at=NOW - timedelta(hours=3),
                         finished_at=NOW - timedelta(hours=2)))  # fmt: skip
        # A session whose rephrase analysis never ran, quiet for 10 minutes; one analysed.
        s.add(SessionState(app_id="a", session_id="lost", last_occurred_at=NOW,
                           last_seen_at=NOW - timedelta(minutes=10)))  # fmt: skip
        s.add(SessionState(app_id="a", session_id="done", last_occurred_at=NOW,
                           last_seen_at=NOW - timedelta(minutes=10),
                           analyzed_at=NOW - timedelta(minutes=10)))  # fmt: skip
        s.commit()
        ids = {"unembedded": unembedded.id, "unplaced": unplaced.id}
    recorder = Recorder()

    def run(at: datetime) -> dict:
        with sessions.begin() as s:
            return reconcile(s, settings, model, recorder.enqueuers(), now=at).as_dict()

    first = run(NOW)
    assert first["tracked"] == {"embed": 1, "assign": 1, "session": 1, "refine": 1}
    assert recorder.take() == {"embed": [], "assign": [], "session": [], "refine": []}, (
        "seen due once: ingest or a task may still be on it; nothing is sent yet"
    )
    run(NOW + timedelta(seconds=30))
    assert not any(recorder.take().values()), "not yet RECONCILE_STALE_S"

    second = run(NOW + timedelta(seconds=61))
    assert second["reenqueued"] == {"embed": 1, "assign": 1, "session": 1, "refine": 1}
    assert recorder.take() == {
        "embed": [ids["unembedded"]], "assign": ["a"], "session": [("a", "lost")], "refine": ["b"],
    }  # fmt: skip

    # The embed task fails for good on its item and records why; the rest makes progress.
    with sessions.begin() as s:
        record_error(s, "embed", RuntimeError("tokenizer exploded"), keys=[str(ids["unembedded"])])
        s.get(Interaction, ids["unplaced"]).cluster_checked_at = NOW + timedelta(seconds=70)
        s.get(SessionState, ("a", "lost")).analyzed_at = NOW - timedelta(minutes=10)
        s.add(ClusterRun(id="r2", app_id="b", started_at=NOW, finished_at=NOW))
    third = run(NOW + timedelta(seconds=122))
    assert third["forgotten"] == {"embed": 0, "assign": 1, "session": 1, "refine": 1}
    assert recorder.take()["embed"] == [ids["unembedded"]]
    fourth = run(NOW + timedelta(seconds=183))
    assert fourth["parked"]["embed"] == 1 and not any(recorder.take().values())
    # App a now has a query placed RECONCILE_STALE_S ago and never a re-cluster: its refine is due.
    assert fourth["tracked"]["refine"] == 1
    with sessions() as s:
        (row,) = s.scalars(select(FailedWork).where(FailedWork.kind == "embed")).all()
    assert (row.kind, row.item_key, row.attempts) == ("embed", str(ids["unembedded"]), 2)
    assert row.parked_at is not None and row.last_error == "RuntimeError: tokenizer exploded"
    run(NOW + timedelta(hours=1))
    sent = recorder.take()
    assert sent["embed"] == [], "a parked item waits for a person"
    assert sent["refine"] == ["a"]

    # Someone embeds it after all: the parked row goes.
    with sessions.begin() as s:
        s.add(_embedding(model, "where is my parcel"))
    run(NOW + timedelta(hours=2))
    with sessions() as s:
        assert s.scalars(select(FailedWork).where(FailedWork.kind == "embed")).all() == []


def test_failed_cli_lists_and_retries(db_url, make_settings, activate, monkeypatch, capsys) -> None:
    from refinery import cli
    from workers import tasks

    settings = activate(make_settings(database_url=db_url, reconcile_stale_s=0,
                                      reconcile_max_attempts=1))  # fmt: skip
    migrate(db_url)
    sessions = session_factory(db_url)
    model = embedding_model_name(settings)
    with sessions.begin() as s:
        row = _interaction("shop", "my card was declined")
        s.add(row)
    with sessions() as s:
        interaction_id = s.scalars(select(Interaction.id)).one()
    recorder = Recorder()
    monkeypatch.setattr(tasks, "reconcile_enqueuers", recorder.enqueuers)
    for _ in range(2):  # attempt 1, then parked
        with sessions.begin() as s:
            reconcile(s, settings, model, recorder.enqueuers(), now=datetime.now(UTC))
    assert cli.main(["failed", "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["kind"] == "embed" and listed["key"] == str(interaction_id)
    assert listed["attempts"] == 1 and "still due after 1 re-enqueue" in listed["last_error"]
    recorder.take()

    assert cli.main(["failed", "retry"]) == 2, "retry names what it retries"
    assert cli.main(["failed", "retry", str(listed["id"])]) == 0
    assert recorder.take()["embed"] == [interaction_id]
    assert cli.main(["failed", "list"]) == 0
    assert "no failed work" in capsys.readouterr().out
    with sessions() as s:
        back = s.scalars(select(FailedWork)).one()
    assert back.parked_at is None and back.attempts == 1
