"""Cluster labels: top keywords by class-based TF-IDF over member queries, and the member queries
closest to the centroid (the representatives a reviewer reads first)."""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

# Cosine at or above which two queries say the same thing (MiniLM: a greeting or a typo apart).
NEAR_DUPLICATE = 0.95
_TOKEN = re.compile(r"[^\W\d_][\w'-]{1,}", re.UNICODE)
# A short English stop list: labels should name topics, not grammar.
_STOPWORDS = frozenset(
    """
    a about above after again all am an and any are as at be because been before being below
    between both but by can could did do does doing don't down during each few for from
    further get got had has have having he her here hers him his how i i'm if in into is it
    it's its itself just me more most my myself no nor not now of off on once only or other
    our ours out over own please same she should so some such than that the their theirs
    them then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself can't
    cannot hi hello thanks thank
    """.split()  # noqa: SIM905 (a word list reads better as one string)
)


def tokenize(text: str) -> list[str]:
    return [t for t in (m.group(0).lower() for m in _TOKEN.finditer(text)) if t not in _STOPWORDS]


def cluster_keywords(docs_by_cluster: dict[str, list[str]], top_n: int = 5) -> dict[str, list[str]]:
    """For each cluster, the terms most frequent in it relative to all clusters (c-TF-IDF)."""
    term_counts = {
        cid: Counter(t for d in docs for t in tokenize(d)) for cid, docs in docs_by_cluster.items()
    }
    total_per_term: Counter[str] = Counter()
    for counts in term_counts.values():
        total_per_term.update(counts)
    avg_words = sum(total_per_term.values()) / max(len(term_counts), 1)
    keywords: dict[str, list[str]] = {}
    for cid, counts in term_counts.items():
        size = sum(counts.values()) or 1
        scored = [
            (count / size * math.log(1 + avg_words / total_per_term[term]), term)
            for term, count in counts.items()
        ]
        scored.sort(key=lambda st: (-st[0], st[1]))
        keywords[cid] = [term for _, term in scored[:top_n]]
    return keywords


def representative_queries(
    queries: list[str], vectors: np.ndarray, centroid: np.ndarray, top_n: int = 5
) -> list[str]:
    """The `top_n` member queries most similar to `centroid`, most similar first, none a copy of
    one already chosen: neither the same text (compared case- and whitespace-insensitively) nor a
    near-duplicate (cosine >= NEAR_DUPLICATE, e.g. the same question after a greeting), so the
    reviewer reads different ways the failure shows, not one question five times.

    `vectors` are the members' `(n, dim)` L2-normalized vectors, in the order of `queries`.
    """
    if not queries:
        return []
    x = np.asarray(vectors, dtype=np.float32)
    sims = x @ np.asarray(centroid, dtype=np.float32)
    chosen: list[int] = []
    seen: set[str] = set()
    for i in np.argsort(-sims, kind="stable").tolist():
        key = " ".join(queries[i].lower().split())
        if key in seen or (chosen and float(np.max(x[chosen] @ x[i])) >= NEAR_DUPLICATE):
            continue
        seen.add(key)
        chosen.append(i)
        if len(chosen) == top_n:
            break
    return [queries[i] for i in chosen]
