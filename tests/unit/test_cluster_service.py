"""Re-clustering (refinery.cluster.service): stable ids across runs, lineage of merges and splits,
labels, tenant isolation. SQLite with the real schema, a small deterministic embedder."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from sqlalchemy import select

from refinery.cluster.service import recluster_app
from refinery.cluster.titles import ChatTitler, clean_title
from refinery.propose.service import propose_for_app
from refinery.store.models import ClusterEvent, ClusterRun, Interaction, ProposalRow
from tests.unit.test_cluster_service_support import (
    MODEL,
    NOW,
    TOPICS,
    TopicEmbedder,
    add_interactions,
    cluster_of,
    clusters_of,
    direction,
    make_db,
    settings,
    topic_queries,
)


def _events(session, run_id: str) -> list[tuple[str, list[str], list[str]]]:
    return [
        (e.kind, e.from_ids, e.to_ids)
        for e in session.scalars(
            select(ClusterEvent).where(ClusterEvent.run_id == run_id).order_by(ClusterEvent.id)
        )
    ]


def test_first_run_labels_come_from_member_text(tmp_path) -> None:
    sessions, embedder = make_db(tmp_path), TopicEmbedder()
    with sessions() as session:
        by_topic = {
            t: add_interactions(session, "shop", topic_queries(t, 12), embedder=embedder)
            for t in ("refund", "password", "shipping")
        }
        noise = add_interactions(session, "shop", ["zebra kayak lantern"], embedder=embedder)
        result = recluster_app(session, "shop", settings(), MODEL, now=NOW)
        session.commit()

        assert result.created == 3 and result.kept == 0 and result.outliers == 1
        clusters = clusters_of(session, "shop")
        assert len(clusters) == 3
        for topic, ids in by_topic.items():
            owners = set(cluster_of(session, ids).values())
            assert len(owners) == 1, f"{topic} split over {owners}"
            cluster = clusters[owners.pop()]
            assert cluster.size == 12
            members = {q.lower() for q in topic_queries(topic, 12)}
            member_words = {w for q in members for w in q.split()}
            # Keywords are words of the members, led by the topic's own words.
            assert cluster.keywords and set(cluster.keywords) <= member_words
            assert set(cluster.keywords[:3]) <= set(TOPICS[topic].split())
            assert cluster.label == " / ".join(cluster.keywords[:3])
            # Representatives: distinct member queries, closest to the centroid first.
            reps = cluster.representative_queries
            assert len(reps) == 5 and len(set(reps)) == 5
            assert {r.lower() for r in reps} <= members
            centroid = np.frombuffer(cluster.centroid, dtype=np.float32)
            sims = embedder.embed(reps) @ centroid
            assert list(sims) == sorted(sims, reverse=True)
            # The stored vector sum is the sum of the members; the centroid its direction.
            total = np.frombuffer(cluster.vector_sum, dtype=np.float32)
            assert np.allclose(total / np.linalg.norm(total), centroid, atol=1e-5)
        assert cluster_of(session, noise) == {noise[0]: None}
        checked = session.scalars(select(Interaction.cluster_checked_at)).all()
        assert all(c is not None for c in checked), "every considered query is placed"
        assert sorted(k for k, _, _ in _events(session, result.run_id)) == ["new"] * 3
        run = session.get(ClusterRun, result.run_id)
        assert run is not None and run.counts["clusters"] == 3 and run.counts["outliers"] == 1


def test_ids_stay_stable_as_the_window_moves_on(tmp_path) -> None:
    """Run 2 sees half old members and new ones; run 3 sees none of run 1's members, so only the
    centroid can tell it is the same failure mode. Ids survive both; nothing is retired."""
    sessions, embedder = make_db(tmp_path), TopicEmbedder()
    cfg = settings(cluster_window_days=10)
    with sessions() as session:
        for t in ("refund", "password"):
            add_interactions(session, "shop", topic_queries(t, 10), at=NOW - timedelta(days=9),
                             embedder=embedder)  # fmt: skip
        first = recluster_app(session, "shop", cfg, MODEL, now=NOW)
        ids_before = set(clusters_of(session, "shop"))
        assert len(ids_before) == 2

        later = NOW + timedelta(days=5)
        for t in ("refund", "password"):
            add_interactions(session, "shop", topic_queries(t, 10, start=10),
                             at=later - timedelta(days=1), embedder=embedder)  # fmt: skip
        second = recluster_app(session, "shop", cfg, MODEL, now=later)
        assert set(clusters_of(session, "shop")) == ids_before
        assert (second.kept, second.created, second.retired) == (2, 0, 0)
        assert _events(session, second.run_id) == []

        # Run 1's members are now out of the window; the new ones only resemble them.
        latest = NOW + timedelta(days=16)
        for t in ("refund", "password"):
            add_interactions(session, "shop", topic_queries(t, 8, start=40),
                             at=latest - timedelta(hours=2), embedder=embedder)  # fmt: skip
        third = recluster_app(session, "shop", cfg, MODEL, now=latest)
        session.commit()
        assert set(clusters_of(session, "shop")) == ids_before
        assert third.kept == 2 and third.kept_by_centroid == 2 and third.retired == 0
        assert first.run_id != second.run_id != third.run_id


def test_unrelated_new_cluster_does_not_steal_an_id_by_centroid(tmp_path) -> None:
    sessions, embedder = make_db(tmp_path), TopicEmbedder()
    cfg = settings(cluster_window_days=1)
    with sessions() as session:
        add_interactions(session, "shop", topic_queries("refund", 10), embedder=embedder)
        recluster_app(session, "shop", cfg, MODEL, now=NOW)
        (old_id,) = clusters_of(session, "shop")
        later = NOW + timedelta(days=3)  # refund queries left the window
        add_interactions(session, "shop", topic_queries("warranty", 10),
                         at=later - timedelta(hours=1), embedder=embedder)  # fmt: skip
        run = recluster_app(session, "shop", cfg, MODEL, now=later)
        (new_id,) = clusters_of(session, "shop")
        assert new_id != old_id
        assert sorted(_events(session, run.run_id)) == [
            ("new", [], [new_id]),
            ("retired", [old_id], []),
        ]


def _similar_topics_embedder() -> TopicEmbedder:
    """refund and shipping 0.55 apart in cosine: one cluster at threshold 0.45, two at 0.7."""
    a = direction("refund")
    b = direction("shipping")
    b = b - (b @ a) * a
    b /= np.linalg.norm(b)
    similar = 0.55 * a + np.sqrt(1 - 0.55**2) * b
    return TopicEmbedder(centres={"shipping": similar.astype(np.float32)}, noise=0.15)


def test_merge_is_recorded_and_the_retired_clusters_proposal_superseded(tmp_path) -> None:
    sessions, embedder = make_db(tmp_path), _similar_topics_embedder()
    with sessions() as session:
        refund = add_interactions(session, "shop", topic_queries("refund", 12), embedder=embedder)
        ship = add_interactions(session, "shop", topic_queries("shipping", 8), embedder=embedder)
        recluster_app(session, "shop", settings(cluster_similarity_threshold=0.7), MODEL, now=NOW)
        before = cluster_of(session, refund + ship)
        a, b = before[refund[0]], before[ship[0]]
        assert a != b and len(clusters_of(session, "shop")) == 2
        proposed = propose_for_app(session, "shop", settings(), MODEL)
        assert len(proposed.created) == 2  # no sources anywhere: a RAG source each

        run = recluster_app(
            session, "shop", settings(cluster_similarity_threshold=0.45), MODEL,
            now=NOW + timedelta(minutes=5),
        )  # fmt: skip
        after = cluster_of(session, refund + ship)
        assert set(after.values()) == {a}, "the merged cluster keeps the bigger one's id"
        assert (run.kept, run.created, run.retired, run.merges) == (1, 0, 1, 1)
        assert sorted(_events(session, run.run_id)) == [
            ("merge", sorted([a, b]), [a]),
            ("retired", [b], [a]),
        ]
        result = propose_for_app(session, "shop", settings(), MODEL)
        session.commit()
        statuses = {r.cluster_id: r.status for r in session.scalars(select(ProposalRow))}
        assert statuses == {a: "pending", b: "superseded"}
        assert len(result.superseded) == 1


def test_split_is_recorded(tmp_path) -> None:
    sessions, embedder = make_db(tmp_path), _similar_topics_embedder()
    with sessions() as session:
        refund = add_interactions(session, "shop", topic_queries("refund", 12), embedder=embedder)
        ship = add_interactions(session, "shop", topic_queries("shipping", 8), embedder=embedder)
        recluster_app(session, "shop", settings(cluster_similarity_threshold=0.45), MODEL, now=NOW)
        (merged,) = clusters_of(session, "shop")
        run = recluster_app(
            session, "shop", settings(cluster_similarity_threshold=0.7), MODEL,
            now=NOW + timedelta(minutes=5),
        )  # fmt: skip
        after = cluster_of(session, refund + ship)
        assert {after[i] for i in refund} == {merged}, "the bigger half keeps the id"
        (other,) = {after[i] for i in ship}
        assert other != merged
        assert (run.kept, run.created, run.retired, run.splits) == (1, 1, 0, 1)
        assert _events(session, run.run_id) == [("split", [merged], sorted([merged, other]))]
        assert clusters_of(session, "shop")[other].size == 8


def test_apps_never_mix(tmp_path) -> None:
    """Two apps with the same queries (one shared embedding cache): each gets its own clusters,
    and re-clustering or assigning one app never touches the other's."""
    from refinery.cluster.assign import assign_due

    sessions, embedder = make_db(tmp_path), TopicEmbedder()
    with sessions() as session:
        a_ids = add_interactions(session, "app-a", topic_queries("refund", 10), embedder=embedder)
        b_ids = add_interactions(session, "app-b", topic_queries("refund", 10), embedder=embedder)
        b_pwd = add_interactions(session, "app-b", topic_queries("password", 10), embedder=embedder)
        assert embedder.texts_embedded == 20, "the shared texts were embedded once"

        recluster_app(session, "app-a", settings(), MODEL, now=NOW)
        assert cluster_of(session, b_ids + b_pwd) == {i: None for i in b_ids + b_pwd}
        (a_cluster,) = clusters_of(session, "app-a")
        # app-b's refund queries are due and match app-a's cluster perfectly: still not placed.
        placed = assign_due(session, "app-b", settings(), MODEL, now=NOW)
        assert placed.assigned == 0 and placed.outliers == 20
        assert set(cluster_of(session, b_ids).values()) == {None}

        recluster_app(session, "app-b", settings(), MODEL, now=NOW)
        b_clusters = clusters_of(session, "app-b")
        assert len(b_clusters) == 2 and a_cluster not in b_clusters
        assert set(cluster_of(session, a_ids).values()) == {a_cluster}
        assert clusters_of(session, "app-a")[a_cluster].size == 10
        for cluster_id in cluster_of(session, b_ids + b_pwd).values():
            assert cluster_id in b_clusters
        # Re-clustering app-b retired nothing of app-a's and recorded nothing for it.
        events = session.scalars(select(ClusterEvent)).all()
        assert {(e.app_id, e.kind) for e in events} == {("app-a", "new"), ("app-b", "new")}
        for event in events:
            owners = clusters_of(session, event.app_id)
            assert set(event.to_ids) <= set(owners)


