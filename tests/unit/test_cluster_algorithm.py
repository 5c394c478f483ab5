"""Unit tests of refinery.cluster.algorithm on synthetic vectors with known structure."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from refinery.cluster import algorithm
from refinery.cluster.algorithm import assign_to_centroids, centroids, cluster_vectors

DIM = 64
PARAMS: dict[str, Any] = {"min_cluster_size": 5}  # the threshold is chosen from the data


def _normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _blobs(
    sizes: list[int], spread: float = 0.08, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian blobs on the unit sphere: (vectors, true labels, unit centres).

    Random centres in 64 dimensions are nearly orthogonal (cosine ~0 +- 0.12); spread 0.08 per
    dimension puts members at cosine ~0.7 to each other, so the blobs are well separated.
    """
    rng = np.random.default_rng(seed)
    centres = _normalize(rng.standard_normal((len(sizes), DIM)))
    truth = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[truth] + spread * rng.standard_normal((len(truth), DIM))
    return _normalize(x), truth, centres


def _assert_label_contract(labels: np.ndarray, n: int, min_size: int) -> None:
    assert labels.dtype == np.int64
    assert labels.shape == (n,)
    sizes = np.bincount(labels[labels >= 0])
    assert labels.min(initial=-1) >= -1
    assert (sizes >= min_size).all(), "every cluster id 0..k-1 used, each >= min size"
    assert list(sizes) == sorted(sizes, reverse=True), "cluster 0 is the largest"


def test_recovers_well_separated_blobs() -> None:
    x, truth, _ = _blobs([60, 45, 40, 30, 25, 20, 12, 8])
    labels = cluster_vectors(x, **PARAMS)
    _assert_label_contract(labels, len(x), 5)
    assert labels.max() + 1 == 8
    assert adjusted_rand_score(truth, labels) >= 0.95
    assert (labels >= 0).all(), "no member of a blob is an outlier"


def test_scattered_points_are_outliers() -> None:
    x, truth, _ = _blobs([40, 40, 40])
    rng = np.random.default_rng(1)
    noise = _normalize(rng.standard_normal((25, DIM)))  # cosine ~0 to everything
    labels = cluster_vectors(np.vstack([x, noise]), **PARAMS)
    _assert_label_contract(labels, len(x) + len(noise), 5)
    assert (labels[len(x) :] == -1).all()
    assert adjusted_rand_score(truth, labels[: len(x)]) >= 0.95
    assert (labels[: len(x)] >= 0).all()


def test_groups_below_min_size_are_outliers_or_attached() -> None:
    # A blob of 4 far from everything cannot reach min size 5: its members are outliers.
    x, _, _ = _blobs([30, 30, 4])
    labels = cluster_vectors(x, **PARAMS)
    assert labels.max() + 1 == 2
    assert (labels[60:] == -1).all()
    assert (labels[:60] >= 0).all()


def test_min_cluster_size_one_keeps_small_groups() -> None:
    x, truth, _ = _blobs([30, 30, 4])
    labels = cluster_vectors(x, min_cluster_size=1)
    assert adjusted_rand_score(truth, labels) >= 0.95


def test_deterministic() -> None:
    x, _, _ = _blobs([50, 40, 30, 20, 10], spread=0.12)
    first = cluster_vectors(x, **PARAMS)
    for _ in range(3):
        np.testing.assert_array_equal(cluster_vectors(x.copy(), **PARAMS), first)


def test_threshold_controls_merging() -> None:
    # Two blobs whose centres have cosine 0.8: one cluster at a low threshold, two at a high one.
    rng = np.random.default_rng(2)
    a = _normalize(rng.standard_normal((1, DIM)))[0]
    b = _normalize((0.8 * a + 0.6 * _normalize(rng.standard_normal((1, DIM)))[0])[None])[0]
    centres = np.stack([a, b])
    truth = np.repeat([0, 1], 40)
    x = _normalize(centres[truth] + 0.04 * rng.standard_normal((80, DIM)))
    low = cluster_vectors(x, similarity_threshold=0.5, min_cluster_size=5)
    high = cluster_vectors(x, similarity_threshold=0.85, min_cluster_size=5)
    assert low.max() + 1 == 1
    assert high.max() + 1 == 2
    assert adjusted_rand_score(truth, high) == 1.0


