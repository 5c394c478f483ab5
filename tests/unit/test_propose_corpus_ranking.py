"""The proposer with a candidate corpus and expected impact, through the database (SQLite and
PostgreSQL): a knowledge gap names the corpus document its queries match and that the retriever
never returned; a gap with no matching document specifies it; each proposal carries its
expected impact with the parts, and the queue sorts by it."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from refinery.cluster.service import recluster_app
from refinery.corpus.chunking import Document
from refinery.corpus.store import add_documents
from refinery.propose.service import fingerprint_of, propose_for_app
from refinery.review.service import ProposalFilter, list_page
from refinery.store.db import migrate, session_factory
from refinery.store.models import Interaction, ProposalRow
from schemas.proposals import RagSourceProposal
from tests.unit.test_cluster_service_support import (
    MODEL,
    NOW,
    TopicEmbedder,
    add_interactions,
    settings,
    topic_queries,
)

APP = "store"


@pytest.fixture
def proposed(db_url):
    migrate(db_url)
    sessions = session_factory(db_url)
    embedder = TopicEmbedder(noise=0.3)
    cfg = settings()
    with sessions.begin() as session:
        warranty = add_interactions(session, APP, topic_queries("warranty", 20), embedder=embedder)
        add_interactions(session, APP, topic_queries("refund", 8), embedder=embedder)
        add_interactions(session, APP, [f"hello {n}" for n in range(12)], failing=False)
        # The retriever returned faq.md, weakly, for some warranty queries: still a gap, but
        # faq.md is no news to the app.
        session.execute(
            update(Interaction)
            .where(Interaction.id.in_(warranty[:5]))
            .values(sources=[{"source_id": "faq.md", "score": 0.2}])
        )
        add_documents(
            session,
            APP,
            [
                Document("warranty-policy.md", "Warranty", "# Warranty\nbroken screen repair."),
                Document("faq.md", "FAQ", "# FAQ\nwarranty repair cracked screen."),
                Document("shipping.md", "Shipping", "# Shipping\ncourier parcel delivery."),
            ],
            embedder,
            max_chunk_chars=cfg.corpus_chunk_max_chars,
        )
        recluster_app(session, APP, cfg, MODEL, now=NOW)
        result = propose_for_app(session, APP, cfg, MODEL)
    assert len(result.created) == 2
    return sessions, cfg


def _rag(session, topic_word: str) -> RagSourceProposal:
    for row in session.scalars(select(ProposalRow).where(ProposalRow.kind == "rag_source")):
        proposal = RagSourceProposal.model_validate(row.payload)
        if topic_word in proposal.evidence.keywords:
            return proposal
    raise AssertionError(f"no rag proposal about {topic_word}")


def test_a_gap_names_the_matching_document_the_retriever_never_returned(proposed) -> None:
    sessions, cfg = proposed
    with sessions() as session:
        warranty = _rag(session, "warranty")
        refund = _rag(session, "refund")
    names = [c.doc_id for c in warranty.artifact.candidate_documents]
    assert names == ["warranty-policy.md"]  # faq.md was retrieved; shipping.md is off topic
    top = warranty.artifact.candidate_documents[0]
    assert top.matched_queries == 20 and top.score >= cfg.rag_match_floor
    assert warranty.artifact.corpus_version == 1 and warranty.artifact.missing_document is None
    assert "warranty-policy.md" in warranty.rationale
    # No refund document in the corpus: the spec of the one to write.
    assert refund.artifact.candidate_documents == []
    spec = refund.artifact.missing_document
    assert spec is not None and 1 <= len(spec.questions) <= 8


def test_expected_impact_is_shown_by_parts_and_orders_the_queue(proposed) -> None:
    sessions, cfg = proposed
    with sessions() as session:
        warranty = _rag(session, "warranty").evidence.expected_impact
        refund = _rag(session, "refund").evidence.expected_impact
        assert warranty is not None and refund is not None
        assert (warranty.traffic_share, refund.traffic_share) == (
            round(20 / 28, 3),
            round(8 / 28, 3),
        )
        assert warranty.user_share == round(20 / 40, 3)  # every interaction its own session
        assert warranty.severity == 0.5  # failure score 1.0, threshold 1.0
        assert warranty.score > refund.score
        parts = warranty.model_dump()
        assert warranty.score == pytest.approx(
            100 * sum(w * parts[k] for k, w in warranty.weights.items()), abs=0.05
        )
        rows, total, _ = list_page(session, ProposalFilter(app_id=APP), sort="impact")
        scores = [r.payload["evidence"]["expected_impact"]["score"] for r in rows]
        assert total == 2 and scores == sorted(scores, reverse=True)
        # A proposal without a score (drafted before ranking existed) sorts last.
        old = rows[0]
        payload = dict(old.payload)
        payload["evidence"] = {**payload["evidence"], "expected_impact": None}
        old.payload = payload
        session.commit()
        rows, _, _ = list_page(session, ProposalFilter(app_id=APP), sort="impact")
        assert rows[-1].id == old.id


def test_impact_alone_does_not_change_a_proposal(proposed) -> None:
    sessions, cfg = proposed
    with sessions.begin() as session:
        # More healthy traffic moves every share, but the evidence is the same: no redraft.
        add_interactions(session, APP, [f"hi again {n}" for n in range(30)], failing=False)
        rerun = propose_for_app(session, APP, cfg, MODEL)
    assert (rerun.created, rerun.updated) == ([], [])
    with sessions() as session:
        for row in session.scalars(select(ProposalRow)):
            assert row.fingerprint == fingerprint_of(RagSourceProposal.model_validate(row.payload))
