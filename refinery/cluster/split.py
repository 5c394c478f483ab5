"""Split a text cluster whose members fail in clearly different ways (pure: numpy only).

Neighbouring intents can be one topic to the embedding and still be two failure modes: users
correct the answers on one and complain the answers are too long on the other. The queries
cannot tell them apart, the evidence can (refinery.signals.evidence.failure_type). A cluster is
split when two or more specific failure types each reach `min_size` members and `min_share` of
the cluster: each such type's members form their own part; the remaining members (unspecified,
or a specific type too rare to stand alone) join the part whose centroid they are closest to,
since they are most likely the same failure mode with less evidence. Below those bounds a few
neighbours with other evidence stay in the cluster; drafting outweighs them by majority.
"""

from __future__ import annotations

import numpy as np

from refinery.signals.evidence import SPECIFIC_TYPES


def split_by_failure_type(
    labels: np.ndarray,
    types: list[str],
    vectors: np.ndarray,
    *,
    min_size: int,
    min_share: float,
) -> tuple[np.ndarray, int]:
    """New labels (the parts of a split cluster get fresh labels after the existing ones; the
    largest part keeps the old label) and how many clusters were split. Deterministic."""
    labels = np.asarray(labels, dtype=np.int64).copy()
    if labels.size == 0:
        return labels, 0
    kinds = np.asarray(types, dtype=object)
    next_label = int(labels.max()) + 1
    split = 0
    for label in sorted(set(labels[labels >= 0].tolist())):
        positions = np.flatnonzero(labels == label)
        n = len(positions)
        counts = {t: int((kinds[positions] == t).sum()) for t in SPECIFIC_TYPES}
        parts = [t for t in SPECIFIC_TYPES if counts[t] >= min_size and counts[t] / n >= min_share]
        if len(parts) < 2:
            continue
        # Largest part first (type precedence breaks ties): it keeps the label, and so most
        # likely the cluster's id, by member overlap.
        parts.sort(key=lambda t: (-counts[t], SPECIFIC_TYPES.index(t)))
        typed = {t: positions[kinds[positions] == t] for t in parts}
        centres = np.stack([_unit(vectors[typed[t]].sum(axis=0)) for t in parts])
        rest = positions[~np.isin(kinds[positions], parts)]
        nearest = (
            np.argmax(vectors[rest] @ centres.T, axis=1) if len(rest) else np.empty(0, np.int64)
        )
        for index, t in enumerate(parts):
            new = label if index == 0 else next_label
            if index:
                next_label += 1
            labels[typed[t]] = new
            labels[rest[nearest == index]] = new
        split += 1
    return labels, split


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return (v / norm).astype(np.float32) if norm > 0 else v.astype(np.float32)