def test_duplicate_groups_larger_than_neighbours_still_merge() -> None:
    # Each topic is 3 phrasings x 20 near-identical copies: with 5 neighbours a point only sees
    # copies of itself, so the topic merges only through the search over group means.
    rng = np.random.default_rng(3)
    centres = _normalize(rng.standard_normal((4, DIM)))
    phrasings = _normalize(np.repeat(centres, 3, axis=0) + 0.08 * rng.standard_normal((12, DIM)))
    x = _normalize(np.repeat(phrasings, 20, axis=0) + 0.002 * rng.standard_normal((240, DIM)))
    truth = np.repeat(np.arange(4), 60)
    # A fixed threshold: this tests the linkage. Left to choose, the silhouette would rightly see
    # 12 tight groups (each phrasing's 20 near-copies), see the next test for exact copies.
    labels = cluster_vectors(x, similarity_threshold=0.45, min_cluster_size=5, neighbors=5)
    assert adjusted_rand_score(truth, labels) == 1.0


def test_exact_copies_do_not_split_a_topic_by_phrasing() -> None:
    # The same question asked by many users embeds to identical vectors: 4 topics x 3 phrasings
    # x 20 exact copies. The threshold is chosen on the distinct vectors, so a pile of copies is
    # not a perfect cluster of its own and each topic comes out as one cluster.
    rng = np.random.default_rng(3)
    centres = _normalize(rng.standard_normal((4, DIM)))
    phrasings = _normalize(np.repeat(centres, 3, axis=0) + 0.08 * rng.standard_normal((12, DIM)))
    x = np.repeat(phrasings, 20, axis=0)
    truth = np.repeat(np.arange(4), 60)
    assert adjusted_rand_score(truth, cluster_vectors(x, **PARAMS)) == 1.0


def test_exact_duplicates_cluster_and_count_as_members() -> None:
    # Identical vectors tie in every neighbour search; each copy still counts toward min size.
    rng = np.random.default_rng(5)
    distinct = _normalize(rng.standard_normal((30, DIM)))
    which = rng.integers(0, 30, 3000)
    # 30 unrelated queries: a fixed threshold keeps them apart (left to choose, chance pairs of
    # random directions, cosine ~0.4 in 64 dimensions, are as good a cut as any).
    labels = cluster_vectors(distinct[which], similarity_threshold=0.45, min_cluster_size=5)
    assert adjusted_rand_score(which, labels) == 1.0
    same = np.repeat(distinct[:1], 5, axis=0)
    np.testing.assert_array_equal(cluster_vectors(same, **PARAMS), [0] * 5)
    np.testing.assert_array_equal(cluster_vectors(same[:4], **PARAMS), [-1] * 4)


@pytest.mark.parametrize("n", [0, 1, 2, 4])
def test_tiny_inputs(n: int) -> None:
    x, _, _ = _blobs([4])
    labels = cluster_vectors(x[:n], **PARAMS)
    assert labels.dtype == np.int64
    assert labels.shape == (n,)
    assert (labels == -1).all(), "fewer points than min_cluster_size: all outliers"


def test_tiny_inputs_with_min_size_one() -> None:
    x, _, _ = _blobs([3])
    np.testing.assert_array_equal(cluster_vectors(x[:1], min_cluster_size=1), [0])
    np.testing.assert_array_equal(cluster_vectors(x, min_cluster_size=1), [0, 0, 0])


def test_rejects_bad_arguments() -> None:
    x, _, _ = _blobs([10])
    with pytest.raises(ValueError, match="matrix"):
        cluster_vectors(x[0], **PARAMS)
    with pytest.raises(ValueError, match="min_cluster_size"):
        cluster_vectors(x, min_cluster_size=0)
    with pytest.raises(ValueError, match="neighbors"):
        cluster_vectors(x, **PARAMS, neighbors=0)


def test_sampled_path_recovers_blobs() -> None:
    # Above max_graph_points the graph is built on samples and the rest assigned; a blob of 10
    # in 1,010 points has ~2 members per 200-point sample, so it is found from the residual.
    x, truth, _ = _blobs([300, 250, 200, 150, 100, 10])
    labels = cluster_vectors(x, **PARAMS, max_graph_points=200)
    _assert_label_contract(labels, len(x), 5)
    assert adjusted_rand_score(truth, labels) >= 0.95


