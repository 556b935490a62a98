"""Similarity decomposition: maps sum to the pooled cosine; region re-ranking equals a naive loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vfs.analysis.decompose import decompose, rerank_region, surrogate
from vfs.errors import SearchError


def pooled_cosine(a: np.ndarray, b: np.ndarray, pooling: str) -> float:
    pa = a.mean(axis=(1, 2)) if pooling == "avg" else a.max(axis=(1, 2))
    pb = b.mean(axis=(1, 2)) if pooling == "avg" else b.max(axis=(1, 2))
    return float(pa @ pb / (np.linalg.norm(pa) * np.linalg.norm(pb)))


@pytest.mark.parametrize("pooling", ["avg", "max"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_maps_sum_to_the_pooled_cosine_on_random_features(pooling, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(16, 5, 6)).astype(np.float32)
    b = np.maximum(rng.normal(size=(16, 3, 4)), 0).astype(np.float32)  # another grid size, post-ReLU
    map_a, map_b, score = decompose(a, b, pooling=pooling)
    assert map_a.shape == (5, 6) and map_b.shape == (3, 4)
    expected = pooled_cosine(a.astype(np.float64), b.astype(np.float64), pooling)
    assert score == pytest.approx(expected, abs=1e-9)
    assert map_a.sum() == pytest.approx(score, abs=1e-9)
    assert map_b.sum() == pytest.approx(score, abs=1e-9)


def test_max_pooling_splits_ties_evenly():
    a = np.zeros((2, 2, 2))
    a[0] = [[3.0, 1.0], [3.0, 3.0]]  # channel 0: three cells tie at the max
    a[1] = [[0.0, 2.0], [0.0, 0.0]]  # channel 1: one winner
    b = np.ones((2, 3, 3))
    hat = surrogate(torch.from_numpy(a), pooling="max").numpy()
    np.testing.assert_allclose(hat[0], [[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(hat[1], [[0.0, 2.0], [0.0, 0.0]])
    map_a, map_b, score = decompose(a, b, pooling="max")
    norm = np.linalg.norm([3.0, 2.0]) * np.linalg.norm([1.0, 1.0])
    np.testing.assert_allclose(map_a, np.array([[1.0, 2.0], [1.0, 1.0]]) / norm)
    # B is constant: every one of its 9 cells ties in every channel, so its map is uniform
    np.testing.assert_allclose(map_b, np.full((3, 3), 5.0 / 9.0 / norm))
    assert map_a.sum() == pytest.approx(score) and map_b.sum() == pytest.approx(score)
    assert score == pytest.approx(pooled_cosine(a, b, "max"))


def test_max_pooling_with_many_ties_from_relu_zeros():
    rng = np.random.default_rng(3)
    a = np.maximum(rng.normal(size=(32, 4, 4)) - 1.5, 0)  # mostly zeros: whole zero channels tie everywhere
    a[0] = 2.0  # a constant channel: 16-way tie at a non-zero max
    b = np.maximum(rng.normal(size=(32, 4, 4)), 0)
    map_a, map_b, score = decompose(a, b, pooling="max")
    assert map_a.sum() == pytest.approx(score, abs=1e-12) and map_b.sum() == pytest.approx(score, abs=1e-12)
    assert score == pytest.approx(pooled_cosine(a, b, "max"), abs=1e-12)


def test_identical_images_score_one_and_zero_vectors_score_zero():
    a = np.random.default_rng(4).random((8, 3, 3))
    for pooling in ("avg", "max"):
        map_a, map_b, score = decompose(a, a, pooling=pooling)
        assert score == pytest.approx(1.0)
        np.testing.assert_allclose(map_a, map_b)
    map_a, _, score = decompose(np.zeros((8, 3, 3)), a)
    assert score == 0.0 and not map_a.any()


def test_refuses_mismatched_inputs():
    with pytest.raises(SearchError, match="same layer"):
        decompose(np.ones((3, 2, 2)), np.ones((4, 2, 2)))
    with pytest.raises(SearchError, match="avg, max"):
        decompose(np.ones((3, 2, 2)), np.ones((3, 2, 2)), pooling="sum")
    with pytest.raises(SearchError, match="3-D"):
        decompose(np.ones((1, 3, 2, 2)), np.ones((3, 2, 2)))


@pytest.mark.parametrize("pooling", ["avg", "max"])
@pytest.mark.parametrize("block", [1, 7, 1000])
def test_rerank_region_equals_a_naive_loop(pooling, block):
    rng = np.random.default_rng(5)
    source = np.maximum(rng.normal(size=(23, 12, 4, 4)), 0).astype(np.float32)
    query = source[3]
    weights = np.zeros((4, 4), np.float32)
    weights[1:3, 0:2] = 1.0
    weights[3, 3] = 0.5  # soft weights count proportionally
    naive = []
    for i in range(len(source)):
        if i == 3:
            continue
        map_q, _, score = decompose(query, source[i], pooling=pooling)
        naive.append((float((map_q * weights).sum()), i, score))
    naive.sort(key=lambda t: -t[0])
    got = rerank_region(query, weights, source, pooling=pooling, k=6, exclude=[3], block=block)
    assert [m.index for m in got] == [i for _, i, _ in naive[:6]]
    np.testing.assert_allclose([m.score for m in got], [s for s, _, _ in naive[:6]], atol=1e-9)
    np.testing.assert_allclose([m.similarity for m in got], [s for _, _, s in naive[:6]], atol=1e-9)


def test_rerank_whole_region_ranks_by_the_full_cosine():
    rng = np.random.default_rng(6)
    source = torch.from_numpy(rng.random((10, 6, 3, 3)))
    got = rerank_region(source[0], np.ones((3, 3)), source, k=10)
    assert got[0].index == 0 and got[0].score == pytest.approx(1.0)
    for match in got:
        assert match.score == pytest.approx(match.similarity)


def test_rerank_refuses_bad_weights():
    source = np.ones((4, 3, 2, 2))
    with pytest.raises(SearchError, match="mask_to_grid"):
        rerank_region(source[0], np.ones((3, 3)), source)
    with pytest.raises(SearchError, match="all zero"):
        rerank_region(source[0], np.zeros((2, 2)), source)


def test_maps_sum_to_the_score_on_real_features():
    """efficientnet_lite0 features of two scikit-image photos (the bundled ImageNet weights, offline)."""
    import skimage.data

    from vfs.models.features import FeatureExtractor
    from vfs.models.loading import load_model

    model = load_model("efficientnet_lite0")
    extractor = FeatureExtractor(model.module, "blocks.5", preprocess=model.preprocess)
    features = extractor([skimage.data.astronaut(), skimage.data.chelsea()]).numpy()  # (2, 192, 7, 7)
    a, b = features.astype(np.float64)
    for pooling in ("avg", "max"):
        map_a, map_b, score = decompose(features[0], features[1], pooling=pooling)
        assert score == pytest.approx(pooled_cosine(a, b, pooling), abs=1e-6)
        assert map_a.sum() == pytest.approx(score, abs=1e-6) and map_b.sum() == pytest.approx(score, abs=1e-6)
        assert np.ptp(map_a) > 0  # a real map, not a constant
    # re-ranking two photos by the whole region recovers the full cosine
    got = rerank_region(features[0], np.ones((7, 7)), features, k=2, exclude=[0])
    assert got[0].index == 1 and got[0].score == pytest.approx(decompose(features[0], features[1]).score, abs=1e-6)
