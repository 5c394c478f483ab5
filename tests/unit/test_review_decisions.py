"""refinery.review.decisions: the one-winner transition and the audited attempt."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from refinery.review.decisions import attempt, system_transition, transition, win
from refinery.review.errors import DecisionConflict, InvalidEdit, ReviewError, TransitionRefused
from refinery.store.db import migrate, session_factory
from refinery.store.models import AuditEntry, ProposalRow
from tests.api.helpers import insert_proposal


@pytest.fixture
def sessions(sqlite_url):
    migrate(sqlite_url)
    return session_factory(sqlite_url)


def _audit(sessions, proposal_id: str) -> list[tuple[str, str, str | None, str | None]]:
    with sessions() as session:
        return [
            (a.action, a.outcome, a.from_status, a.to_status)
            for a in session.scalars(
                select(AuditEntry)
                .where(AuditEntry.proposal_id == proposal_id, AuditEntry.action != "create")
                .order_by(AuditEntry.id)
            )
        ]


def test_of_two_writers_who_read_the_same_version_exactly_one_wins(sessions) -> None:
    pid = insert_proposal(sessions, "rag_source")
    with sessions() as first, sessions() as second:
        a, b = first.get(ProposalRow, pid), second.get(ProposalRow, pid)
        assert transition(first, a, status="rejected")
        assert (a.status, a.version) == ("rejected", 2)  # the winner's row is refreshed
        first.commit()
        assert not transition(second, b, status="superseded")
        second.commit()
    with sessions() as session:
        row = session.get(ProposalRow, pid)
        assert (row.status, row.version) == ("rejected", 2)


def test_a_system_transition_is_audited_only_when_it_wins(sessions) -> None:
    pid = insert_proposal(sessions, "rag_source")
    with sessions() as proposer:
        stale = proposer.get(ProposalRow, pid)
        with sessions.begin() as reviewer:  # a reviewer edits it meanwhile
            reviewer.get(ProposalRow, pid).version = 2
        assert not system_transition(
            proposer, stale, actor="system", action="supersede", detail=None, status="superseded"
        )
        proposer.commit()
    assert _audit(sessions, pid) == []
    with sessions.begin() as proposer:
        row = proposer.get(ProposalRow, pid)
        assert system_transition(
            proposer, row, actor="system", action="supersede", detail="gone", status="superseded"
        )
    assert _audit(sessions, pid) == [("supersede", "ok", "pending", "superseded")]


def test_a_refused_attempt_rolls_back_its_writes_and_is_audited_on_its_own(sessions) -> None:
    pid = insert_proposal(sessions, "rag_source")

    def change(session: Session, row: ProposalRow) -> str | None:
        win(session, row, "rejected", decided_by="ann")  # written, then ...
        raise DecisionConflict("someone else first")  # ... refused: must not survive

    with pytest.raises(ReviewError, match="someone else first"):
        attempt(sessions, pid, change, actor="ann", action="reject", target="rejected")
    with sessions() as session:
        row = session.get(ProposalRow, pid)
        assert (row.status, row.version, row.decided_by) == ("pending", 1, None)
    assert _audit(sessions, pid) == [("reject", "refused", "pending", "rejected")]


def test_the_state_machine_refuses_before_anything_is_written(sessions) -> None:
    pid = insert_proposal(sessions, "rag_source")
    with sessions() as session:
        row = session.get(ProposalRow, pid)
        with pytest.raises(TransitionRefused):
            win(session, row, "applied")
        with pytest.raises(DecisionConflict, match="not 7"):
            win(session, row, "rejected", expected_version=7)


def test_a_malformed_request_is_not_an_attempt(sessions) -> None:
    pid = insert_proposal(sessions, "rag_source")

    def change(session: Session, row: ProposalRow) -> str | None:
        raise InvalidEdit("topic", "must not be empty")

    with pytest.raises(InvalidEdit):
        attempt(sessions, pid, change, actor="ann", action="edit", target=None)
    assert _audit(sessions, pid) == []

    def stored(session: Session, row: ProposalRow) -> str | None:
        raise InvalidEdit("artifact.topic", "too long", stored=True)

    with pytest.raises(InvalidEdit):
        attempt(sessions, pid, stored, actor="ann", action="approve", target="approved")
    assert _audit(sessions, pid) == [("approve", "refused", "pending", "approved")]
