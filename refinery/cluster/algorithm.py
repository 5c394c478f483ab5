"""Clustering algorithm: L2-normalized query vectors -> failure-mode labels, no k given.

Owns the pure numerical part of the cluster stage: `cluster_vectors` (batch), `centroids` and
`assign_to_centroids` (streaming). It touches no database, settings object or model; callers pass
the knobs (`Settings.cluster_*`) in. Vectors are `(n, dim)` float32, L2-normalized, so an inner
product is a cosine similarity; labels are int64, `0..k-1` for clusters (0 the largest), `-1` for
outliers.

Method (average linkage on a kNN graph):
1. kNN graph with FAISS: exact `IndexFlatIP` up to `_FLAT_MAX_POINTS`, an IVF index above.
2. Average-linkage agglomeration restricted to graph edges, merging reciprocal best pairs in
   vectorised rounds while the mean pairwise cosine of the two groups is at least
   `similarity_threshold`. Mean pairwise cosine of groups A, B is `sum_A . sum_B / (|A| |B|)`, so
   it is exact from per-group vector sums, and (unlike single linkage or connected components)
   one bridge pair cannot chain two topics together.
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
# grows with n^2, so above this an IVF index is cheaper at a recall near 1 for clustered data.
_FLAT_MAX_POINTS = 20_000
# IVF lists probed per query: 8 of ~2*sqrt(n) lists keeps kNN recall > 0.99 on sentence vectors.
_IVF_NPROBE = 8
# FAISS wants >= 39 training points per list; 40 keeps it quiet without training on everything.
_IVF_TRAIN_PER_LIST = 40
# Rounds of "sample, assign, re-cluster what matched nothing" above max_graph_points.
_SAMPLE_ROUNDS = 4
# Neighbour searches over group means in one linkage. Each search that leads to a merge shrinks
# the groups; real data stalls after a handful, so this only bounds pathological inputs.
_MAX_SEARCHES = 32
# Rows per FAISS/numpy batch: bounds the temporary copies to ~100 MB at 384 dimensions.
_BATCH = 65_536
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
    vectors the graph is built on samples (time and memory stay bounded). Deterministic: the same
    input gives the same labels. Cluster 0 is the largest.
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
    group, sums, counts = _average_linkage(x, threshold, neighbors)
    labels = _dissolve_small(x, group, sums, counts, min_size, attach)
    if labels.max(initial=-1) < 0:
        return labels
    # The Lloyd step: clustered points move to their most similar centroid. Outliers stay out.
    clustered = labels >= 0
    _, best = _best_match(x[clustered], centroids(x, labels))
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
        means = sums / counts[:, None]
        sim, best = _best_match(x, means, rows=pending)
        matched = sim >= attach
        labels[pending[matched]] = best[matched] + next_id
        next_id += len(counts)
        pending = pending[~matched]
        if len(pending) == 0:
            break
    # Vectors still pending after the last round stay outliers: they matched no sampled topic.
    return labels


def _knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours of every row (itself excluded where found); -1 marks no neighbour."""
    n, dim = x.shape
    if k <= 0:
        return np.empty((n, 0), np.float32), np.empty((n, 0), np.int64)
    if n <= _FLAT_MAX_POINTS:
        index: faiss.Index = faiss.IndexFlatIP(dim)
    else:
        nlist = int(2 * math.sqrt(n))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = _SEED
        rng = np.random.default_rng(_SEED)
        train = x[np.sort(rng.choice(n, size=min(n, nlist * _IVF_TRAIN_PER_LIST), replace=False))]
        index.train(train)
        index.nprobe = _IVF_NPROBE
    index.add(x)
    sims = np.empty((n, k + 1), np.float32)
    nbrs = np.empty((n, k + 1), np.int64)
    for start in range(0, n, _BATCH):
        stop = min(n, start + _BATCH)
        sims[start:stop], nbrs[start:stop] = index.search(x[start:stop], k + 1)
    return sims, nbrs


def _average_linkage(
    x: np.ndarray, threshold: float, neighbors: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average linkage over kNN candidates. Returns (group of each point, group sums, sizes).

    The mean cosine between groups A and B is `mean_A . mean_B`, so a kNN search over the group
    means finds each group's best partners exactly. Merging runs in rounds: every group takes its
    most similar candidate, and reciprocal best pairs at or above `threshold` merge. Average
    linkage is reducible, so merging reciprocal nearest neighbours builds the same tree as merging
    one best pair at a time, in O(log n) rounds of numpy work instead of n Python steps. When the
    candidates run out (a group of near-duplicates larger than `neighbors` only sees itself), the
    search is rerun over the current group means, until no pair reaches the threshold.
    """
    n = x.shape[0]
    sums = x.copy()
    counts = np.ones(n, dtype=np.int64)
    group = np.arange(n)
    for _ in range(_MAX_SEARCHES):
        m = len(counts)
        means = x if m == n else sums / counts[:, None].astype(np.float32)
        sims, nbrs = _knn(means, min(neighbors, m - 1))
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
    """Most similar adjacent group of every group (-1 where none); ties go to the lower id."""
    src = np.concatenate([u, v])
    dst = np.concatenate([v, u])
    sim = np.concatenate([s, s])
    order = np.lexsort((dst, -sim, src))
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
        means = sums[big] / counts[big][:, None]
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
