"""Clustering algorithm: L2-normalized query vectors -> failure-mode labels, no k given.

Owns the pure numerical part of the cluster stage: `cluster_vectors` (batch), `centroids` and
`assign_to_centroids` (streaming). It touches no database, settings object or model; callers pass
the knobs (`Settings.cluster_*`) in. Vectors are `(n, dim)` float32, L2-normalized, so an inner
product is a cosine similarity; labels are int64, `0..k-1` for clusters (0 the largest), `-1` for
outliers.

Method (average linkage with kNN candidates):
1. Each vector's `neighbors` nearest neighbours are its merge candidates (FAISS: exact
   `IndexFlatIP` up to 20k vectors, an IVF index above).
2. Average linkage: two groups merge while the mean cosine over all their cross pairs is at
   least `similarity_threshold`. That mean is `mean_A . mean_B`, exact from per-group sums, and
   unlike single linkage or kNN-graph components, one bridge pair cannot chain two topics
   together. Reciprocal best pairs merge in vectorised rounds; when the candidates run out, the
   kNN search is rerun over the group means (so groups of near-duplicates still meet).
3. Groups smaller than `min_cluster_size` dissolve; each of their points joins the cluster whose
   members it is most similar to on average, if that mean is at least `attach_threshold`, else it
   is an outlier.
4. One Lloyd step: each clustered point moves to its most similar centroid, undoing early greedy
   merges.
Above `max_graph_points` vectors, steps 1-4 run on a random sample; every vector is then assigned
by mean similarity, and the vectors that match nothing are clustered again (a few rounds), so
topics too small to show up in the first sample are still found.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

# Exact search up to here: a 20k x 20k inner-product search takes ~1.5 s on 2 cores; the cost
# grows with n^2, so above this an IVF index is cheaper.
_FLAT_MAX_POINTS = 20_000
# IVF with 4*sqrt(n) lists, 8 probed: kNN recall@15 0.96 on CLINC150 sentence vectors (23.7k),
# 0.99 on denser data, and a missed neighbour rarely changes an average-linkage merge.
_IVF_LISTS_PER_SQRT_N = 4
_IVF_NPROBE = 8
# Training points per IVF list: 20 trains the coarse quantizer well enough at half the cost of
# FAISS's default minimum (39).
_IVF_TRAIN_PER_LIST = 20
# Rounds of "sample, assign, re-cluster what matched nothing" above max_graph_points.
_SAMPLE_ROUNDS = 4
# Neighbour searches over group means in one linkage. Each search that leads to a merge shrinks
# the groups; real data stalls after a handful, so this only bounds pathological inputs.
_MAX_SEARCHES = 32
# Rows per FAISS/numpy batch: bounds each temporary copy to ~25 MB at 384 dimensions.
_BATCH = 16_384
_SEED = 1234


def cluster_vectors(
    vectors: np.ndarray,
    *,
    similarity_threshold: float,
    min_cluster_size: int,
    neighbors: int = 15,
    attach_threshold: float = 0.25,
    max_graph_points: int = 100_000,
) -> np.ndarray:
    """Cluster `(n, dim)` L2-normalized float32 vectors; returns int64 labels of shape `(n,)`.

    Two groups merge while the mean cosine similarity over all their cross pairs is at least
    `similarity_threshold`. Every cluster has at least `min_cluster_size` members; points that fit
    no cluster (mean similarity to its members below `attach_threshold`) are labelled -1.
    `neighbors` nearest neighbours per point are the merge candidates. Above `max_graph_points`
    vectors the linkage runs on samples (time and memory stay bounded). Deterministic (fixed
    seeds): the same input on the same machine gives the same labels. Cluster 0 is the largest.
    """
    if min_cluster_size < 1:
        raise ValueError(f"min_cluster_size must be >= 1, got {min_cluster_size}")
    if neighbors < 1:
        raise ValueError(f"neighbors must be >= 1, got {neighbors}")
    x = _as_matrix(vectors)
    n = x.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.int64)
    if n <= max_graph_points:
        labels = _cluster_graph(
            x, similarity_threshold, min_cluster_size, neighbors, attach_threshold
        )
    else:
        labels = _cluster_sampled(
            x,
            similarity_threshold,
            min_cluster_size,
            neighbors,
            attach_threshold,
            max_graph_points,
        )
    return _relabel_by_size(labels)


def centroids(vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """`(k, dim)` float32 L2-normalized centroid per label `0..k-1` (k = labels.max() + 1).

    Outliers (-1) are ignored; a label with no member gets a zero row.
    """
    x = _as_matrix(vectors)
    sums, _ = _label_sums(x, np.asarray(labels, dtype=np.int64))
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0).astype(np.float32)


def assign_to_centroids(vectors: np.ndarray, centroids: np.ndarray, threshold: float) -> np.ndarray:
    """Label of the most similar centroid per vector, or -1 where that cosine is below `threshold`.

    For streaming new failing queries into existing clusters. Members of a cluster built at
    `similarity_threshold` t typically sit at cosine ~sqrt(t) from its centroid, so t itself is a
    lenient, sensible `threshold`.
    """
    x = _as_matrix(vectors)
    refs = _as_matrix(centroids) if len(centroids) else np.empty((0, x.shape[1]), np.float32)
    sim, idx = _best_match(x, refs)
    return np.where(sim >= threshold, idx, -1).astype(np.int64)


# --- internals ------------------------------------------------------------------------------


def _as_matrix(vectors: np.ndarray) -> np.ndarray:
    x = np.asarray(vectors)
    if x.ndim != 2:
        raise ValueError(f"expected a (n, dim) matrix, got shape {x.shape}")
    # FAISS needs C-contiguous float32; this is a no-op for the embedder's output.
    return np.ascontiguousarray(x, dtype=np.float32)


def _cluster_graph(
    x: np.ndarray, threshold: float, min_size: int, neighbors: int, attach: float
) -> np.ndarray:
    """Steps 1-4 on all of `x`; labels not yet ordered by size."""
    distinct, inverse, weight = _collapse_duplicates(x)
    group, sums, counts = _average_linkage(distinct, weight, threshold, neighbors)
    labels = _dissolve_small(x, group[inverse], sums, counts, min_size, attach)
    if labels.max(initial=-1) < 0:
        return labels
    # The Lloyd step: clustered points move to their most similar centroid. Outliers stay out.
    clustered = np.flatnonzero(labels >= 0)
    _, best = _best_match(x, centroids(x, labels), rows=clustered)
    labels[clustered] = best
    return _drop_small(labels, min_size)


def _cluster_sampled(
    x: np.ndarray,
    threshold: float,
    min_size: int,
    neighbors: int,
    attach: float,
    sample_size: int,
) -> np.ndarray:
    n = x.shape[0]
    rng = np.random.default_rng(_SEED)
    labels = np.full(n, -1, dtype=np.int64)
    pending = np.arange(n)
    next_id = 0
    for _ in range(_SAMPLE_ROUNDS):
        if len(pending) <= sample_size:
            sub = _cluster_graph(x[pending], threshold, min_size, neighbors, attach)
            found = sub >= 0
            labels[pending[found]] = sub[found] + next_id
            break
        sample = np.sort(rng.choice(pending, size=sample_size, replace=False))
        sub = _cluster_graph(x[sample], threshold, min_size, neighbors, attach)
        if sub.max(initial=-1) < 0:
            break
        # Mean vectors, not normalized: x . mean is x's mean cosine to the members, the same
        # rule that attached points in step 3, so a cluster keeps its tightness when it grows.
        sums, counts = _label_sums(x[sample], sub)
        means = sums / counts[:, None].astype(np.float32)
        sim, best = _best_match(x, means, rows=pending)
        matched = sim >= attach
        labels[pending[matched]] = best[matched] + next_id
        next_id += len(counts)
        pending = pending[~matched]
        if len(pending) == 0:
            break
    # Vectors still pending after the last round stay outliers: they matched no sampled topic.
    # A sampled cluster can lose members to a closer one when everything is assigned.
    return _drop_small(labels, min_size)


def _knn(
    x: np.ndarray, k: int, ivf: faiss.IndexIVFFlat | None = None
) -> tuple[np.ndarray, np.ndarray, faiss.IndexIVFFlat | None]:
    """k nearest rows of every row by inner product (itself excluded where found; -1: none).

    Also returns the IVF index it used, if any: passing it back reuses its trained coarse
    quantizer (training costs seconds) for rows from the same space, e.g. the group means.
    """
    n, dim = x.shape
    if k <= 0:
        return np.empty((n, 0), np.float32), np.empty((n, 0), np.int64), ivf
    index: faiss.Index
    if n <= _FLAT_MAX_POINTS:
        index = faiss.IndexFlatIP(dim)
    else:
        if ivf is None:
            nlist = int(_IVF_LISTS_PER_SQRT_N * math.sqrt(n))
            ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            ivf.cp.seed = _SEED
            ivf.cp.min_points_per_centroid = _IVF_TRAIN_PER_LIST  # we sample that many on purpose
            rng = np.random.default_rng(_SEED)
            size = min(n, nlist * _IVF_TRAIN_PER_LIST)
            ivf.train(x[np.sort(rng.choice(n, size=size, replace=False))])
            ivf.nprobe = _IVF_NPROBE
        ivf.reset()  # drops the stored rows, keeps the trained quantizer
        index = ivf
    index.add(x)
    sims = np.empty((n, k + 1), np.float32)
    nbrs = np.empty((n, k + 1), np.int64)
    for start in range(0, n, _BATCH):
        stop = min(n, start + _BATCH)
        sims[start:stop], nbrs[start:stop] = index.search(x[start:stop], k + 1)
    return sims, nbrs, ivf


def _collapse_duplicates(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct rows, row -> distinct index, copies per distinct row).

    Identical queries are common (the same question from many users) and identical vectors tie:
    every copy gets the same k neighbours, so a pile of copies larger than k would merge a few at
    a time. As one weighted point they weigh the same in every mean and cost one search row.
    """
    n = x.shape[0]
    # A random linear hash of the float bits finds candidates in one pass (an exact row sort
    # takes ~10x longer); rows are then compared, so a collision cannot merge distinct vectors.
    words = x.view(np.uint32)
    rng = np.random.default_rng(_SEED)
    odd = rng.integers(0, 2**63, words.shape[1], dtype=np.uint64) | np.uint64(1)
    keys = np.zeros(n, dtype=np.uint64)
    for start in range(0, n, _BATCH):
        block = words[start : start + _BATCH].astype(np.uint64)
        keys[start : start + _BATCH] = (block * odd).sum(axis=1)  # wraps mod 2**64
    _, first, inverse, copies = np.unique(
        keys, return_index=True, return_inverse=True, return_counts=True
    )
    if len(first) == n:
        return x, np.arange(n), np.ones(n, dtype=np.int64)
    same = all(
        np.array_equal(x[start : start + _BATCH], x[first[inverse[start : start + _BATCH]]])
        for start in range(0, n, _BATCH)
    )
    if not same:  # a 64-bit hash collision: keep every row, correct and merely slower
        return x, np.arange(n), np.ones(n, dtype=np.int64)
    return x[first], inverse, copies.astype(np.int64)