def test_ivf_path_recovers_blobs(monkeypatch: pytest.MonkeyPatch) -> None:
    # The IVF index normally starts at 20,000 vectors; lower the switch to test it quickly.
    monkeypatch.setattr(algorithm, "_FLAT_MAX_POINTS", 1000)
    x, truth, _ = _blobs([2000] * 4, spread=0.1)
    labels = cluster_vectors(x, **PARAMS)
    assert adjusted_rand_score(truth, labels) >= 0.95


def test_centroids_are_normalized_means_ignoring_outliers() -> None:
    x, truth, centres = _blobs([40, 30])
    labels = truth.copy()
    labels[0] = -1
    c = centroids(x, labels)
    assert c.dtype == np.float32
    assert c.shape == (2, DIM)
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-5)
    expected = x[1:40].sum(axis=0)
    np.testing.assert_allclose(c[0], expected / np.linalg.norm(expected), atol=1e-5)
    assert (np.sum(c * centres, axis=1) > 0.95).all()


def test_centroids_of_all_outliers_is_empty() -> None:
    x, _, _ = _blobs([5])
    assert centroids(x, np.full(5, -1)).shape == (0, DIM)


def test_assign_to_centroids_respects_threshold() -> None:
    x, truth, centres = _blobs([30, 30, 30])
    rng = np.random.default_rng(4)
    far = _normalize(rng.standard_normal((10, DIM)))
    labels = assign_to_centroids(np.vstack([x, far]), centres, threshold=0.5)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels[:90], truth)
    assert (labels[90:] == -1).all()
    # Members sit at cosine ~0.78 to their centre: a threshold above that rejects them.
    assert (assign_to_centroids(x, centres, threshold=0.95) == -1).all()
    sims = np.max(x @ centres.T, axis=1)
    ordered = np.sort(sims)
    cut = float(ordered[44] + ordered[45]) / 2  # halfway between two members: no rounding tie
    assert ((assign_to_centroids(x, centres, threshold=cut) >= 0) == (sims >= cut)).all()


def test_assign_to_no_centroids() -> None:
    x, _, _ = _blobs([5])
    assert (assign_to_centroids(x, np.empty((0, DIM), np.float32), 0.0) == -1).all()
    assert assign_to_centroids(x[:0], x, 0.0).shape == (0,)


# --- the threshold chosen from the data --------------------------------------------------------


def _spread_for(cosine: float) -> float:
    """Per-dimension sigma at which two members of a blob have mean cosine ~`cosine`."""
    return float(np.sqrt((1 / cosine - 1) / DIM))


def test_loose_topics_found_where_a_fixed_threshold_fragments_them() -> None:
    # Members at cosine ~0.3 to each other (broad intents): a fixed 0.45 merges nothing.
    x, truth, _ = _blobs([40, 35, 30, 30, 25, 20], spread=_spread_for(0.3), seed=11)
    result = algorithm.fit_clusters(x, **PARAMS)
    assert result.chosen and 0.15 <= result.similarity_threshold < 0.3
    assert result.labels.max() + 1 == 6
    assert adjusted_rand_score(truth, result.labels) >= 0.95
    fixed = cluster_vectors(x, similarity_threshold=0.45, min_cluster_size=5)
    assert adjusted_rand_score(truth, fixed) < 0.5


def test_tight_neighbouring_topics_kept_apart_where_a_fixed_threshold_merges_them() -> None:
    # Pairs of tight topics (members at cosine ~0.85) whose centres have cosine 0.55: the mean
    # cosine across a pair is ~0.47, so a fixed 0.45 merges pairs into one topic.
    rng = np.random.default_rng(12)
    base = _normalize(rng.standard_normal((4, DIM)))
    other = _normalize(rng.standard_normal((4, DIM)))
    twins = _normalize(0.55 * base + np.sqrt(1 - 0.55**2) * other)
    centres = np.vstack([base, twins])
    truth = np.repeat(np.arange(8), 30)
    x = _normalize(centres[truth] + _spread_for(0.85) * rng.standard_normal((len(truth), DIM)))
    result = algorithm.fit_clusters(x, **PARAMS)
    assert result.labels.max() + 1 == 8
    assert adjusted_rand_score(truth, result.labels) >= 0.95
    fixed = cluster_vectors(x, similarity_threshold=0.45, min_cluster_size=5)
    assert fixed.max() + 1 < 8, "the fixed threshold merges some of the pairs"


