"""One proposal per failure mode (refinery.propose): a cluster's kind follows the evidence of most
of its members, and clusters of one topic split in two reach reviewers as one proposal, with
each part listed. Pure drafting and synthetic vectors, plus one SQLite pass through the upsert."""

from __future__ import annotations

import numpy as np
from sqlalchemy import select

from refinery.cluster.service import recluster_app
from refinery.propose.drafting import DraftInput, MemberEvidence, draft
from refinery.propose.service import (
    ClusterDraft,
    ProposeResult,
    _one_proposal_per_failure_mode,
    propose_for_app,
)
from refinery.propose.topics import TopicVectors, cohesion, group_same_topic, topic_closeness
from refinery.store.models import Cluster, Interaction, ProposalRow
from schemas.proposals import (
    Evidence,
    FineTuneDatasetProposal,
    RagSourceProposal,
    SystemPromptEditProposal,
)
from tests.unit.test_cluster_service_support import (
    MODEL,
    NOW,
    TopicEmbedder,
    add_interactions,
    clusters_of,
    make_db,
    settings,
    topic_queries,
)

CLOSENESS = settings().proposal_merge_topic_closeness
DIM = 64


# --- evidence builders -----------------------------------------------------------------------


def _member(i: int, *, feedback=(), sources=None, response="Here is the answer.") -> MemberEvidence:
    return MemberEvidence(
        interaction_id=f"i-{i}",
        query=f"how do I do thing number {i}",
        response=response,
        sources=[{"id": "kb-1", "score": 0.9}] if sources is None else sources,
        feedback=list(feedback),
        occurred_at=f"2026-03-10T12:{i % 60:02d}:00",
    )


def _too_long(i: int) -> MemberEvidence:
    return _member(i, feedback=[("thumbs_down", None, None), ("comment", None, "way too long")])


def _corrected(i: int) -> MemberEvidence:
    return _member(i, feedback=[("correction", None, f"The right answer to {i}.")])


def _knowledge_gap(i: int) -> MemberEvidence:
    return _member(i, sources=[], response="I'm not sure, I don't have information on that.")


def _input(cluster_id: str, members: list[MemberEvidence], keywords=("topic",)) -> DraftInput:
    cfg = settings()
    return DraftInput(
        app_id="shop",
        cluster_id=cluster_id,
        keywords=list(keywords),
        members=members,
        evidence=Evidence(
            cluster_id=cluster_id,
            label=" ".join(keywords),
            keywords=list(keywords),
            size=len(members),
            examples=[],
        ),
        prompt_name="default",
        prompt_version="v1",
        prompt_text="You are a helpful assistant.",
        retrieval_low_score=cfg.retrieval_low_score,
        retrieval_gap_fraction=cfg.retrieval_gap_fraction,
        min_corrections=cfg.proposal_min_corrections,
        min_evidence_share=cfg.proposal_min_evidence_share,
    )


# --- kind by majority ------------------------------------------------------------------------


def test_length_complaints_of_most_members_outweigh_a_few_neighbouring_corrections() -> None:
    """The outside tester's case: 30 members, 26 say "too long", 4 carry corrections."""
    members = [_too_long(i) for i in range(26)] + [_corrected(i) for i in range(26, 30)]
    proposal = draft(_input("c1", members))
    assert isinstance(proposal, SystemPromptEditProposal)
    assert "26 of 30 failing interactions complain about length" in proposal.rationale
    assert "4 carry a user correction" in proposal.rationale


def test_corrections_on_most_members_make_a_dataset_even_beside_complaints() -> None:
    members = [_corrected(i) for i in range(20)] + [_too_long(i) for i in range(20, 30)]
    proposal = draft(_input("c1", members))
    assert isinstance(proposal, FineTuneDatasetProposal)
    assert proposal.artifact.rows == 20
    assert "10 of 30 failing interactions complain about length" in proposal.rationale


def test_a_few_corrections_alone_are_noise_not_a_dataset() -> None:
    members = [_corrected(i) for i in range(4)] + [_member(i) for i in range(4, 30)]
    assert draft(_input("c1", members)) is None


def test_dominant_corrections_below_the_dataset_row_minimum_make_no_dataset() -> None:
    members = [_corrected(0), _corrected(1), _member(2), _member(3)]
    assert draft(_input("c1", members)) is None


def test_knowledge_gaps_of_most_members_make_a_rag_source_beside_a_few_corrections() -> None:
    members = [_knowledge_gap(i) for i in range(24)] + [_corrected(i) for i in range(24, 30)]
    proposal = draft(_input("c1", members))
    assert isinstance(proposal, RagSourceProposal)
    assert "6 carry a user correction" in proposal.rationale


