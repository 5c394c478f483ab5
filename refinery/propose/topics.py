"""Whether clusters are about the same topic, judged from their members' vectors alone.

The clustering may split one failure mode into several clusters (a broad intent, streaming
assignment, stable ids holding on to an old boundary). Two clusters are one topic when the mean
similarity *between* their members (average linkage) is nearly as high as the mean similarity
*within* them (their cohesions, combined by the geometric mean): a reader could not tell the
split apart from the spread inside one cluster. The test is relative to each pair's own
cohesion, so it carries over between embedding models and datasets whose absolute cosines
differ; two neighbouring topics of one app are each tighter than they are close to one another,
and stay apart.

Everything is exact from per-cluster sums of L2-normalized member vectors: for a sum s of n unit
vectors, |s|^2 = n + the sum over ordered pairs of distinct members, and s_a . s_b / (n_a n_b) is
the mean cross-pair cosine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TopicVectors:
    """Sum and count of a cluster's L2-normalized member vectors."""

    total: np.ndarray
    count: int

    @classmethod
    def of(cls, vectors: np.ndarray) -> TopicVectors:
        x = np.asarray(vectors, dtype=np.float64)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0)
        return cls(total=x.sum(axis=0), count=len(x))

    def __add__(self, other: TopicVectors) -> TopicVectors:
        return TopicVectors(total=self.total + other.total, count=self.count + other.count)


def cohesion(t: TopicVectors) -> float:
    """Mean cosine between two distinct members; 1.0 for a single member (nothing to spread)."""
    if t.count < 2:
        return 1.0
    return float((t.total @ t.total - t.count) / (t.count * (t.count - 1)))


def linkage(a: TopicVectors, b: TopicVectors) -> float:
    """Mean cosine between a member of `a` and a member of `b`."""
    return float(a.total @ b.total / (a.count * b.count))


def topic_closeness(a: TopicVectors, b: TopicVectors) -> float:
    """Linkage over the geometric mean of the two cohesions: 1.0 means the clusters are as close
    to each other as their members are within them. The geometric mean, not the looser cluster
    alone, so that one broad cluster does not make every neighbour look like its own topic (on
    a CLINC150 sample it separated split intents from neighbouring intents best of min, max and
    geometric mean)."""
    ca, cb = cohesion(a), cohesion(b)
    if ca <= 0 or cb <= 0:
        return 0.0  # a cluster with no inner agreement has no topic to share
    return linkage(a, b) / float(np.sqrt(ca * cb))


def group_same_topic(topics: list[TopicVectors | None], min_closeness: float) -> list[list[int]]:
    """Indexes of `topics` grouped by topic, by average-linkage agglomeration: the closest pair of
    groups merges while its closeness is at least `min_closeness`, and a merged group is judged
    by its pooled members (so a chain of neighbours does not creep into one group). None (no
    vectors) is a group of its own. Deterministic: ties go to the lowest indexes; each group is
    sorted, groups ordered by their first index."""
    groups: list[tuple[list[int], TopicVectors | None]] = [([i], t) for i, t in enumerate(topics)]
    while True:
        best: tuple[float, int, int] | None = None
        for i in range(len(groups)):
            ti = groups[i][1]
            if ti is None:
                continue
            for j in range(i + 1, len(groups)):
                tj = groups[j][1]
                if tj is None:
                    continue
                score = topic_closeness(ti, tj)
                if score >= min_closeness and (best is None or score > best[0]):
                    best = (score, i, j)
        if best is None:
            break
        _, i, j = best
        ti, tj = groups[i][1], groups[j][1]
        assert ti is not None and tj is not None
        groups[i] = (sorted(groups[i][0] + groups[j][0]), ti + tj)
        del groups[j]
    return sorted((members for members, _ in groups), key=lambda m: m[0])
