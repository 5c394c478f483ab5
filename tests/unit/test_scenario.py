"""The failure-mode scenario (refinery.scenario): what is planted, and how a queue is scored."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from refinery.scenario.plant import EXPECTED_KIND, TOO_LONG_COMMENTS, PlantConfig, plant
from refinery.scenario.score import score_queue
from refinery.store.models import Interaction, ProposalRow
from tests.unit.test_cluster_service_support import make_db

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def _labelled(intents: int, per_intent: int) -> list[tuple[str, str]]:
    return [
        (f"query {q} about intent {i}", f"intent_{i}")
        for i in range(intents)
        for q in range(per_intent)
    ]


def test_plants_failure_modes_among_healthy_traffic() -> None:
    config = PlantConfig(failing_intents=6, per_failing_intent=20, healthy=300, seed=3)
    scenario = plant(_labelled(30, 25), app_id="app", config=config, now=NOW)

    assert len(scenario.planted) == 6
    # The three modes in turn, each with the kind of proposal it calls for.
    assert Counter(scenario.modes.values()) == {"knowledge_gap": 2, "behaviour": 2, "correction": 2}
    assert all(EXPECTED_KIND[scenario.modes[i]] == k for i, k in scenario.planted.items())
    assert len(scenario.interactions) == 6 * 20 + 300
    by_id = {e["interaction_id"]: e for e in scenario.interactions}
    complained = Counter(scenario.truth[f["interaction_id"]] for f in scenario.feedback
                         if f["kind"] in {"thumbs_down", "rating"})  # fmt: skip
    for intent in scenario.planted:
        assert complained[intent] >= 12  # most of its 20 users complain (85%)
    noise = sum(n for label, n in complained.items() if label not in scenario.planted)
    assert 0 < noise < 0.1 * 300  # a few percent of healthy traffic, never systematic
    # Evidence matches the mode: no sources for gaps, "too long" comments, corrections.
    for f in scenario.feedback:
        mode = scenario.modes.get(scenario.truth[f["interaction_id"]])
        if f["kind"] == "correction":
            assert mode == "correction"
        if f["kind"] == "comment":
            assert mode == "behaviour" and f["text"] in TOO_LONG_COMMENTS
    for event in by_id.values():
        if scenario.modes.get(scenario.truth[event["interaction_id"]]) == "knowledge_gap":
            assert event["retrieved_sources"] == []
    # Every feedback event follows its interaction, and the timeline is in order of occurrence.
    times = [event["occurred_at"] for _, event in scenario.timeline()]
    assert times == sorted(times)
    assert all(
        f["occurred_at"] > by_id[f["interaction_id"]]["occurred_at"] for f in scenario.feedback
    )


def test_same_seed_same_events_and_small_sets_keep_healthy_intents() -> None:
    first = plant(_labelled(7, 100), app_id="snips-like", now=NOW)
    again = plant(_labelled(7, 100), app_id="snips-like", now=NOW)
    assert [e["event_id"] for e in first.interactions] == [
        e["event_id"] for e in again.interactions
    ]
    assert first.planted == again.planted
    assert len(first.planted) == 3  # of 7 intents, 4 stay healthy

    with pytest.raises(ValueError, match="cannot plant"):
        plant(_labelled(4, 5), app_id="tiny", now=NOW)  # no intent with enough queries


def test_score_counts_recall_purity_redundancy_and_spurious(tmp_path) -> None:
    sessions = make_db(tmp_path)
    scenario = plant(_labelled(10, 30), app_id="app",
                     config=PlantConfig(failing_intents=3, healthy=100), now=NOW)  # fmt: skip
    a, b, c = sorted(scenario.planted)
    healthy = next(label for label in scenario.truth.values() if label not in scenario.planted)
    # Cluster ca: 20 of a + 2 of b (91% pure); cb1 / cb2: b split in two, each its own proposal,
    # the larger covering 14 of 21; cc: 5 of c's 25 (too few); ch: noise of a healthy intent.
    layout = {"ca": [(a, 20), (b, 2)], "cb1": [(b, 14)], "cb2": [(b, 5)], "cc": [(c, 5)],
              "ch": [(healthy, 6)], None: [(c, 20)]}  # fmt: skip
    ids = {
        label: [i for i, t in scenario.truth.items() if t == label] for label in (a, b, c, healthy)
    }
    with sessions() as session:
        for cluster_id, parts in layout.items():
            for label, count in parts:
                for interaction_id in [ids[label].pop() for _ in range(count)]:
                    session.add(_interaction(interaction_id, cluster_id))
        kinds = {"ca": scenario.planted[a], "cb1": scenario.planted[b], "cb2": scenario.planted[b],
                 "cc": scenario.planted[c], "ch": "rag_source"}  # fmt: skip
        for cluster_id, kind in kinds.items():
            session.add(_proposal(cluster_id, kind))
        session.commit()
        result = score_queue(session, scenario)

    by_intent = {s.intent: s for s in result.intents}
    assert (
        by_intent[a].recalled
        and by_intent[a].kind_right
        and by_intent[a].purity == pytest.approx(20 / 22, abs=1e-3)
    )
    assert by_intent[b].recalled and by_intent[b].coverage == pytest.approx(14 / 21, abs=1e-3)
    assert not by_intent[c].recalled and by_intent[c].coverage == pytest.approx(5 / 25)
    assert result.redundant == 1 and result.spurious == 1
    assert result.recalled == 2 and result.impure_clusters == 0
    assert any("redundant" in m for m in result.misses())


def test_a_prompt_edit_merged_across_topics_recalls_each_topic(tmp_path) -> None:
    """One instruction ("be concise") fixes several topics: one merged proposal recalls every
    pure topic it covers, and a topic split in two clusters and merged back counts whole."""
    sessions = make_db(tmp_path)
    scenario = plant(_labelled(10, 30), app_id="app",
                     config=PlantConfig(failing_intents=2, healthy=50), now=NOW)  # fmt: skip
    a, b = sorted(scenario.planted)
    ids = {label: [i for i, t in scenario.truth.items() if t == label] for label in (a, b)}
    with sessions() as session:
        for _label, cluster_id, members in ((a, "ca", ids[a][:20]), (b, "cb", ids[b][:10]),
                                           (b, "cb2", ids[b][10:20])):  # fmt: skip
            for interaction_id in members:
                session.add(_interaction(interaction_id, cluster_id))
        merged = _proposal("ca", "system_prompt_edit")
        parts = [{"cluster_id": c} for c in ("ca", "cb", "cb2")]
        merged.payload = {"evidence": {"parts": parts}}
        session.add(merged)
        session.commit()
        result = score_queue(session, scenario)
    assert result.recalled == 2 and result.clusters == 3
    assert result.redundant == 0 and result.spurious == 0


def _interaction(interaction_id: str, cluster_id: str | None) -> Interaction:
    return Interaction(
        event_id=f"e-{interaction_id}", app_id="app", interaction_id=interaction_id,
        session_id="s", occurred_at=NOW, query="q", response="r", query_hash="h",
        failing=True, cluster_id=cluster_id,
    )  # fmt: skip


def _proposal(cluster_id: str, kind: str) -> ProposalRow:
    return ProposalRow(
        id=f"p-{cluster_id}", app_id="app", cluster_id=cluster_id, kind=kind, title="t",
        payload={"evidence": {}}, fingerprint="f",
    )  # fmt: skip
