"""A topic whose members fail in clearly different ways is split into one cluster per failure type
(refinery.cluster.split, by refinery.signals.evidence), so each failure mode reaches reviewers as
its own proposal; a few neighbours with other evidence do not split it. Pure checks of the rule,
then SQLite passes through recluster_app and propose_for_app with the deterministic embedder."""

from __future__ import annotations

import itertools

import numpy as np
from sqlalchemy import select

from refinery.cluster.service import recluster_app
from refinery.cluster.split import split_by_failure_type
from refinery.propose.service import propose_for_app
from refinery.signals.evidence import (
    BEHAVIOUR,
    CORRECTION,
    RETRIEVAL_GAP,
    UNSPECIFIED,
    failure_type,
)
from refinery.store.models import Feedback, Interaction, ProposalRow
from tests.unit.test_cluster_service_support import (
    MODEL,
    NOW,
    TopicEmbedder,
    add_interactions,
    cluster_of,
    clusters_of,
    make_db,
    settings,
    topic_queries,
)

GOOD_SOURCES = [{"source_id": "kb-1", "score": 0.8}]
_fb = itertools.count(1)


# --- the rule --------------------------------------------------------------------------------


def test_failure_type_takes_the_most_specific_evidence() -> None:
    low = settings().retrieval_low_score
    answer = "Here is the answer."
    correction = [("rating", 1.0, None), ("correction", None, "Do it under Settings.")]
    too_long = [("thumbs_down", None, None), ("comment", None, "Way too long.")]
    assert failure_type(correction, GOOD_SOURCES, answer, low) == CORRECTION
    assert failure_type(too_long, GOOD_SOURCES, answer, low) == BEHAVIOUR
    # The user's own words outrank what retrieval suggests; a correction outranks both.
    assert failure_type(too_long, [], answer, low) == BEHAVIOUR
    assert failure_type(correction + too_long, [], answer, low) == CORRECTION
    down = [("thumbs_down", None, None)]
    assert failure_type(down, [], answer, low) == RETRIEVAL_GAP
    assert failure_type(down, [{"score": 0.1}], answer, low) == RETRIEVAL_GAP
    assert failure_type(down, GOOD_SOURCES, "I don't know that.", low) == RETRIEVAL_GAP
    assert failure_type(down, GOOD_SOURCES, answer, low) == UNSPECIFIED
    assert failure_type([("correction", None, "  ")], GOOD_SOURCES, answer, low) == UNSPECIFIED


def test_unspecified_members_join_the_part_they_are_closest_to() -> None:
    a, b = np.eye(4, dtype=np.float32)[0], np.eye(4, dtype=np.float32)[1]
    vectors = np.stack([a] * 6 + [b] * 6 + [a, b])
    types = [CORRECTION] * 6 + [BEHAVIOUR] * 6 + [UNSPECIFIED, UNSPECIFIED]
    labels, split = split_by_failure_type(
        np.zeros(14, dtype=np.int64), types, vectors, min_size=5, min_share=0.25
    )
    assert split == 1
    assert len(set(labels[:6])) == 1 and len(set(labels[6:12])) == 1
    assert labels[0] != labels[6]
    assert labels[12] == labels[0] and labels[13] == labels[6]


# --- through the cluster and propose stages --------------------------------------------------


def _failing(  # type: ignore[no-untyped-def]
    session,
    queries: list[str],
    embedder: TopicEmbedder,
    feedback,
    response: str = "Here is what the help center says about that.",
) -> list[int]:
    """Failing interactions that had good sources and `response`, with `feedback(i)`."""
    ids = add_interactions(session, "shop", queries, embedder=embedder)
    for row in session.scalars(select(Interaction).where(Interaction.id.in_(ids))):
        row.sources = GOOD_SOURCES
        row.response = response
        for kind, value, text in feedback(row.id):
            n = next(_fb)
            session.add(
                Feedback(
                    event_id=f"split-fb-{n}",
                    app_id="shop",
                    interaction_id=row.interaction_id,
                    kind=kind,
                    value=value,
                    text=text,
                    occurred_at=NOW,
                    joined=True,
                )
            )
    session.flush()
    return ids


def _corrected(i: int) -> list:
    return [("rating", 1.0, None), ("correction", None, f"The right answer to {i} is in Settings.")]


def _too_long(i: int) -> list:
    return [("thumbs_down", None, None), ("comment", None, "Way too long, just give the answer.")]


def _thumbs_down(i: int) -> list:
    return [("thumbs_down", None, None)]


def _pending(session) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {
        row.cluster_id: row.kind
        for row in session.scalars(select(ProposalRow).where(ProposalRow.status == "pending"))
    }


