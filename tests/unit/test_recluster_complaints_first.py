"""recluster_and_commit has the complaint classifier label the window's comments before its
transaction (the classifier embeds them, with the real model here): the re-cluster's transaction
embeds nothing, and its clusters are the ones a re-cluster classifying inside would make."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from refinery.cluster.service import recluster_and_commit, recluster_app
from refinery.embed import embedding_model_name
from refinery.embed.embedder import get_embedder
from refinery.settings import Settings
from refinery.signals import complaints
from refinery.store.db import engine_for
from refinery.store.models import Feedback, Interaction
from tests.unit.test_cluster_service_support import (
    NOW,
    add_interactions,
    cluster_of,
    replayable_app_db,
    settings,
    topic_queries,
)

MODEL = embedding_model_name(settings())


class WatchedEmbedder:
    """The model, recording for each call how many database connections were checked out."""

    def __init__(self, url: str) -> None:
        self.inner = get_embedder(settings())
        self.pool = engine_for(url).pool
        self.calls: list[int] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(self.pool.checkedout())  # type: ignore[attr-defined]
        return self.inner.embed(texts)


@pytest.fixture
def classifier_over():  # type: ignore[no-untyped-def]
    """A fresh classifier (nothing cached) over a watched embedder, for the database at `url`."""

    def use(url: str) -> WatchedEmbedder:
        watched = WatchedEmbedder(url)
        complaints.set_embedder(watched)
        return watched

    yield use
    complaints.set_embedder(None)


def _app(tmp_path, name: str, monkeypatch) -> tuple[Settings, sessionmaker[Session], list[int]]:  # type: ignore[no-untyped-def]
    """One topic failing two ways (corrections, answers too long) and a few plain thumbs-down:
    the same rows and ids in every database built here."""
    url, sessions, embedder = replayable_app_db(tmp_path, name, monkeypatch, MODEL)
    comments = {
        "correction": "The right answer is under Settings, then Billing.",
        "comment": "Way too long, just give the answer.",
    }
    queries = topic_queries("refund", 34)
    with sessions.begin() as session:
        ids = add_interactions(session, "shop", queries, embedder=embedder)
        rows = session.scalars(select(Interaction).where(Interaction.id.in_(ids))).all()
        for n, row in enumerate(rows):
            row.sources = [{"source_id": "kb-1", "score": 0.8}]
            row.response = "Here is what the help center says about that."
            kind = "correction" if n < 15 else "comment" if n < 30 else None
            if kind is not None:
                session.add(
                    Feedback(
                        event_id=f"fb-{row.id}",
                        app_id="shop",
                        interaction_id=row.interaction_id,
                        kind=kind,
                        text=comments[kind],
                        occurred_at=NOW,
                        joined=True,
                    )
                )
    return settings(database_url=url), sessions, ids


def test_the_recluster_transaction_embeds_no_comment_and_clusters_the_same(
    tmp_path, monkeypatch, classifier_over
) -> None:
    cfg, sessions, ids = _app(tmp_path, "first", monkeypatch)
    watched = classifier_over(cfg.database_url)
    monkeypatch.setattr("refinery.cluster.service.utcnow", lambda: NOW)
    result = recluster_and_commit("shop", cfg)
    assert watched.calls and set(watched.calls) == {0}  # labelled, never inside a transaction
    assert result.type_splits == 1 and len(result.cluster_ids) == 2

    # Classifying inside the transaction, as before, gives the same clusters.
    base_cfg, base, base_ids = _app(tmp_path, "inside", monkeypatch)
    inside_watch = classifier_over(base_cfg.database_url)
    with base.begin() as session:
        inside = recluster_app(session, "shop", base_cfg, MODEL, now=NOW)
    assert inside_watch.calls and max(inside_watch.calls) == 1  # the old way embedded inside
    assert (inside.cluster_ids, inside.type_splits) == (result.cluster_ids, result.type_splits)
    with sessions() as session, base() as other:
        assert base_ids == ids and cluster_of(session, ids) == cluster_of(other, base_ids)
