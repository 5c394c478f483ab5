"""Unit tests of refinery.cluster.algorithm on synthetic vectors with known structure."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from refinery.cluster import algorithm
from refinery.cluster.algorithm import assign_to_centroids, centroids, cluster_vectors

DIM = 64
PARAMS: dict[str, Any] = {"similarity_threshold": 0.45, "min_cluster_size": 5}


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
    labels = cluster_vectors(x, similarity_threshold=0.45, min_cluster_size=1)
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
    labels = cluster_vectors(x, similarity_threshold=0.45, min_cluster_size=5, neighbors=5)
    assert adjusted_rand_score(truth, labels) == 1.0


def test_exact_duplicates_cluster_and_count_as_members() -> None:
    # Identical vectors tie in every neighbour search; each copy still counts toward min size.
    rng = np.random.default_rng(5)
    distinct = _normalize(rng.standard_normal((30, DIM)))
    which = rng.integers(0, 30, 3000)
    labels = cluster_vectors(distinct[which], **PARAMS)
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
    np.testing.assert_array_equal(
        cluster_vectors(x[:1], similarity_threshold=0.45, min_cluster_size=1), [0]
    )
    np.testing.assert_array_equal(
        cluster_vectors(x, similarity_threshold=0.45, min_cluster_size=1), [0, 0, 0]
    )


def test_rejects_bad_arguments() -> None:
    x, _, _ = _blobs([10])
    with pytest.raises(ValueError, match="matrix"):
        cluster_vectors(x[0], **PARAMS)
    with pytest.raises(ValueError, match="min_cluster_size"):
        cluster_vectors(x, similarity_threshold=0.45, min_cluster_size=0)
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