def test_one_topic_failing_two_ways_is_two_clusters_and_two_proposals(tmp_path) -> None:
    sessions, embedder = make_db(tmp_path), TopicEmbedder(noise=0.3)
    queries = topic_queries("refund", 34)
    with sessions() as session:
        corrected = _failing(session, queries[:15], embedder, _corrected)
        too_long = _failing(session, queries[15:30], embedder, _too_long)
        unhappy = _failing(session, queries[30:], embedder, _thumbs_down)
        result = recluster_app(session, "shop", settings(), MODEL, now=NOW)
        proposed = propose_for_app(session, "shop", settings(), MODEL)
        session.commit()

        assert result.type_splits == 1 and len(result.cluster_ids) == 2
        owners = cluster_of(session, corrected + too_long + unhappy)
        (correction_cluster,) = {owners[i] for i in corrected}
        (behaviour_cluster,) = {owners[i] for i in too_long}
        assert correction_cluster != behaviour_cluster
        # The plain thumbs-down members join one of the parts, never the outlier pool.
        assert {owners[i] for i in unhappy} <= {correction_cluster, behaviour_cluster}
        assert len(proposed.created) == 2
        assert _pending(session) == {
            correction_cluster: "fine_tune_dataset",
            behaviour_cluster: "system_prompt_edit",
        }

        rerun = recluster_app(session, "shop", settings(), MODEL, now=NOW)
        again = propose_for_app(session, "shop", settings(), MODEL)
        session.commit()
        assert sorted(rerun.cluster_ids) == sorted(result.cluster_ids)
        assert (rerun.created, rerun.retired, rerun.splits) == (0, 0, 0)
        assert cluster_of(session, corrected + too_long + unhappy) == owners
        assert (again.created, again.updated, again.superseded) == ([], [], [])
        assert len(again.unchanged) == 2


def test_a_few_neighbouring_corrections_do_not_split_a_topic(tmp_path) -> None:
    """26 length complaints and 4 corrections: the corrections are below the cluster's minimum
    size and share, so they stay, and the majority decides the one proposal."""
    sessions, embedder = make_db(tmp_path), TopicEmbedder(noise=0.3)
    queries = topic_queries("refund", 30)
    with sessions() as session:
        ids = _failing(session, queries[:26], embedder, _too_long)
        ids += _failing(session, queries[26:], embedder, _corrected)
        result = recluster_app(session, "shop", settings(), MODEL, now=NOW)
        propose_for_app(session, "shop", settings(), MODEL)
        session.commit()

        assert result.type_splits == 0
        (cluster_id,) = clusters_of(session, "shop")
        assert set(cluster_of(session, ids).values()) == {cluster_id}
        assert _pending(session) == {cluster_id: "system_prompt_edit"}


def test_a_topic_that_starts_failing_a_second_way_splits_and_keeps_its_id(tmp_path) -> None:
    sessions, embedder = make_db(tmp_path), TopicEmbedder(noise=0.3)
    queries = topic_queries("refund", 30)
    with sessions() as session:
        too_long = _failing(session, queries[:18], embedder, _too_long)
        first = recluster_app(session, "shop", settings(), MODEL, now=NOW)
        (original,) = first.cluster_ids
        corrected = _failing(session, queries[18:], embedder, _corrected)
        second = recluster_app(session, "shop", settings(), MODEL, now=NOW)
        session.commit()

        # The new corrections were never members of the old cluster: a new cluster beside it.
        assert (second.type_splits, second.kept, second.created) == (1, 1, 1)
        owners = cluster_of(session, too_long + corrected)
        assert {owners[i] for i in too_long} == {original}, "the larger part keeps the id"
        (new,) = {owners[i] for i in corrected}
        assert new != original


def test_a_response_admitting_it_does_not_know_is_a_gap_of_its_own(tmp_path) -> None:
    sessions, embedder = make_db(tmp_path), TopicEmbedder(noise=0.3)
    queries = topic_queries("refund", 30)
    with sessions() as session:
        corrected = _failing(session, queries[:15], embedder, _corrected)
        unknown = _failing(
            session, queries[15:], embedder, _thumbs_down, response="Sorry, I don't know that."
        )
        result = recluster_app(session, "shop", settings(), MODEL, now=NOW)
        propose_for_app(session, "shop", settings(), MODEL)
        session.commit()

        assert result.type_splits == 1
        owners = cluster_of(session, corrected + unknown)
        (correction_cluster,) = {owners[i] for i in corrected}
        (gap_cluster,) = {owners[i] for i in unknown}
        assert _pending(session) == {
            correction_cluster: "fine_tune_dataset",
            gap_cluster: "rag_source",
        }
