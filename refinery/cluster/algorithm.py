"""Clustering algorithm: L2-normalized query vectors -> failure-mode labels, no k given.

Owns the pure numerical part of the cluster stage: `cluster_vectors` / `fit_clusters` (batch),
`centroids` and `assign_to_centroids` (streaming). It touches no database, settings object or
model; callers pass the knobs (`Settings.cluster_*`) in. Vectors are `(n, dim)` float32,
L2-normalized, so an inner product is a cosine similarity; labels are int64, `0..k-1` for
clusters (0 the largest), `-1` for outliers.

Method (average linkage with kNN candidates, cut where the silhouette is highest):
1. Each vector's `neighbors` nearest neighbours are its merge candidates (FAISS: exact
   `IndexFlatIP` up to 20k vectors, an IVF index above).
2. Average linkage: two groups merge while the mean cosine over all their cross pairs is at
   least a threshold. That mean is `mean_A . mean_B`, exact from per-group sums, and unlike
   single linkage or kNN-graph components, one bridge pair cannot chain two topics together.
   Reciprocal best pairs merge in vectorised rounds; when the candidates run out, the kNN search
   is rerun over the group means (so groups of near-duplicates still meet). Every merge is
   recorded, so the linkage builds the whole merge tree once, down to `similarity_min`.
3. The resolution is chosen per call from the data: each threshold in `[similarity_min,
   similarity_max]` (a coarse sweep, then a fine one around its best) cuts the tree, and the cut
   with the highest mean silhouette wins. The silhouette is taken on cosine distance, on the
   clustering that step 4 makes of the cut (small groups dissolved, their points attached or
   outliers scoring 0), computed from cluster sums (O(rows x clusters), on at most 4,096 rows).
   A caller can still fix `similarity_threshold`; then no sweep runs. Above `_CHOOSE_MAX_POINTS`
   distinct vectors, the tree down to `similarity_min` is built and scored on a uniform sample
   of that many (each standing for its share of the copies, so `min_cluster_size` counts as in
   full), and the linkage over all vectors stops at the chosen threshold: a merge height is a
   mean over cross pairs, which a uniform sample estimates without bias, so the sample's best
   cut is the data's; building the full tree's low tail was most of the cost at 100k.
4. Groups smaller than `min_cluster_size` dissolve; each of their points joins the cluster whose
   members it is most similar to on average, if that mean is at least `attach_threshold`, else it
   is an outlier.
5. Lloyd iterations: each clustered point moves to its most similar centroid, until at most
   0.1% move (at most 20 steps, within a bounded amount of work), undoing early greedy merges;
   outliers stay out. A broad intent the linkage grew around a few greedy merges is pulled back
   to its centroid, as k-means would (SNIPS ARI 0.665 -> 0.732, the others unchanged).
Above `max_graph_points` vectors, steps 1-5 run on a random sample (which also chooses the
threshold, reused for the later rounds); every vector is then assigned by mean similarity, and
the vectors that match nothing are clustered again (a few rounds), so topics too small to show
up in the first sample are still found.

Why the choice transfers: a fixed threshold encodes how tight one dataset's intents are (0.45
fit CLINC150; a customer-service set needed 0.55-0.60, HWU64's short queries ~0.3, SNIPS's broad
intents ~0.2). The silhouette asks the same question of every dataset instead - is a point
closer on average to its own cluster than to the next one? - and is scale-free: it compares
distances within one dataset, so the embedding model's or the domain's similarity level cancels.
Outliers score 0 (neither rewarded nor penalised), so a cut cannot win by dropping points, and a
lone cluster is compared with unrelated directions (distance 1), so one coherent failure mode
among noise is not split to be scored. The bounds only keep the sweep finite; the
`min_cluster_size` and `attach_threshold` semantics (what counts as an outlier) are unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
# Bounds of the threshold search when the caller fixes none (Settings.cluster_similarity_min and
# _max). Wide on purpose: the silhouette chooses; the bounds only keep the sweep finite. Below
# ~0.15 mean cosine, sentence-embedding groups are unrelated topics; above ~0.8, paraphrases.
DEFAULT_SIMILARITY_MIN = 0.15
DEFAULT_SIMILARITY_MAX = 0.8
# The sweep scores thresholds this far apart, then the fine steps around the best one: a
# silhouette curve over thresholds is smooth at 0.05, and 0.01 is finer than its noise.
_COARSE_STEP = 0.05
_FINE_STEP = 0.01
# Rows on which each candidate is scored: the silhouette's sampling error at 4,096 rows (~0.003)
# is below the differences between distinct cuts, and the same rows score every candidate.
_SCORE_ROWS = 4096
# Score differences below this are ties (float noise); ties go to the lower threshold.
_SCORE_TIE = 1e-6
# Above this many distinct vectors the threshold is chosen on a uniform sample of this size and
# the linkage over all of them stops at it (see `_choose_on_sample`): scoring needs the whole
# merge tree down to similarity_min, whose tail (many small merges far below any chosen cut) is
# most of the linkage's cost at 100k.
_CHOOSE_MAX_POINTS = 10_000
# Lloyd iterations after the cut: at most this many, stopping once at most this share of the
# clustered points moves, and within this many point x centroid inner products in all (~1-2 s
# on 2 cores; 100k points x 3k clusters get one step).
_LLOYD_STEPS = 20
_LLOYD_TOLERANCE = 0.001
_LLOYD_WORK = 500_000_000


@dataclass(frozen=True)
class Clustering:
    """Labels and the resolution they were cut at.

    `similarity_threshold` is the average-linkage cut used: chosen from the data when `chosen`,
    else the one the caller fixed. `score` is the silhouette (cosine) of the chosen cut on the
    evaluated points (None when the threshold was fixed).
    """

    labels: np.ndarray
    similarity_threshold: float
    chosen: bool
    score: float | None = None


def cluster_vectors(
    vectors: np.ndarray,
    *,
    similarity_threshold: float | None = None,
    min_cluster_size: int,
    neighbors: int = 15,
    attach_threshold: float = 0.25,
    max_graph_points: int = 100_000,
    similarity_min: float = DEFAULT_SIMILARITY_MIN,
    similarity_max: float = DEFAULT_SIMILARITY_MAX,
) -> np.ndarray:
    """Cluster `(n, dim)` L2-normalized float32 vectors; returns int64 labels of shape `(n,)`.

    Two groups merge while the mean cosine similarity over all their cross pairs is at least the
    cut threshold: `similarity_threshold` if given, else the threshold in
    `[similarity_min, similarity_max]` whose clustering has the highest silhouette (chosen per
    call, see the module docstring; `cluster` also returns it). Every cluster has at least
    `min_cluster_size` members; points that fit no cluster (mean similarity to its members below
    `attach_threshold`) are labelled -1. `neighbors` nearest neighbours per point are the merge
    candidates. Above `max_graph_points` vectors the linkage runs on samples (time and memory stay
    bounded). Deterministic (fixed seeds): the same input on the same machine gives the same
    labels. Cluster 0 is the largest.
    """
    return fit_clusters(
        vectors,
        similarity_threshold=similarity_threshold,
        min_cluster_size=min_cluster_size,
        neighbors=neighbors,
        attach_threshold=attach_threshold,
        max_graph_points=max_graph_points,
        similarity_min=similarity_min,
        similarity_max=similarity_max,
    ).labels


def fit_clusters(
    vectors: np.ndarray,
    *,
    similarity_threshold: float | None = None,
    min_cluster_size: int,
    neighbors: int = 15,
    attach_threshold: float = 0.25,
    max_graph_points: int = 100_000,
    similarity_min: float = DEFAULT_SIMILARITY_MIN,
    similarity_max: float = DEFAULT_SIMILARITY_MAX,
) -> Clustering:
    """`cluster_vectors`, also returning the threshold it cut at (and whether it was chosen)."""
    if min_cluster_size < 1:
        raise ValueError(f"min_cluster_size must be >= 1, got {min_cluster_size}")
    if neighbors < 1:
        raise ValueError(f"neighbors must be >= 1, got {neighbors}")
    if similarity_threshold is None and not similarity_min <= similarity_max:
        raise ValueError(
            f"similarity_min {similarity_min} must not exceed similarity_max {similarity_max}"
        )
    x = _as_matrix(vectors)
    n = x.shape[0]
    cut = _Cut(similarity_threshold, similarity_min, similarity_max)
    if n == 0:
        return Clustering(np.empty(0, dtype=np.int64), cut.fallback, cut.fixed is None)
    if n <= max_graph_points:
        labels, cut = _cluster_graph(x, cut, min_cluster_size, neighbors, attach_threshold)
    else:
        labels, cut = _cluster_sampled(
            x, cut, min_cluster_size, neighbors, attach_threshold, max_graph_points
        )
    return Clustering(
        _relabel_by_size(labels),
        cut.threshold,
        similarity_threshold is None,
        cut.score,
    )


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


@dataclass
class _Cut:
    """The threshold to cut at: `fixed`, or to be chosen in [lo, hi] (then `threshold`, `score`)."""

    fixed: float | None
    lo: float
    hi: float
    threshold: float = float("nan")
    score: float | None = None

    @property
    def fallback(self) -> float:
        return self.fixed if self.fixed is not None else self.lo


def _cluster_graph(
    x: np.ndarray, cut: _Cut, min_size: int, neighbors: int, attach: float
) -> tuple[np.ndarray, _Cut]:
    """Steps 1-4 on all of `x`; labels not yet ordered by size. Returns the cut it used."""
    distinct, inverse, weight = _collapse_duplicates(x)
    if cut.fixed is not None:
        group, sums, counts, _ = _average_linkage(distinct, weight, cut.fixed, neighbors)
        cut = _Cut(cut.fixed, cut.lo, cut.hi, cut.fixed)
    elif len(distinct) <= _CHOOSE_MAX_POINTS:
        # One linkage down to the lowest allowed threshold; every candidate cut is read off its
        # tree, scored, and the best one is used.
        _, _, _, tree = _average_linkage(distinct, weight, cut.lo, neighbors)
        threshold, score = _choose_cut(distinct, weight, tree, cut, min_size, attach)
        cut = _Cut(None, cut.lo, cut.hi, threshold, score)
        group = tree.cut(threshold)
        sums, counts = _weighted_sums(distinct, weight, group)
    else:
        # The threshold is chosen on a uniform sample of the distinct vectors, each standing for
        # its share of all copies (so min_cluster_size still counts the whole data); then one
        # linkage over everything stops at that threshold instead of building the whole tree.
        threshold, score = _choose_on_sample(distinct, weight, cut, min_size, neighbors, attach)
        cut = _Cut(None, cut.lo, cut.hi, threshold, score)
        group, sums, counts, _ = _average_linkage(distinct, weight, threshold, neighbors)
    labels = _dissolve_small(x, group[inverse], sums, counts, min_size, attach)
    if labels.max(initial=-1) < 0:
        return labels, cut
    # Lloyd iterations: clustered points move to their most similar centroid until (almost) none
    # moves, undoing greedy merges the linkage made early; outliers stay out. Each step costs
    # rows x clusters inner products, so the steps are bounded by `_LLOYD_WORK` (at least one).
    clustered = np.flatnonzero(labels >= 0)
    work = len(clustered) * (int(labels.max()) + 1)
    for _ in range(max(1, min(_LLOYD_STEPS, _LLOYD_WORK // max(work, 1)))):
        _, best = _best_match(x, centroids(x, labels), rows=clustered)
        moved = int(np.count_nonzero(best != labels[clustered]))
        labels[clustered] = best
        if moved <= _LLOYD_TOLERANCE * len(clustered):
            break
    return _drop_small(labels, min_size), cut


def _cluster_sampled(
    x: np.ndarray,
    cut: _Cut,
    min_size: int,
    neighbors: int,
    attach: float,
    sample_size: int,
) -> tuple[np.ndarray, _Cut]:
    n = x.shape[0]
    rng = np.random.default_rng(_SEED)
    labels = np.full(n, -1, dtype=np.int64)
    pending = np.arange(n)
    next_id = 0
    chosen: _Cut | None = None
    for _ in range(_SAMPLE_ROUNDS):
        # The first sample chooses the threshold (a uniform sample has the data's structure);
        # later rounds, over what matched nothing, reuse it: their points are the residue, whose
        # own best cut would not describe the data.
        use = cut if chosen is None else _Cut(chosen.threshold, cut.lo, cut.hi)
        if len(pending) <= sample_size:
            sub, used = _cluster_graph(x[pending], use, min_size, neighbors, attach)
            chosen = chosen or used
            found = sub >= 0
            labels[pending[found]] = sub[found] + next_id
            break
        sample = np.sort(rng.choice(pending, size=sample_size, replace=False))
        sub, used = _cluster_graph(x[sample], use, min_size, neighbors, attach)
        chosen = chosen or used
        if sub.max(initial=-1) < 0:
            break
        # Mean vectors, not normalized: x . mean is x's mean cosine to the members, the same
        # rule that attached points in step 3, so a cluster keeps its tightness when it grows.
        sums, counts = _label_sums(x[sample], sub)
        # A cluster id that lost all its members (dropped as too small) gets a zero row: no
        # vector can match it, and no division by zero puts NaN rows into the search.
        means = np.divide(
            sums,
            counts[:, None].astype(np.float32),
            out=np.zeros_like(sums),
            where=counts[:, None] > 0,
        )
        sim, best = _best_match(x, means, rows=pending)
        matched = sim >= attach
        labels[pending[matched]] = best[matched] + next_id
        next_id += len(counts)
        pending = pending[~matched]
        if len(pending) == 0:
            break
    # Vectors still pending after the last round stay outliers: they matched no sampled topic.
    # A sampled cluster can lose members to a closer one when everything is assigned.
    return _drop_small(labels, min_size), chosen or cut


# --- choosing the cut -----------------------------------------------------------------------


class _Tree:
    """The merge forest of one linkage: merge j joins nodes `children[j]` into node n + j at
    similarity `heights[j]` (non-increasing from children to parents)."""

    def __init__(self, n: int, children: np.ndarray, heights: np.ndarray) -> None:
        self.n = n
        self.children = children.astype(np.int64)
        self.heights = heights.astype(np.float32)

    def cut(self, threshold: float) -> np.ndarray:
        """Group id `0..g-1` of each leaf when only merges at or above `threshold` are kept."""
        total = self.n + len(self.heights)
        parent = np.arange(total)
        kept = np.flatnonzero(self.heights >= threshold)
        parent[self.children[kept, 0]] = self.n + kept
        parent[self.children[kept, 1]] = self.n + kept
        # Pointer jumping: log2(depth) vectorised passes find every leaf's topmost kept ancestor.
        while True:
            hop = parent[parent]
            if np.array_equal(hop, parent):
                break
            parent = hop
        _, group = np.unique(parent[: self.n], return_inverse=True)
        return group.astype(np.int64)


def _choose_cut(
    distinct: np.ndarray,
    weight: np.ndarray,
    tree: _Tree,
    cut: _Cut,
    min_size: int,
    attach: float,
) -> tuple[float, float]:
    """The candidate threshold whose clustering has the highest mean silhouette (see module doc).

    Each candidate is scored as steps 2-3 would leave it (groups below min size dissolved, their
    points attached or outliers), on the same random rows (at most `_SCORE_ROWS`), so the
    comparison between candidates is paired. The sweep is coarse (`_COARSE_STEP`), then fine
    (`_FINE_STEP`) around the best coarse candidate. Ties go to the lowest threshold: the
    coarsest clustering that explains the data as well.
    """
    # Scored on the distinct vectors, each once: copies of one query say how often it was asked,
    # not where topics part, and a pile of copies (distance 0) would otherwise look like a
    # perfect cluster of its own. Sizes (min_cluster_size) still count every copy.
    m = distinct.shape[0]
    rng = np.random.default_rng(_SEED)
    rows = np.arange(m) if m <= _SCORE_ROWS else np.sort(rng.choice(m, _SCORE_ROWS, replace=False))
    xr = distinct[rows]
    ones = np.ones(m, dtype=np.int64)
    scores: dict[float, float] = {}

    def score(t: float) -> float:
        t = round(t, 4)
        if t not in scores:
            group = tree.cut(t)
            big = np.bincount(group, weights=weight) >= min_size
            sums, sizes = _weighted_sums(distinct, ones, group, np.where(big, 1, np.inf))
            scores[t] = _silhouette(xr, group[rows], sums, sizes, big, attach, m / len(rows))
        return scores[t]

    def best(candidates: np.ndarray) -> float:
        values = [score(float(t)) for t in candidates]
        top = max(values)
        return float(candidates[next(i for i, v in enumerate(values) if v >= top - _SCORE_TIE)])

    coarse = best(_grid(cut.lo, cut.hi, _COARSE_STEP))
    fine = _grid(
        max(cut.lo, coarse - _COARSE_STEP + _FINE_STEP),
        min(cut.hi, coarse + _COARSE_STEP - _FINE_STEP),
        _FINE_STEP,
    )
    chosen = best(np.union1d(fine, [coarse]))
    return chosen, scores[round(chosen, 4)]


def _choose_on_sample(
    distinct: np.ndarray,
    weight: np.ndarray,
    cut: _Cut,
    min_size: int,
    neighbors: int,
    attach: float,
) -> tuple[float, float]:
    """`_choose_cut` on `_CHOOSE_MAX_POINTS` distinct vectors drawn uniformly.

    Average linkage transfers from a uniform sample: a merge height is a mean over cross pairs,
    which a sample estimates without bias (a single-linkage height, a minimum, would not), so the
    sample's merge tree has the data's cuts at the same thresholds. Each sampled vector stands for
    `total / sampled` copies, so a group counts toward `min_cluster_size` what it would in full.
    """
    m = distinct.shape[0]
    rng = np.random.default_rng(_SEED)
    pick = np.sort(rng.choice(m, size=_CHOOSE_MAX_POINTS, replace=False))
    w = weight[pick].astype(np.float64) * (weight.sum() / weight[pick].sum())
    sample = distinct[pick]
    _, _, _, tree = _average_linkage(sample, w, cut.lo, neighbors)
    return _choose_cut(sample, w, tree, cut, min_size, attach)


def _grid(lo: float, hi: float, step: float) -> np.ndarray:
    steps = int(np.floor((hi - lo) / step + 1e-6))
    return np.round(lo + step * np.arange(steps + 1), 4)


def _silhouette(
    xr: np.ndarray,
    member_of: np.ndarray,
    sums: np.ndarray,
    sizes: np.ndarray,
    big_groups: np.ndarray,
    attach: float,
    scale: float,
) -> float:
    """Mean silhouette (cosine distance) of rows `xr` whose groups are `member_of`.

    Mean distances come from group sums (cosine is linear in them): O(rows x groups x dim), not
    O(rows x n x dim). The clustering scored is the one step 4 makes of these groups: the groups
    marked in `big_groups` (at least min size, copies counted) are clusters; the other rows join
    their most similar cluster if its mean similarity reaches `attach`, else they are outliers
    and score 0, as singletons do in the usual definition. `sums` and `sizes` are over the
    points scored; rows stand for `scale` points each: the attached rows, scaled, are added to
    their cluster's sum and size (exact when every point is a row). A cluster with no rival (one
    cluster) is compared with distance 1, the expected distance between unrelated directions, so
    one coherent cluster need not split to score.
    """
    big = np.flatnonzero(big_groups)
    if len(big) == 0:
        return 0.0
    slot = np.full(len(sizes), -1, dtype=np.int64)
    slot[big] = np.arange(len(big))
    own = slot[member_of]
    member = own >= 0
    csum = sums[big]
    size = sizes[big].astype(np.float32)
    dots = xr @ csum.T  # (rows, clusters): sums of cosines to each cluster's members
    k = np.arange(len(xr))
    mean = dots / size
    nearest = np.argmax(mean, axis=1)
    attached = ~member & (mean[k, nearest] >= attach)
    home = np.where(member, own, np.where(attached, nearest, -1))
    if attached.any():
        extra, added = _label_sums(xr, np.where(attached, nearest, -1))
        csum = csum.copy()
        csum[: len(added)] += scale * extra
        size[: len(added)] += scale * added
        dots = xr @ csum.T
        mean = dots / size
    scored = home >= 0
    h = np.maximum(home, 0)
    # Own mean similarity, the row itself left out (its cosine 1 is in the sum).
    own_sum = dots[k, h] - scored
    own_n = size[h] - scored
    a = 1.0 - np.divide(own_sum, own_n, out=np.ones_like(own_sum), where=own_n > 0)
    mean[k, h] = -np.inf
    b = 1.0 - np.maximum(mean.max(axis=1), 0.0)  # -inf (no rival) becomes distance 1
    top = np.maximum(a, b)
    s = np.divide(b - a, top, out=np.zeros_like(a), where=top > 0)
    return float(np.where(scored & (own_n > 0), s, 0.0).mean())


def _weighted_sums(
    points: np.ndarray,
    weight: np.ndarray,
    group: np.ndarray,
    min_size: float | np.ndarray = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-group sums of `points` (each standing for `weight` copies) and group sizes.

    Sums of groups below `min_size` (a number, or one per group) are left zero: they are
    dissolved, and skipping their many small segments is most of the cost at high thresholds.
    """
    counts = np.bincount(group, weights=weight).astype(np.int64)
    kept = np.where(counts >= min_size, np.arange(len(counts)), -1)[group]
    sums, _ = _label_sums(points * weight[:, None].astype(np.float32), kept)
    if len(sums) < len(counts):
        sums = np.vstack([sums, np.zeros((len(counts) - len(sums), points.shape[1]), np.float32)])
    return sums, counts


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
) -> tuple[np.ndarray, np.ndarray, np.ndarray, _Tree]:
    """Average linkage over kNN candidates down to `threshold`.

    Returns (group of each point, group sums, sizes, merge tree). `points` are distinct vectors,
    each standing for `weight` identical ones; sizes count those.

    The mean cosine between groups A and B is `mean_A . mean_B`, so a kNN search over the group
    means finds each group's best partners exactly. Merging runs in rounds: every group takes its
    most similar candidate, and reciprocal best pairs at or above `threshold` merge. Average
    linkage is reducible, so merging reciprocal nearest neighbours builds the same tree as merging
    one best pair at a time, in O(log n) rounds of numpy work instead of n Python steps. When the
    candidates run out (a group of near-duplicates larger than `neighbors` only sees itself), the
    search is rerun over the current group means, until no pair reaches the threshold.

    Every merge is recorded (children, similarity), so a cut at any higher threshold is read off
    the tree without running the linkage again (`_Tree.cut`).
    """
    n = points.shape[0]
    sums = points * weight[:, None].astype(np.float32)
    counts = weight.copy()
    group = np.arange(n)
    # Tree node of each current group (leaves 0..n-1, merge j is node n + j) and the height of
    # that node. A merge found by a later search can be more similar than one before it (an
    # inversion: its partner was not among the earlier candidates); the height is capped at its
    # children's, so that the tree's cuts stay nested.
    node = np.arange(n)
    height = np.full(n, np.inf, dtype=np.float32)
    children: list[np.ndarray] = []
    heights: list[np.ndarray] = []
    next_node = n
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
            h = np.minimum(best_sim[a], np.minimum(height[a], height[b]))
            children.append(np.stack([node[a], node[b]], axis=1))
            heights.append(h)
            node[a] = next_node + np.arange(len(a))
            height[a] = h
            next_node += len(a)
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
            node, height = node[alive], height[alive]
            group = remap[group]
            u, v, s = _dedupe(remap[u], remap[v], s, len(counts))
            # Only edges touching a merged group change their mean similarity.
            stale = changed[u] | changed[v]
            s[stale] = _mean_similarity(sums, counts, u[stale], v[stale])
            keep = s >= threshold
            u, v, s = u[keep], v[keep], s[keep]
        if not merged or len(counts) == 1:
            break
    tree = _Tree(
        n,
        np.concatenate(children) if children else np.empty((0, 2), np.int64),
        np.concatenate(heights) if heights else np.empty(0, np.float32),
    )
    return group, sums, counts, tree


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
