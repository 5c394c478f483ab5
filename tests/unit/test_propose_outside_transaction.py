"""propose_and_commit asks a drafter (which may call a remote model) with no database transaction
open, then stores its words in a transaction that reads everything again: the same proposals as
the templates in one transaction, a draft whose evidence changed meanwhile worded again (or, on
the last pass, left in the template's words), a reviewer's decision made meanwhile left alone.

The complaint classifier is replaced by a keyword stand-in here (its own test uses the model)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

import refinery.signals.evidence as evidence
import tests.unit.test_cluster_service_support as support
from refinery.cluster.service import recluster_app
from refinery.propose.drafters import TemplateDrafter, marked
from refinery.propose.drafting import DraftInput
from refinery.propose.service import (
    STALE_WORDING,
    AnyProposal,
    propose_and_commit,
    propose_for_app,
)
from refinery.review.decisions import reject
from refinery.settings import Settings
from refinery.signals.complaints import OTHER, Complaint
from refinery.store.db import engine_for, migrate, session_factory
from refinery.store.models import Cluster, Feedback, Interaction, ProposalRow
from tests.unit.test_cluster_service_support import (
    MODEL,
    NOW,
    TopicEmbedder,
    add_interactions,
    settings,
    topic_queries,
)


def _fake_classify(texts: list[str]) -> list[Complaint]:
    return [
        Complaint("length", 1.0, 1.0, ("length",)) if "too long" in t else Complaint(OTHER, 0, 0)
        for t in texts
    ]


@pytest.fixture(autouse=True)
def keyword_classifier(monkeypatch) -> None:
    monkeypatch.setattr(evidence, "classify", _fake_classify)


def _app(tmp_path, name: str, monkeypatch) -> tuple[Settings, sessionmaker[Session]]:  # type: ignore[no-untyped-def]
    """An app with two re-clustered failure modes: answers too long (a prompt edit) and a
    knowledge gap. The same rows and ids in every database built here."""
    monkeypatch.setattr(support, "_ids", itertools.count(1))
    url = f"sqlite:///{tmp_path}/{name}.db"
    migrate(url)
    sessions = session_factory(url)
    cfg = settings(database_url=url)
    embedder = TopicEmbedder(noise=0.3)
    with sessions.begin() as session:
        long_answers = add_interactions(
            session, "shop", topic_queries("refund", 12), embedder=embedder
        )
        add_interactions(session, "shop", topic_queries("password", 12), embedder=embedder)
        for row in session.scalars(select(Interaction).where(Interaction.id.in_(long_answers))):
            row.sources = [{"id": "kb-1", "score": 0.9}]
            row.response = "Here is what the help center says."
            session.add(
                Feedback(
                    event_id=f"fb-{row.id}",
                    app_id="shop",
                    interaction_id=row.interaction_id,
                    kind="comment",
                    text="way too long",
                    occurred_at=NOW,
                    joined=True,
                )
            )
        session.flush()
        recluster_app(session, "shop", cfg, MODEL, now=NOW)
    return cfg, sessions


def _stored(sessions: sessionmaker[Session]) -> dict[tuple[str, str], tuple]:
    with sessions() as session:
        return {
            (p.cluster_id, p.kind): (p.status, p.title, p.payload, p.fingerprint)
            for p in session.scalars(select(ProposalRow))
        }


TEMPLATES = TemplateDrafter()


class OutsideDrafter:
    """Words like `words` (default: the templates') and records, for each call, how many database
    connections were checked out; `meanwhile(data)` runs first (someone else's change)."""

    name = "stub"

    def __init__(
        self,
        url: str,
        words: Callable[[DraftInput, AnyProposal], AnyProposal] = TEMPLATES.word,
        meanwhile: Callable[[DraftInput], None] = lambda data: None,
    ) -> None:
        self.pool = engine_for(url).pool
        self.words = words
        self.meanwhile = meanwhile
        self.calls: list[tuple[str, int]] = []  # (cluster id, connections checked out)

    def word(self, data: DraftInput, proposal: AnyProposal) -> AnyProposal:
        self.calls.append((data.cluster_id, self.pool.checkedout()))  # type: ignore[attr-defined]
        self.meanwhile(data)
        return self.words(data, proposal)


def _retitle(sessions: sessionmaker[Session], cluster_id: str) -> None:
    """Someone else changes the cluster's evidence (its title) and commits."""
    with sessions.begin() as session:
        session.execute(
            update(Cluster)
            .where(Cluster.id == cluster_id)
            .values(title=f"retitled {next(_titles)}")
        )


_titles = itertools.count(1)


def test_the_drafter_is_asked_with_no_transaction_open_and_proposals_are_unchanged(
    tmp_path, monkeypatch
) -> None:
    cfg, sessions = _app(tmp_path, "outside", monkeypatch)
    drafter = OutsideDrafter(cfg.database_url)
    result = propose_and_commit("shop", cfg, MODEL, drafter=drafter)
    kinds = sorted(kind for _, kind in _stored(sessions))
    assert kinds == ["rag_source", "system_prompt_edit"]
    assert len(result.created) == 2 and not result.unworded
    # Asked once per stored draft, never while a connection (and so a transaction) was held.
    assert sorted(drafter.calls) == sorted((cid, 0) for cid, _ in _stored(sessions))

    # The same proposals as the templates drafting in one transaction (the default).
    base_cfg, base = _app(tmp_path, "inside", monkeypatch)
    with base() as session:
        inside = propose_for_app(session, "shop", base_cfg, MODEL)
        session.commit()
    assert _stored(sessions) == _stored(base)
    assert len(inside.created) == len(result.created)

    # Unchanged evidence: nothing to word, nothing asked, one pass.
    again = propose_and_commit("shop", cfg, MODEL, drafter=drafter)
    assert sorted(again.unchanged) == sorted(result.created) and len(drafter.calls) == 2
    # And the default path, templates in one transaction, agrees.
    assert sorted(propose_and_commit("shop", cfg, MODEL).unchanged) == sorted(result.created)


def _worded_by_stub(data: DraftInput, proposal: AnyProposal) -> AnyProposal:
    return marked(proposal, "stub", None)


def test_a_draft_whose_evidence_changed_while_worded_is_worded_again(tmp_path, monkeypatch) -> None:
    cfg, sessions = _app(tmp_path, "stale", monkeypatch)
    changed: set[str] = set()

    def once(data: DraftInput) -> None:
        if data.cluster_id not in changed:
            changed.add(data.cluster_id)
            _retitle(sessions, data.cluster_id)

    drafter = OutsideDrafter(cfg.database_url, words=_worded_by_stub, meanwhile=once)
    propose_and_commit("shop", cfg, MODEL, drafter=drafter)
    stored = _stored(sessions)
    assert len(stored) == 2 and len(drafter.calls) == 4  # each draft worded twice
    with sessions() as session:
        titles = {c.id: c.title for c in session.scalars(select(Cluster))}
    for (cluster_id, _), (_, _, payload, _) in stored.items():
        assert payload["evidence"]["title"] == titles[cluster_id]  # the evidence as it is now
        assert payload["evidence"]["drafted_by"] == "stub"


def test_evidence_that_keeps_changing_leaves_the_template_words_on_the_last_pass(
    tmp_path, monkeypatch
) -> None:
    cfg, sessions = _app(tmp_path, "moving", monkeypatch)
    drafter = OutsideDrafter(
        cfg.database_url,
        words=_worded_by_stub,
        meanwhile=lambda data: _retitle(sessions, data.cluster_id),
    )
    result = propose_and_commit("shop", cfg, MODEL, drafter=drafter)
    assert len(result.created) == 2 and len(drafter.calls) == 4  # passes 1 and 2 each asked
    with sessions() as session:
        titles = {c.id: c.title for c in session.scalars(select(Cluster))}
    for (cluster_id, _), (_, _, payload, _) in _stored(sessions).items():
        assert payload["evidence"]["title"] == titles[cluster_id]
        assert payload["evidence"]["drafted_by"] == "template"
        assert payload["evidence"]["fallback_reason"] == STALE_WORDING


def test_a_reviewer_decision_made_while_the_model_words_a_refresh_stands(
    tmp_path, monkeypatch
) -> None:
    cfg, sessions = _app(tmp_path, "decided", monkeypatch)
    propose_and_commit("shop", cfg, MODEL, drafter=OutsideDrafter(cfg.database_url))
    before = _stored(sessions)
    with sessions() as session:
        edit = session.scalars(
            select(ProposalRow).where(ProposalRow.kind == "system_prompt_edit")
        ).one()
    _retitle(sessions, edit.cluster_id)  # a refresh is due

    def reviewer_rejects(data: DraftInput) -> None:
        if data.cluster_id == edit.cluster_id:
            reject(sessions, edit.id, actor="alice", comment="not now")

    drafter = OutsideDrafter(cfg.database_url, meanwhile=reviewer_rejects)
    result = propose_and_commit("shop", cfg, MODEL, drafter=drafter)
    assert drafter.calls == [(edit.cluster_id, 0)]
    assert edit.id in result.unchanged and not result.created and not result.updated
    after = _stored(sessions)
    status, _, payload, _ = after[(edit.cluster_id, "system_prompt_edit")]
    assert status == "rejected"
    assert payload == before[(edit.cluster_id, "system_prompt_edit")][2]  # as the reviewer saw it
    assert len(after) == 2