def _average_linkage(
    points: np.ndarray, weight: np.ndarray, threshold: float, neighbors: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average linkage over kNN candidates. Returns (group of each point, group sums, sizes).

    `points` are distinct vectors, each standing for `weight` identical ones; sizes count those.

    The mean cosine between groups A and B is `mean_A . mean_B`, so a kNN search over the group
    means finds each group's best partners exactly. Merging runs in rounds: every group takes its
    most similar candidate, and reciprocal best pairs at or above `threshold` merge. Average
    linkage is reducible, so merging reciprocal nearest neighbours builds the same tree as merging
    one best pair at a time, in O(log n) rounds of numpy work instead of n Python steps. When the
    candidates run out (a group of near-duplicates larger than `neighbors` only sees itself), the
    search is rerun over the current group means, until no pair reaches the threshold.
    """
    n = points.shape[0]
    sums = points * weight[:, None].astype(np.float32)
    counts = weight.copy()
    group = np.arange(n)
    ivf = None
    for _ in range(_MAX_SEARCHES):
        m = len(counts)
        means = points if m == n else sums / counts[:, None].astype(np.float32)
        sims, nbrs, ivf = _knn(means, min(neighbors, m - 1), ivf)
        rows = np.repeat(np.arange(m), nbrs.shape[1])
        cols, sim = nbrs.ravel(), sims.ravel()
        # Only pairs at or above the threshold can merge now; the rerun finds later ones.
        keep = (cols >= 0) & (cols != rows) & (sim >= threshold)
        u, v, s = _dedupe(rows[keep], cols[keep], sim[keep], m)
        merged = False
        while len(u):
            m = len(counts)
            best, best_sim = _best_neighbour(u, v, s, m)
            cand = np.flatnonzero(best >= 0)
            partner = best[cand]
            # a < b breaks the symmetry so each reciprocal pair merges once, into its lower id.
            pair = (best[partner] == cand) & (cand < partner) & (best_sim[cand] >= threshold)
            a, b = cand[pair], partner[pair]
            if len(a) == 0:
                break
            merged = True
            sums[a] += sums[b]
            counts[a] += counts[b]
            alive = np.ones(m, dtype=bool)
            alive[b] = False
            parent = np.arange(m)
            parent[b] = a
            remap = (np.cumsum(alive) - 1)[parent]
            changed = np.zeros(m, dtype=bool)
            changed[a] = True
            changed = changed[alive]
            sums, counts = sums[alive], counts[alive]
            group = remap[group]
            u, v, s = _dedupe(remap[u], remap[v], s, len(counts))
            # Only edges touching a merged group change their mean similarity.
            stale = changed[u] | changed[v]
            s[stale] = _mean_similarity(sums, counts, u[stale], v[stale])
            keep = s >= threshold
            u, v, s = u[keep], v[keep], s[keep]
        if not merged or len(counts) == 1:
            break
    return group, sums, counts


def _dedupe(
    u: np.ndarray, v: np.ndarray, s: np.ndarray, m: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected edge list without self-loops or duplicates (first occurrence's weight kept)."""
    lo, hi = np.minimum(u, v), np.maximum(u, v)
    proper = lo != hi
    lo, hi, s = lo[proper], hi[proper], s[proper]
    _, first = np.unique(lo.astype(np.int64) * m + hi, return_index=True)
    return lo[first], hi[first], s[first].astype(np.float32)


def _best_neighbour(
    u: np.ndarray, v: np.ndarray, s: np.ndarray, m: int
) -> tuple[np.ndarray, np.ndarray]:
    """Most similar adjacent group of every group (-1 where none)."""
    src = np.concatenate([u, v])
    dst = np.concatenate([v, u])
    sim = np.concatenate([s, s])
    # One float64 sort key, group id major and similarity (in [-1, 1]) descending minor: several
    # times faster than a lexsort; the stable sort keeps ties in edge order, so it is deterministic.
    order = np.argsort(src * 4.0 + (1.0 - sim.astype(np.float64)), kind="stable")
    src, dst, sim = src[order], dst[order], sim[order]
    head = np.ones(len(src), dtype=bool)
    head[1:] = src[1:] != src[:-1]
    best = np.full(m, -1, dtype=np.int64)
    best_sim = np.full(m, -np.inf, dtype=np.float32)
    best[src[head]] = dst[head]
    best_sim[src[head]] = sim[head]
    return best, best_sim


def _mean_similarity(
    sums: np.ndarray, counts: np.ndarray, u: np.ndarray, v: np.ndarray
) -> np.ndarray:
    out = np.empty(len(u), dtype=np.float32)
    for start in range(0, len(u), _BATCH):
        iu, iv = u[start : start + _BATCH], v[start : start + _BATCH]
        dots = np.einsum("ij,ij->i", sums[iu], sums[iv])
        out[start : start + _BATCH] = dots / (counts[iu] * counts[iv])
    return out


def _dissolve_small(
    x: np.ndarray,
    group: np.ndarray,
    sums: np.ndarray,
    counts: np.ndarray,
    min_size: int,
    attach: float,
) -> np.ndarray:
    big = np.flatnonzero(counts >= min_size)
    ids = np.full(len(counts), -1, dtype=np.int64)
    ids[big] = np.arange(len(big))
    labels = ids[group]
    loose = np.flatnonzero(labels < 0)
    if len(loose) and len(big):
        means = sums[big] / counts[big][:, None].astype(np.float32)
        sim, best = _best_match(x, means, rows=loose)
        labels[loose] = np.where(sim >= attach, best, -1)
    return labels


def _drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    sizes = np.bincount(labels[labels >= 0], minlength=labels.max(initial=-1) + 1)
    labels = labels.copy()
    labels[(labels >= 0) & (sizes[np.maximum(labels, 0)] < min_size)] = -1
    return labels


def _relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters 0..k-1, largest first (ties by first member), so ids are stable."""
    out = np.full(len(labels), -1, dtype=np.int64)
    clustered = labels >= 0
    if not clustered.any():
        return out
    uniq, first, inverse, sizes = np.unique(
        labels[clustered], return_index=True, return_inverse=True, return_counts=True
    )
    order = np.lexsort((first, -sizes))
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[order] = np.arange(len(uniq))
    out[clustered] = rank[inverse]
    return out


def _label_sums(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-label vector sums and member counts for labels 0..max (outliers ignored)."""
    k = int(labels.max(initial=-1)) + 1
    sums = np.zeros((k, x.shape[1]), dtype=np.float32)
    counts = np.zeros(k, dtype=np.int64)
    members = np.flatnonzero(labels >= 0)
    if len(members) == 0:
        return sums, counts
    members = members[np.argsort(labels[members], kind="stable")]
    counts += np.bincount(labels[members], minlength=k)
    # reduceat over label-sorted rows: no per-row Python work and no (n, k) matrix; chunked so
    # the gathered copy of x stays small.
    for lo in range(0, len(members), _BATCH):
        chunk = members[lo : lo + _BATCH]
        seg_labels, seg_starts = np.unique(labels[chunk], return_index=True)
        sums[seg_labels] += np.add.reduceat(x[chunk], seg_starts, axis=0)
    return sums, counts


def _best_match(
    x: np.ndarray, refs: np.ndarray, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Highest inner product with a row of `refs` and its index, for `x` (or `x[rows]`)."""
    n = x.shape[0] if rows is None else len(rows)
    sim = np.full(n, -np.inf, dtype=np.float32)
    idx = np.full(n, -1, dtype=np.int64)
    if n == 0 or len(refs) == 0:
        return sim, idx
    index = faiss.IndexFlatIP(refs.shape[1])
    index.add(np.ascontiguousarray(refs, dtype=np.float32))
    for start in range(0, n, _BATCH):
        stop = min(n, start + _BATCH)
        batch = x[start:stop] if rows is None else x[rows[start:stop]]
        d, i = index.search(np.ascontiguousarray(batch), 1)
        sim[start:stop], idx[start:stop] = d[:, 0], i[:, 0]
    return sim, idx