@pytest.mark.parametrize("tightness", [0.3, 0.5, 0.8])
def test_failing_modes_among_scattered_noise(tightness: float) -> None:
    # The production case: a handful of failing modes plus ~2% scattered queries of other
    # topics. Each mode must come out as one cluster (>= 80% pure, >= 60% covered) and the
    # scattered queries must stay outliers, whatever the modes' tightness.
    x, truth, _ = _blobs([30, 28, 25, 22, 20, 18, 15, 12], spread=_spread_for(tightness), seed=13)
    rng = np.random.default_rng(14)
    noise = _normalize(rng.standard_normal((5, DIM)))
    labels = cluster_vectors(np.vstack([x, noise]), **PARAMS)
    assert (labels[len(x) :] == -1).all()
    for mode in range(8):
        members = labels[: len(x)][truth == mode]
        top = np.bincount(members[members >= 0]).argmax()
        assert np.mean(members == top) >= 0.6
        assert np.mean(truth[labels[: len(x)] == top] == mode) >= 0.8
    assert labels.max() + 1 == 8


def test_one_mode_among_noise_is_one_cluster() -> None:
    # With one cluster there is no rival to score against: it is compared with unrelated
    # directions, so a single coherent mode is not split in two to be scored.
    x, _, _ = _blobs([40], spread=_spread_for(0.4), seed=15)
    noise = _normalize(np.random.default_rng(16).standard_normal((3, DIM)))
    labels = cluster_vectors(np.vstack([x, noise]), **PARAMS)
    assert (labels[:40] == 0).all()
    assert (labels[40:] == -1).all()


def test_fit_clusters_reports_the_threshold() -> None:
    x, _, _ = _blobs([30, 30, 30])
    chosen = algorithm.fit_clusters(x, **PARAMS, similarity_min=0.2, similarity_max=0.6)
    assert chosen.chosen and 0.2 <= chosen.similarity_threshold <= 0.6
    assert chosen.score is not None and chosen.score > 0.5
    np.testing.assert_array_equal(
        chosen.labels, cluster_vectors(x, **PARAMS, similarity_min=0.2, similarity_max=0.6)
    )
    fixed = algorithm.fit_clusters(x, similarity_threshold=0.5, min_cluster_size=5)
    assert not fixed.chosen and fixed.similarity_threshold == 0.5 and fixed.score is None
    with pytest.raises(ValueError, match="similarity_min"):
        cluster_vectors(x, **PARAMS, similarity_min=0.7, similarity_max=0.3)


def test_sampled_path_chooses_on_the_first_sample() -> None:
    x, truth, _ = _blobs([300, 250, 200, 150, 100], spread=_spread_for(0.35), seed=17)
    result = algorithm.fit_clusters(x, **PARAMS, max_graph_points=300)
    assert result.chosen and result.similarity_threshold < 0.35
    assert adjusted_rand_score(truth, result.labels) >= 0.95


def test_threshold_chosen_on_a_sample_above_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    # Above _CHOOSE_MAX_POINTS distinct vectors the cut is chosen on a uniform sample (average
    # linkage heights are means over pairs, so the sample has the data's cuts) and the linkage
    # over all vectors stops at it: the same topics as choosing on everything.
    x, truth, _ = _blobs([120, 100, 90, 80, 60, 50], spread=_spread_for(0.35), seed=18)
    full = algorithm.fit_clusters(x, **PARAMS)
    monkeypatch.setattr(algorithm, "_CHOOSE_MAX_POINTS", 200)
    sampled = algorithm.fit_clusters(x, **PARAMS)
    assert sampled.chosen and abs(sampled.similarity_threshold - full.similarity_threshold) <= 0.1
    assert sampled.labels.max() + 1 == 6
    assert adjusted_rand_score(truth, sampled.labels) >= 0.95


def test_clustered_points_sit_with_their_most_similar_centroid() -> None:
    # Lloyd iterations run to convergence after the cut: every clustered point's most similar
    # centroid is its own cluster's (outliers stay out).
    x, _, _ = _blobs([40, 35, 30], spread=_spread_for(0.25), seed=19)
    noise = _normalize(np.random.default_rng(20).standard_normal((4, DIM)))
    x = np.vstack([x, noise])
    labels = cluster_vectors(x, **PARAMS)
    clustered = labels >= 0
    nearest = np.argmax(x[clustered] @ centroids(x, labels).T, axis=1)
    assert np.mean(nearest == labels[clustered]) >= 0.999
