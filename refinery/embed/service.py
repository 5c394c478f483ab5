"""Embed the queries of failing interactions that have no cached vector yet."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from sqlalchemy import ColumnElement, exists, select
from sqlalchemy.orm import Session

from refinery.embed.embedder import Embedder
from refinery.embed.keys import normalize_query
from refinery.ops.metrics import EMBEDDING_BATCH_SECONDS, EMBEDDING_CACHE_HITS, EMBEDDING_TEXTS
from refinery.store.db import insert_ignoring_duplicates
from refinery.store.models import Embedding, Interaction


@dataclass
class EmbedResult:
    embedded: int  # texts sent to the model
    cached: int  # texts whose vector was already stored
    app_ids: list[str]


def embed_interactions(
    session: Session, interaction_ids: list[int], embedder: Embedder
) -> EmbedResult:
    """Idempotent: a second run finds every vector cached and embeds nothing."""
    rows = session.execute(
        select(Interaction.app_id, Interaction.query, Interaction.query_hash).where(
            Interaction.id.in_(interaction_ids)
        )
    ).all()
    texts_by_hash = {row.query_hash: normalize_query(row.query) for row in rows}
    cached = set(
        session.scalars(
            select(Embedding.text_hash).where(
                Embedding.model == embedder.name, Embedding.text_hash.in_(list(texts_by_hash))
            )
        )
    )
    todo = sorted(h for h in texts_by_hash if h not in cached)
    EMBEDDING_CACHE_HITS.inc(len(cached))
    if todo:
        _ = embedder.dim  # loads the model on first use (seconds): not part of a batch's time
        started = time.perf_counter()
        vectors = embedder.embed([texts_by_hash[h] for h in todo])
        EMBEDDING_BATCH_SECONDS.observe(time.perf_counter() - started)
        EMBEDDING_TEXTS.inc(len(todo))
        insert_ignoring_duplicates(
            session,
            Embedding.__table__,
            [
                {
                    "model": embedder.name,
                    "text_hash": h,
                    "dim": int(v.shape[0]),
                    "vector": v.tobytes(),
                }
                for h, v in zip(todo, vectors, strict=True)
            ],
        )
    return EmbedResult(
        embedded=len(todo), cached=len(cached), app_ids=sorted({row.app_id for row in rows})
    )


def query_vector(model: str) -> ColumnElement[bool]:
    """How an interaction finds its query's cached vector under `model` (join on it): by the
    normalized query's hash ingest stored (refinery/embed/keys.py), never by the text."""
    return (Embedding.text_hash == Interaction.query_hash) & (Embedding.model == model)


def has_query_vector(model: str) -> ColumnElement[bool]:
    """Whether an interaction's query has a cached vector under `model` (a filter, no join)."""
    return exists().where(query_vector(model))


def vectors_from_rows(blobs: list[bytes], dim: int) -> np.ndarray:
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dim).copy()
