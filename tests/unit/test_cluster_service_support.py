"""Helpers (no tests) for the cluster service unit tests: a SQLite database with the real schema,
a small deterministic embedder, and failing interactions written the way ingest writes them."""

from __future__ import annotations

import hashlib
import itertools
import sys
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from refinery.embed.service import embed_interactions
from refinery.ingest.storage import query_hash
from refinery.settings import Settings
from refinery.store.db import migrate, session_factory
from refinery.store.models import Cluster, Interaction

DIM = 32
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
MODEL = "topic-embedder"

# Each topic: the words that mark its queries and a unit direction. Random directions in 32
# dimensions are nearly orthogonal, so topics are far apart unless a test says otherwise.
TOPICS = {
    "refund": "refund money back return purchase",
    "password": "password reset login locked account",
    "shipping": "shipping delivery late parcel courier",
    "warranty": "warranty broken repair screen cracked",
}


def direction(seed: str) -> np.ndarray:
    rng = np.random.default_rng(int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16))
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


class TopicEmbedder:
    """Deterministic `embed(texts) -> (n, DIM) float32, L2-normalized`: a text's vector is the
    direction of the topic whose marker word it contains (or of its own words when none) plus
    small noise seeded by the text, so different texts of a topic are close, not identical.
    `centres` overrides a topic's direction (to make two topics similar). Counts its calls."""

    name = MODEL
    dim = DIM

    def __init__(self, centres: dict[str, np.ndarray] | None = None, noise: float = 0.4) -> None:
        self.centres = {t: direction(t) for t in TOPICS} | (centres or {})
        self.noise = noise
        self.texts_embedded = 0

    def topic_of(self, text: str) -> str | None:
        words = set(text.lower().split())
        for topic, markers in TOPICS.items():
            if words & set(markers.split()):
                return topic
        return None

    def embed(self, texts: list[str]) -> np.ndarray:
        self.texts_embedded += len(texts)
        out = np.empty((len(texts), DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            topic = self.topic_of(text)
            base = self.centres[topic] if topic else direction(text)
            v = base + self.noise * direction("noise:" + text) * np.float32(1.0)
            out[i] = v / np.linalg.norm(v)
        return out


def make_db(tmp_path) -> sessionmaker[Session]:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path}/cluster.db"
    migrate(url)
    return session_factory(url)


def settings(**overrides) -> Settings:  # type: ignore[no-untyped-def]
    base = {"cluster_window_days": 30.0, "region_sample_size": 0}
    return Settings(_env_file=None, **(base | overrides))


_ids = itertools.count(1)


def replayable_app_db(
    tmp_path, name: str, monkeypatch, model: str
) -> tuple[str, sessionmaker[Session], TopicEmbedder]:  # type: ignore[no-untyped-def]
    """A fresh SQLite database `name` whose interaction ids start again at 1 (so every database
    a test builds this way holds the same rows and ids), and an embedder whose vectors stand for
    `model`'s."""
    monkeypatch.setattr(sys.modules[__name__], "_ids", itertools.count(1))
    url = f"sqlite:///{tmp_path}/{name}.db"
    migrate(url)
    embedder = TopicEmbedder(noise=0.3)
    embedder.name = model
    return url, session_factory(url), embedder


def add_interactions(
    session: Session,
    app_id: str,
    queries: list[str],
    *,
    at: datetime = NOW - timedelta(hours=1),
    failing: bool = True,
    embedder: TopicEmbedder | None = None,
) -> list[int]:
    """Store interactions as ingest would (failing or not) and, with `embedder`, embed them."""
    rows = []
    for query in queries:
        n = next(_ids)
        rows.append(
            Interaction(
                event_id=f"e-{n}",
                app_id=app_id,
                interaction_id=f"i-{n}",
                session_id=f"s-{n}",
                occurred_at=at,
                query=query,
                response="Sorry, I cannot help with that.",
                sources=[],
                query_hash=query_hash(query),
                failing=failing,
                failure_reasons=["thumbs_down"] if failing else [],
                failure_score=1.0 if failing else 0.0,
                ingested_at=at,
            )
        )
    session.add_all(rows)
    session.flush()
    ids = [r.id for r in rows]
    if embedder is not None:
        embed_interactions(session, ids, embedder)
    return ids


def topic_queries(topic: str, count: int, start: int = 0) -> list[str]:
    """`count` distinct queries about `topic`: two of its marker words and a number (numbers are
    no keywords, so every keyword is a topic word)."""
    words = TOPICS[topic].split()
    return [
        f"{words[i % len(words)]} {words[(i + 2) % len(words)]} {i}"
        for i in range(start, start + count)
    ]


def clusters_of(session: Session, app_id: str, *, active: bool = True) -> dict[str, Cluster]:
    return {
        c.id: c
        for c in session.scalars(
            select(Cluster).where(Cluster.app_id == app_id, Cluster.active.is_(active))
        )
    }


def cluster_of(session: Session, interaction_ids: list[int]) -> dict[int, str | None]:
    return dict(
        session.execute(
            select(Interaction.id, Interaction.cluster_id).where(
                Interaction.id.in_(interaction_ids)
            )
        ).all()
    )
