"""Register candidate documents (chunk, embed, store) and serve each app's FAISS index.

The database holds the chunks and their vectors, so every worker reads the same corpus; the index
is built in memory from them and cached per (app, corpus version, model): a registration bumps
the version, and the next search rebuilds it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from refinery.corpus.chunking import CorpusError, Document, chunk, embedding_text, read_path
from refinery.corpus.index import ChunkMeta, CorpusIndex
from refinery.embed.embedder import Embedder
from refinery.embed.service import vectors_from_rows
from refinery.settings import Settings
from refinery.store.db import insert_ignoring_duplicates
from refinery.store.models import Corpus, CorpusChunk, utcnow

INDEX_CACHE_APPS = 32  # indexes kept per process; the least recently used goes first


@dataclass(frozen=True)
class CorpusSummary:
    app_id: str
    version: int
    documents: int
    chunks: int
    added_documents: int = 0
    added_chunks: int = 0


@dataclass(frozen=True)
class DocumentSummary:
    doc_id: str
    title: str
    chunks: int


def add_documents(
    session: Session,
    app_id: str,
    documents: list[Document],
    embedder: Embedder,
    *,
    max_chunk_chars: int,
    replace: bool = False,
) -> CorpusSummary:
    """Chunk and embed `documents` into the app's corpus: a document id registered before is
    replaced; `replace` drops every other document first. Bumps the corpus version."""
    chunks = [c for doc in documents for c in chunk(doc, max_chunk_chars)]
    vectors = embedder.embed([embedding_text(c) for c in chunks])  # (n, dim) L2-normalized
    insert_ignoring_duplicates(session, Corpus.__table__, [{"app_id": app_id, "version": 0,
                                                            "updated_at": utcnow()}])  # fmt: skip
    # Locks the app's corpus row (PostgreSQL) until commit: registrations take turns.
    session.execute(
        update(Corpus)
        .where(Corpus.app_id == app_id)
        .values(version=Corpus.version + 1, updated_at=utcnow())
    )
    gone = select(CorpusChunk.id).where(CorpusChunk.app_id == app_id)
    if not replace:
        gone = gone.where(CorpusChunk.doc_id.in_(sorted({d.doc_id for d in documents})))
    session.execute(delete(CorpusChunk).where(CorpusChunk.id.in_(gone)))
    session.add_all(
        CorpusChunk(
            app_id=app_id,
            doc_id=c.doc_id,
            title=c.title,
            heading=c.heading,
            chunk_index=c.index,
            text=c.text,
            model=embedder.name,
            dim=int(v.shape[0]),
            vector=v.astype(np.float32).tobytes(),
        )
        for c, v in zip(chunks, vectors, strict=True)
    )
    session.flush()
    summary = corpus_summary(session, app_id)
    return CorpusSummary(
        app_id=app_id,
        version=summary.version,
        documents=summary.documents,
        chunks=summary.chunks,
        added_documents=len({d.doc_id for d in documents}),
        added_chunks=len(chunks),
    )


def corpus_version(session: Session, app_id: str) -> int | None:
    """None: the app registered no corpus."""
    return session.scalar(select(Corpus.version).where(Corpus.app_id == app_id))


def corpus_summary(session: Session, app_id: str) -> CorpusSummary:
    docs, chunks = session.execute(
        select(func.count(func.distinct(CorpusChunk.doc_id)), func.count(CorpusChunk.id)).where(
            CorpusChunk.app_id == app_id
        )
    ).one()
    return CorpusSummary(
        app_id=app_id,
        version=corpus_version(session, app_id) or 0,
        documents=int(docs),
        chunks=int(chunks),
    )


def list_documents(session: Session, app_id: str) -> list[DocumentSummary]:
    rows = session.execute(
        select(CorpusChunk.doc_id, func.min(CorpusChunk.title), func.count(CorpusChunk.id))
        .where(CorpusChunk.app_id == app_id)
        .group_by(CorpusChunk.doc_id)
        .order_by(CorpusChunk.doc_id)
    ).all()
    return [DocumentSummary(doc_id=d, title=t, chunks=int(n)) for d, t, n in rows]


_CACHE: OrderedDict[tuple[str, int, str], CorpusIndex] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def corpus_index(session: Session, app_id: str, model: str) -> CorpusIndex | None:
    """The app's index over chunks embedded by `model`; None when it registered no corpus."""
    version = corpus_version(session, app_id)
    if version is None:
        return None
    key = (app_id, version, model)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    rows = session.execute(
        select(
            CorpusChunk.id,
            CorpusChunk.doc_id,
            CorpusChunk.title,
            CorpusChunk.heading,
            CorpusChunk.text,
            CorpusChunk.dim,
            CorpusChunk.vector,
        )
        .where(CorpusChunk.app_id == app_id, CorpusChunk.model == model)
        .order_by(CorpusChunk.doc_id, CorpusChunk.chunk_index)
    ).all()
    vectors = vectors_from_rows([r.vector for r in rows], rows[0].dim if rows else 1)
    index = CorpusIndex(
        version, [ChunkMeta(r.id, r.doc_id, r.title, r.heading, r.text) for r in rows], vectors
    )
    with _CACHE_LOCK:
        _CACHE[key] = index
        for stale in [k for k in _CACHE if k[0] == app_id and k != key]:
            del _CACHE[stale]
        while len(_CACHE) > INDEX_CACHE_APPS:
            _CACHE.popitem(last=False)
    return index


def register_path(
    sessions: sessionmaker[Session],
    settings: Settings,
    app_id: str,
    path: Path,
    *,
    replace: bool = False,
) -> CorpusSummary:
    """`add_documents` of a folder or file (refinery.corpus.chunking.read_path), embedded by the
    process's embedder, in one transaction."""
    from refinery.embed.embedder import get_embedder

    documents = read_path(path)
    if not documents:
        raise CorpusError(f"{path}: no documents")
    with sessions.begin() as session:
        return add_documents(
            session,
            app_id,
            documents,
            get_embedder(settings),
            max_chunk_chars=settings.corpus_chunk_max_chars,
            replace=replace,
        )
