"""Guards between the proposer and reviewers: nobody overwrites a decision they did not see, and
an approved prompt edit never undoes a newer prompt version."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from refinery.review.decisions import approve, transition
from refinery.review.errors import DecisionConflict
from refinery.store.db import migrate, session_factory
from refinery.store.models import AuditEntry, OutboxRow, ProposalRow
from refinery.store.prompts import current_prompt, set_prompt
from schemas.artifacts import prompt_diff
from schemas.proposals import (
    Evidence,
    SystemPromptEdit,
    SystemPromptEditProposal,
)


def _prompt_edit_row(base_version: str, base_text: str) -> ProposalRow:
    proposal = SystemPromptEditProposal(
        app_id="shop",
        cluster_id="c1",
        title="t",
        rationale="r",
        evidence=Evidence(cluster_id="c1", label="l", keywords=["k"], size=5, examples=[]),
        artifact=SystemPromptEdit(
            prompt_name="main",
            base_version=base_version,
            base_text=base_text,
            proposed_text=base_text + "Be brief.\n",
            instruction="Be brief.",
            diff=prompt_diff("main", base_version, base_text, base_text + "Be brief.\n"),
        ),
    )
    return ProposalRow(
        id="p1",
        app_id="shop",
        cluster_id="c1",
        kind=proposal.kind.value,
        status="pending",
        version=1,
        title="t",
        payload=proposal.model_dump(mode="json"),
        fingerprint="f",
    )


@pytest.fixture
def sessions(sqlite_url):
    migrate(sqlite_url)
    return session_factory(sqlite_url)


def test_approving_an_edit_of_an_outdated_prompt_is_refused_and_audited(sessions):
    with sessions.begin() as session:
        set_prompt(session, app_id="shop", name="main", text="Be helpful.\n", source="cli")
        session.add(_prompt_edit_row("v1", "Be helpful.\n"))
    with sessions.begin() as session:  # someone ships v2 after the edit was drafted
        set_prompt(session, app_id="shop", name="main", text="Be helpful and kind.\n", source="cli")
    with pytest.raises(DecisionConflict, match="drafted against v1"):
        approve(sessions, "p1", actor="alice", topic="t")
    with sessions() as session:
        assert session.get(ProposalRow, "p1").status == "pending"
        assert current_prompt(session, app_id="shop", name="main").text == "Be helpful and kind.\n"
        assert session.scalars(select(OutboxRow)).all() == []
        audit = session.scalars(select(AuditEntry)).all()
        assert [(a.action, a.outcome) for a in audit] == [("approve", "refused")]


def test_approving_an_edit_of_the_current_prompt_ships_it(sessions):
    with sessions.begin() as session:
        set_prompt(session, app_id="shop", name="main", text="Be helpful.\n", source="cli")
        session.add(_prompt_edit_row("v1", "Be helpful.\n"))
    approve(sessions, "p1", actor="alice", topic="t")
    with sessions() as session:
        current = current_prompt(session, app_id="shop", name="main")
        assert (current.version, current.text) == ("v2", "Be helpful.\nBe brief.\n")
        assert len(session.scalars(select(OutboxRow)).all()) == 1


def test_the_proposer_does_not_overwrite_a_decision_it_did_not_see(sessions):
    with sessions.begin() as session:
        session.add(_prompt_edit_row("v1", "x\n"))
    with sessions() as proposer:
        stale = proposer.get(ProposalRow, "p1")  # the proposer read version 1 ...
        with sessions.begin() as reviewer:  # ... a reviewer rejects it meanwhile ...
            row = reviewer.get(ProposalRow, "p1")
            row.status, row.version = "rejected", 2
        assert not transition(proposer, stale, status="superseded")  # ... the proposer loses
        proposer.commit()
    with sessions() as session:
        assert session.get(ProposalRow, "p1").status == "rejected"