# --- same topic from the vectors -------------------------------------------------------------


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _topic_members(centre: np.ndarray, n: int, seed: int, noise: float = 0.09) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return _unit(centre + noise * rng.standard_normal((n, len(centre))))


def _centres(similarity: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two unit topic centres whose cosine is `similarity`."""
    rng = np.random.default_rng(seed)
    a = _unit(rng.standard_normal(DIM))
    b = rng.standard_normal(DIM)
    b = _unit(b - (b @ a) * a)
    return a, _unit(similarity * a + np.sqrt(1 - similarity**2) * b)


def _split(members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two halves of one topic, cut across its widest spread, as a clustering might cut it."""
    centred = members - members.mean(axis=0)
    first_axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    side = centred @ first_axis >= 0
    return members[side], members[~side]


def test_a_topic_split_in_two_is_one_topic() -> None:
    centre, _ = _centres(0.0)
    half_a, half_b = _split(_topic_members(centre, 40, seed=1))
    a, b = TopicVectors.of(half_a), TopicVectors.of(half_b)
    assert topic_closeness(a, b) >= CLOSENESS
    assert group_same_topic([a, b], CLOSENESS) == [[0, 1]]


def test_neighbouring_topics_stay_apart() -> None:
    """Centres 0.6 apart in cosine: closer than most topics of an app, still two topics."""
    ca, cb = _centres(0.6)
    a = TopicVectors.of(_topic_members(ca, 20, seed=1))
    b = TopicVectors.of(_topic_members(cb, 20, seed=2))
    assert cohesion(a) > 0.55 and cohesion(b) > 0.55  # as loose as real intent clusters
    assert topic_closeness(a, b) < CLOSENESS
    assert group_same_topic([a, b], CLOSENESS) == [[0], [1]]


def test_a_split_topic_merges_while_its_neighbour_stays_apart() -> None:
    ca, cb = _centres(0.6)
    half_a, half_b = _split(_topic_members(ca, 40, seed=3))
    topics = [
        TopicVectors.of(half_a),
        TopicVectors.of(_topic_members(cb, 20, seed=4)),
        TopicVectors.of(half_b),
        None,  # a cluster without vectors is its own topic
    ]
    assert group_same_topic(topics, CLOSENESS) == [[0, 2], [1], [3]]


# --- merging drafts --------------------------------------------------------------------------


def _cluster(cluster_id: str, size: int) -> Cluster:
    return Cluster(id=cluster_id, app_id="shop", label=cluster_id, size=size, centroid=b"")


def _split_topic_vectors(sizes: tuple[int, int]) -> tuple[TopicVectors, TopicVectors]:
    centre, _ = _centres(0.0, seed=5)
    members = _topic_members(centre, sum(sizes), seed=6)
    order = np.argsort(members @ _unit(np.arange(DIM, dtype=float)))
    return TopicVectors.of(members[order[: sizes[0]]]), TopicVectors.of(members[order[sizes[0] :]])


def test_split_knowledge_gap_is_one_proposal_anchored_on_the_larger_cluster() -> None:
    small, large = _split_topic_vectors((8, 12))
    drafts = [
        ClusterDraft(
            _cluster("c-a", 8),
            _input("c-a", [_knowledge_gap(i) for i in range(8)], ("fee", "restock")),
            small,
        ),
        ClusterDraft(
            _cluster("c-b", 12),
            _input("c-b", [_knowledge_gap(i) for i in range(8, 20)], ("restock", "fee")),
            large,
        ),
    ]
    assert topic_closeness(small, large) >= CLOSENESS
    out = _one_proposal_per_failure_mode(drafts, CLOSENESS, ProposeResult())
    assert len(out) == 1
    anchor, proposal = out[0]
    assert anchor.id == "c-b" and proposal.cluster_id == "c-b"
    assert isinstance(proposal, RagSourceProposal)
    ev = proposal.evidence
    assert [(p.cluster_id, p.size, p.label) for p in ev.parts] == [
        ("c-b", 12, "restock fee"),
        ("c-a", 8, "fee restock"),
    ]
    assert ev.size == sum(p.size for p in ev.parts) == 20
    assert ev.related_cluster_ids == ["c-a"]
    assert "20 of 20 failing interactions" in proposal.rationale
    assert "Merged from 2 clusters" in proposal.rationale
    # Same input, same anchor and content: the upsert's fingerprint does not churn.
    again = _one_proposal_per_failure_mode(drafts, CLOSENESS, ProposeResult())
    assert again[0][0].id == "c-b" and again[0][1] == proposal


def test_knowledge_gaps_on_neighbouring_topics_stay_two_proposals() -> None:
    ca, cb = _centres(0.6, seed=7)
    drafts = [
        ClusterDraft(
            _cluster(cid, 12),
            _input(cid, [_knowledge_gap(i) for i in range(12)], (cid,)),
            TopicVectors.of(_topic_members(centre, 12, seed=seed)),
        )
        for cid, centre, seed in (("c-a", ca, 8), ("c-b", cb, 9))
    ]
    out = _one_proposal_per_failure_mode(drafts, CLOSENESS, ProposeResult())
    assert sorted(c.id for c, _ in out) == ["c-a", "c-b"]
    assert all(p.evidence.parts == [] for _, p in out)


def test_different_kinds_never_merge_even_on_one_topic() -> None:
    left, right = _split_topic_vectors((10, 10))
    gaps, fixes = [_knowledge_gap(i) for i in range(10)], [_corrected(i) for i in range(10)]
    drafts = [
        ClusterDraft(_cluster("c-a", 10), _input("c-a", gaps), left),
        ClusterDraft(_cluster("c-b", 10), _input("c-b", fixes), right),
    ]
    out = _one_proposal_per_failure_mode(drafts, CLOSENESS, ProposeResult())
    assert sorted((c.id, p.kind.value) for c, p in out) == [
        ("c-a", "rag_source"),
        ("c-b", "fine_tune_dataset"),
    ]


def test_same_prompt_edit_merges_across_topics() -> None:
    """One behaviour spans topics: the same instruction is one edit, whatever the topics."""
    ca, cb = _centres(0.0, seed=10)
    drafts = [
        ClusterDraft(
            _cluster(cid, n),
            _input(cid, [_too_long(i) for i in range(n)], (cid,)),
            TopicVectors.of(_topic_members(centre, n, seed=n)),
        )
        for cid, centre, n in (("c-a", ca, 9), ("c-b", cb, 14))
    ]
    out = _one_proposal_per_failure_mode(drafts, CLOSENESS, ProposeResult())
    assert len(out) == 1 and out[0][0].id == "c-b"
    assert [(p.cluster_id, p.size) for p in out[0][1].evidence.parts] == [("c-b", 14), ("c-a", 9)]
    assert out[0][1].evidence.size == 23


# --- through the database: idempotent, merged-away parts leave no pending proposal -----------


def _split_cluster(session, cluster: Cluster, moved: list[int], new_id: str) -> None:
    """Move `moved` interactions of `cluster` into a new cluster, as a re-cluster split would."""
    session.add(
        Cluster(
            id=new_id,
            app_id=cluster.app_id,
            label=cluster.label,
            keywords=list(cluster.keywords),
            size=len(moved),
            centroid=cluster.centroid,
            active=True,
        )
    )
    for row in session.scalars(select(Interaction).where(Interaction.id.in_(moved))):
        row.cluster_id = new_id
    cluster.size -= len(moved)
    session.flush()


def test_split_cluster_keeps_one_pending_proposal_and_reruns_change_nothing(tmp_path) -> None:
    sessions, embedder = make_db(tmp_path), TopicEmbedder(noise=0.3)
    with sessions() as session:
        ids = add_interactions(session, "shop", topic_queries("refund", 20), embedder=embedder)
        recluster_app(session, "shop", settings(), MODEL, now=NOW)
        ((first_id, first),) = clusters_of(session, "shop").items()
        assert len(propose_for_app(session, "shop", settings(), MODEL).created) == 1

        _split_cluster(session, first, ids[:12], "c-split")  # the new part is now the larger
        result = propose_for_app(session, "shop", settings(), MODEL)
        session.commit()

        pending = session.scalars(select(ProposalRow).where(ProposalRow.status == "pending")).all()
        assert len(pending) == 1
        (row,) = pending
        assert row.cluster_id == "c-split", "anchored on the largest part"
        parts = row.payload["evidence"]["parts"]
        assert {p["cluster_id"]: p["size"] for p in parts} == {"c-split": 12, first_id: 8}
        assert row.payload["evidence"]["size"] == 20
        assert len(result.superseded) == 1  # the old anchor's proposal, merged away

        rerun = propose_for_app(session, "shop", settings(), MODEL)
        assert (rerun.created, rerun.updated, rerun.superseded) == ([], [], [])
        assert rerun.unchanged == [row.id]