def test_stopped_failing_leaves_its_cluster(tmp_path) -> None:
    sessions, embedder = make_db(tmp_path), TopicEmbedder()
    with sessions() as session:
        ids = add_interactions(session, "shop", topic_queries("refund", 10), embedder=embedder)
        recluster_app(session, "shop", settings(), MODEL, now=NOW)
        row = session.get(Interaction, ids[0])
        assert row is not None and row.cluster_id is not None
        row.failing = False  # a later thumbs-up
        session.flush()
        recluster_app(session, "shop", settings(), MODEL, now=NOW)
        session.refresh(row)
        assert row.cluster_id is None
        assert next(iter(clusters_of(session, "shop").values())).size == 9


# --- titles from an OpenAI-compatible endpoint (a stub on 127.0.0.1; no network) ---------------


class _StubChat(BaseHTTPRequestHandler):
    replies: list[tuple[int, dict]] = []
    requests: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                    "body": body})  # fmt: skip
        status, reply = type(self).replies.pop(0)
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


@pytest.fixture
def chat_stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StubChat)
    _StubChat.replies, _StubChat.requests = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", _StubChat
    server.shutdown()
    server.server_close()
    thread.join()


def _chat_reply(text: str) -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": text}}]}


def test_titles_from_a_chat_endpoint_and_never_required(tmp_path, chat_stub) -> None:
    url, stub = chat_stub
    cfg = settings(cluster_title_endpoint=url, cluster_title_api_key="sk-test")
    sessions, embedder = make_db(tmp_path), TopicEmbedder()
    with sessions() as session:
        add_interactions(session, "shop", topic_queries("refund", 10), embedder=embedder)
        add_interactions(session, "shop", topic_queries("password", 10), embedder=embedder)
        stub.replies = [(200, _chat_reply('"Refund requests."\nextra line')), (500, {})]
        titler = ChatTitler(cfg)
        try:
            recluster_app(session, "shop", cfg, MODEL, now=NOW, titler=titler)
            titles = sorted((c.title or "") for c in clusters_of(session, "shop").values())
            # One answered (cleaned to its first line), one failed: no title, no error.
            assert titles == ["", "Refund requests"]
            assert len(stub.requests) == 2
            first = stub.requests[0]
            assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-test"
            user = first["body"]["messages"][1]["content"]
            reps = [q for c in clusters_of(session, "shop").values()
                    for q in c.representative_queries]  # fmt: skip
            assert "Queries:" in user and any(f"- {q}" in user for q in reps)

            # Same keywords: the titled cluster is not asked again; the untitled one is.
            stub.replies = [(200, _chat_reply("Password resets"))]
            recluster_app(session, "shop", cfg, MODEL, now=NOW, titler=titler)
            titles = sorted((c.title or "") for c in clusters_of(session, "shop").values())
            assert titles == ["Password resets", "Refund requests"]
            assert len(stub.requests) == 3
        finally:
            titler.close()
    assert clean_title("  **Late parcels.**  ") == "Late parcels"
    assert clean_title("\n\n") is None
