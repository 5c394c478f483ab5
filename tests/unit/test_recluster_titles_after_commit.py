"""recluster_and_commit asks the cluster titler (a remote model with CLUSTER_TITLE_ENDPOINT) with
no database transaction open, after the re-cluster's commit, and stores its titles in a short
transaction of their own: the same clusters and titles as a titler asked inside the re-cluster, a
title whose cluster's keywords changed meanwhile left unstored, and nothing asked again while the
keywords stay. Without an endpoint (the default) no titles, the same clusters."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session, sessionmaker

from refinery.cluster.service import recluster_and_commit, recluster_app
from refinery.embed import embedding_model_name
from refinery.settings import Settings
from refinery.store.db import engine_for
from tests.unit.test_cluster_service_support import (
    NOW,
    add_interactions,
    clusters_of,
    replayable_app_db,
    settings,
    topic_queries,
)

MODEL = embedding_model_name(settings())


def _app(tmp_path, name: str, monkeypatch) -> tuple[Settings, sessionmaker[Session]]:  # type: ignore[no-untyped-def]
    """Two failure modes (refunds, passwords) of 12 queries each: the same rows and ids in every
    database built here."""
    url, sessions, embedder = replayable_app_db(tmp_path, name, monkeypatch, MODEL)
    with sessions.begin() as session:
        add_interactions(session, "shop", topic_queries("refund", 12), embedder=embedder)
        add_interactions(session, "shop", topic_queries("password", 12), embedder=embedder)
    return settings(database_url=url), sessions


class WatchedTitler:
    """Titles a cluster after its first keyword and records, for each call, how many database
    connections were checked out; `meanwhile(keywords)` runs first (someone else's change)."""

    def __init__(self, url: str, meanwhile: Callable[[list[str]], None] = lambda kw: None) -> None:
        self.pool = engine_for(url).pool
        self.meanwhile = meanwhile
        self.calls: list[tuple[str, int]] = []  # (first keyword, connections checked out)
        self.closed = False

    def __call__(self, keywords: list[str], queries: list[str]) -> str | None:
        self.calls.append((keywords[0], self.pool.checkedout()))  # type: ignore[attr-defined]
        assert queries, "asked with the cluster's representative queries"
        self.meanwhile(keywords)
        return f"About {keywords[0]}"

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def titler_for(monkeypatch):  # type: ignore[no-untyped-def]
    """The re-cluster's titler (what make_titler builds with CLUSTER_TITLE_ENDPOINT) replaced by
    a WatchedTitler; the re-cluster runs at NOW."""
    monkeypatch.setattr("refinery.cluster.service.utcnow", lambda: NOW)

    def use(titler: WatchedTitler) -> WatchedTitler:
        monkeypatch.setattr("refinery.cluster.service.make_titler", lambda settings, app_id: titler)
        return titler

    return use


def _titles(sessions: sessionmaker[Session]) -> dict[str, str | None]:
    with sessions() as session:
        return {cid: c.title for cid, c in clusters_of(session, "shop").items()}


def _keywords(sessions: sessionmaker[Session]) -> dict[str, list[str]]:
    with sessions() as session:
        return {cid: list(c.keywords) for cid, c in clusters_of(session, "shop").items()}


def test_titles_are_asked_with_no_transaction_open_and_stored(
    tmp_path, monkeypatch, titler_for
) -> None:
    cfg, sessions = _app(tmp_path, "after", monkeypatch)
    titler = titler_for(WatchedTitler(cfg.database_url))
    result = recluster_and_commit("shop", cfg)
    assert len(result.cluster_ids) == 2 and titler.closed
    assert len(titler.calls) == 2 and {n for _, n in titler.calls} == {0}
    # Stored: what the titler returned for each cluster's keywords.
    titles, keywords = _titles(sessions), _keywords(sessions)
    assert titles == {cid: f"About {kw[0]}" for cid, kw in keywords.items()}

    # Asked inside the re-cluster's transaction (as before): the same clusters and titles.
    base_cfg, base = _app(tmp_path, "inside", monkeypatch)
    inside_titler = WatchedTitler(base_cfg.database_url)
    with base.begin() as session:
        inside = recluster_app(session, "shop", base_cfg, MODEL, now=NOW, titler=inside_titler)
    assert inside_titler.calls and {n for _, n in inside_titler.calls} == {1}  # the old way
    assert inside.cluster_ids == result.cluster_ids and _titles(base) == titles

    # Same keywords, titled: nothing asked again, the titles stay.
    again = titler_for(WatchedTitler(cfg.database_url))
    assert recluster_and_commit("shop", cfg).cluster_ids == result.cluster_ids
    assert again.calls == [] and _titles(sessions) == titles


def test_a_title_is_not_stored_where_the_keywords_changed_meanwhile(
    tmp_path, monkeypatch, titler_for
) -> None:
    cfg, sessions = _app(tmp_path, "meanwhile", monkeypatch)
    changed: list[str] = []

    def rekeyword_first(keywords: list[str]) -> None:
        """The first cluster asked about gets other keywords, committed while it is asked."""
        if changed:
            return
        with sessions.begin() as session:
            (cluster,) = [
                c for c in clusters_of(session, "shop").values() if list(c.keywords) == keywords
            ]
            cluster.keywords = ["elsewhere"]
            changed.append(cluster.id)

    titler = titler_for(WatchedTitler(cfg.database_url, meanwhile=rekeyword_first))
    result = recluster_and_commit("shop", cfg)
    assert len(titler.calls) == 2 and {n for _, n in titler.calls} == {0}
    (stale,) = changed
    titles, keywords = _titles(sessions), _keywords(sessions)
    assert set(titles) == set(result.cluster_ids) and titles[stale] is None
    assert keywords[stale] == ["elsewhere"]
    assert {cid: t for cid, t in titles.items() if cid != stale} == {
        cid: f"About {kw[0]}" for cid, kw in keywords.items() if cid != stale
    }


def test_no_endpoint_no_titles_and_the_same_clusters(tmp_path, monkeypatch) -> None:
    cfg, sessions = _app(tmp_path, "plain", monkeypatch)
    monkeypatch.setattr("refinery.cluster.service.utcnow", lambda: NOW)
    assert not cfg.cluster_title_endpoint
    result = recluster_and_commit("shop", cfg)
    assert len(result.titles_due) == 2  # due, and nobody to ask
    assert _titles(sessions) == dict.fromkeys(result.cluster_ids)

    base_cfg, base = _app(tmp_path, "plain-inside", monkeypatch)
    with base.begin() as session:
        inside = recluster_app(session, "shop", base_cfg, MODEL, now=NOW)
    assert inside.cluster_ids == result.cluster_ids
    assert _keywords(base) == _keywords(sessions)
