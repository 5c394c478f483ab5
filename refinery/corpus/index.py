"""A FAISS inner-product index over L2-normalized chunk vectors (cosine), and what it returns."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

SNIPPET_CHARS = 280


@dataclass(frozen=True)
class CorpusHit:
    """One chunk near a query: its document, where in it, cosine similarity and a snippet."""

    doc_id: str
    title: str
    heading: str
    chunk_id: int
    score: float
    snippet: str


@dataclass(frozen=True)
class ChunkMeta:
    chunk_id: int
    doc_id: str
    title: str
    heading: str
    text: str


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"


class CorpusIndex:
    """`search(queries (n, dim) float32 L2-normalized, k) -> n lists of hits, best first`."""

    def __init__(self, version: int, chunks: list[ChunkMeta], vectors: np.ndarray) -> None:
        if len(chunks) != len(vectors):
            raise ValueError("one vector per chunk")
        self.version = version
        self.chunks = chunks
        self.dim = int(vectors.shape[1]) if vectors.ndim == 2 and len(vectors) else 0
        self._index = faiss.IndexFlatIP(self.dim or 1)
        if len(chunks):
            self._index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.chunks)

    def search(self, queries: np.ndarray, k: int) -> list[list[CorpusHit]]:
        if not len(self.chunks) or not len(queries):
            return [[] for _ in range(len(queries))]
        if queries.shape[1] != self.dim:
            raise ValueError(f"query dim {queries.shape[1]} != corpus dim {self.dim}")
        scores, ids = self._index.search(
            np.ascontiguousarray(queries, dtype=np.float32), min(k, len(self.chunks))
        )
        out = []
        for row_scores, row_ids in zip(scores, ids, strict=True):
            hits = []
            for score, i in zip(row_scores, row_ids, strict=True):
                if i < 0:
                    continue
                c = self.chunks[int(i)]
                hits.append(
                    CorpusHit(
                        doc_id=c.doc_id,
                        title=c.title,
                        heading=c.heading,
                        chunk_id=c.chunk_id,
                        score=round(float(score), 4),
                        snippet=snippet(c.text),
                    )
                )
            out.append(hits)
        return out
