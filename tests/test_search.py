"""The masked-window search against a naive loop oracle, planted answers and blockwise == one-shot."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
import zarr

from vfs.errors import MaskError, SearchError
from vfs.retrieval import kernels, numba_kernel
from vfs.retrieval.kernels import make_plan
from vfs.retrieval.prepared import prepare
from vfs.retrieval.window import BestWindows, Match, best_windows, plan_search, search


@pytest.fixture(autouse=True, params=["torch", "numba"])
def kernel(request, monkeypatch):
    """Run every test through the torch path and through the fused numba kernel for small masks."""
    if request.param == "numba" and not numba_kernel.AVAILABLE:
        pytest.skip(reason="numba is not installed (or VFS_NUMBA=0): the torch path alone is tested")
    monkeypatch.setattr("vfs.retrieval.kernels.USE_NUMBA", request.param == "numba")
    return request.param


# ---------------------------------------------------------------- oracle


def oracle_scores(query: np.ndarray, weights: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Cosine of every window, by plain loops over images, offsets and cells: (N, H', W') float64."""
    rows, cols = np.nonzero(weights > 0)
    top, left = rows.min(), cols.min()
    height, width = rows.max() + 1 - top, cols.max() + 1 - left
    n_images, _, grid_h, grid_w = features.shape
    out = np.zeros((n_images, grid_h - height + 1, grid_w - width + 1))
    for n in range(n_images):
        for r in range(grid_h - height + 1):
            for c in range(grid_w - width + 1):
                dot = query_sq = window_sq = 0.0
                for i in range(height):
                    for j in range(width):
                        w = float(weights[top + i, left + j])
                        q = query[:, top + i, left + j].astype(np.float64) * w
                        f = features[n, :, r + i, c + j].astype(np.float64) * w
                        dot += float(q @ f)
                        query_sq += float(q @ q)
                        window_sq += float(f @ f)
                out[n, r, c] = dot / math.sqrt(query_sq * window_sq) if query_sq * window_sq > 0 else 0.0
    return out


def oracle_search(scores: np.ndarray, *, k: int, exclude=(), subset=None, per_image: int = 1):
    """(index, row, col, score) best first, ties to lower index, row, col; at most per_image per image."""
    allowed = range(len(scores)) if subset is None else sorted(set(subset))
    found = []
    for n in allowed:
        if n in set(exclude):
            continue
        windows = sorted((-s, r, c) for (r, c), s in np.ndenumerate(scores[n]))
        found += [(s, n, r, c) for s, r, c in windows[:per_image]]  # s is minus the score
    return [(n, r, c, -s) for s, n, r, c in sorted(found)[:k]]


def assert_matches(matches: list[Match], expected, scores: np.ndarray, *, tol: float = 1e-5) -> None:
    """Same length and scores; same windows, except where the oracle itself calls them a near-tie."""
    assert len(matches) == len(expected)
    for match, (n, r, c, s) in zip(matches, expected):
        assert match.score == pytest.approx(s, abs=tol)
        if (match.index, match.row, match.col) != (n, r, c):
            assert scores[match.index, match.row, match.col] == pytest.approx(s, abs=tol)


def random_features(rng, shape, dtype=np.float32) -> np.ndarray:
    """Post-ReLU-like features: about half the values zero."""
    return np.maximum(rng.standard_normal(shape), 0).astype(dtype)


def weights_of(kind: str, grid: tuple[int, int], rng) -> np.ndarray:
    h, w = grid
    out = np.zeros(grid, np.float32)
    if kind == "full":
        out[:] = 1
    elif kind == "cell":
        out[h - 1, 0] = 1  # touches two borders
    elif kind == "box":
        out[1:3, 1:4] = 1
    elif kind == "corner":
        out[h - 2:, w - 2:] = 1  # touches the bottom-right borders
    elif kind == "L":
        out[0:3, 0] = 1
        out[2, 0:3] = 1
    elif kind == "soft":
        out[1:4, 0:3] = rng.uniform(0.05, 1.0, (3, 3))
        out[2, 1] = 0  # a hole inside the box
    return out


# ---------------------------------------------------------------- sources


class NormsSource:
    """A source with precomputed squared norms, like a FeatureCache."""

    def __init__(self, features: np.ndarray):
        self.features = features
        self.shape = features.shape
        self.sq_norms = (features.astype(np.float32) ** 2).sum(axis=1)  # (N, H, W)

    def __getitem__(self, index):
        return self.features[index]


class ChannelsLastSource:
    """Stored (N, H, W, C); slices come back as (n, C, H, W) views, as FeatureCache does."""

    def __init__(self, features: np.ndarray, *, norms: bool):
        self.stored = np.ascontiguousarray(features.transpose(0, 2, 3, 1))  # (N, H, W, C)
        self.shape = features.shape
        if norms:
            self.sq_norms = (features.astype(np.float32) ** 2).sum(axis=1)  # (N, H, W)

    def __getitem__(self, index):
        return self.stored[index].transpose(0, 3, 1, 2)  # (n, C, H, W)


def make_source(kind: str, features: np.ndarray):
    if kind == "numpy":
        return features
    if kind == "torch":
        return torch.from_numpy(features)
    if kind == "torch_cl":
        return torch.from_numpy(features).contiguous(memory_format=torch.channels_last)
    if kind == "zarr":
        array = zarr.create_array(store={}, shape=features.shape, dtype=features.dtype,
                                  chunks=(3, *features.shape[1:]))
        array[:] = features
        return array
    if kind == "norms":
        return NormsSource(features)
    if kind == "cl_norms":
        return ChannelsLastSource(features, norms=True)
    if kind == "cl":
        return ChannelsLastSource(features, norms=False)
    if kind == "prepared":
        return prepare(features, block=4)
    if kind == "prepared_in_place":
        return prepare(torch.from_numpy(features.copy()), in_place=True, block=4)
    raise ValueError(kind)


# ---------------------------------------------------------------- equals the oracle


@pytest.mark.parametrize("mask", ["full", "cell", "box", "corner", "L", "soft"])
@pytest.mark.parametrize("source_kind", ["numpy", "torch", "torch_cl", "zarr", "norms", "cl_norms", "cl",
                                         "prepared", "prepared_in_place"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_search_equals_oracle(mask, source_kind, dtype):
    rng = np.random.default_rng(zlib.crc32(f"{mask}-{source_kind}-{np.dtype(dtype)}".encode()))
    features = random_features(rng, (13, 6, 5, 7), dtype)  # non-square maps
    features[4] += 0.1  # no all-zero cell in the query
    query = features[4]
    weights = weights_of(mask, (5, 7), rng)
    scores = oracle_scores(query, weights, features)
    matches = search(query, weights, make_source(source_kind, features), k=6, block=4)
    assert_matches(matches, oracle_search(scores, k=6), scores)
    assert matches[0].index == 4 and matches[0].score == pytest.approx(1.0, abs=1e-5)  # the query itself


@pytest.mark.parametrize("mask", ["full", "cell", "L", "soft"])
def test_best_windows_equals_oracle(mask):
    rng = np.random.default_rng(1)
    features = random_features(rng, (9, 5, 6, 6))
    weights = weights_of(mask, (6, 6), rng)
    query = random_features(rng, (5, 6, 6))
    scores = oracle_scores(query, weights, features)
    best = best_windows(torch.from_numpy(query), weights, torch.from_numpy(features), block=2)
    assert isinstance(best, BestWindows)
    np.testing.assert_array_equal(best.indices, np.arange(9))
    flat = scores.reshape(9, -1)
    np.testing.assert_allclose(best.scores, flat.max(axis=1), atol=1e-5)
    np.testing.assert_allclose(scores[np.arange(9), best.rows, best.cols], flat.max(axis=1), atol=1e-5)
    assert best.scores.dtype == np.float32 and best.rows.dtype == np.int64


def test_query_grid_differs_from_dataset_grid_when_asked():
    rng = np.random.default_rng(2)
    query = random_features(rng, (4, 3, 3))
    weights = np.array([[0, 1, 0], [1, 0.5, 0], [0, 0, 0]], np.float32)
    features = random_features(rng, (7, 4, 8, 5))
    scores = oracle_scores(query, weights, features)
    with pytest.raises(SearchError, match="3x3 but the source's is 8x5"):  # refused unless asked for
        search(query, weights, features, k=20)
    assert_matches(search(query, weights, features, k=20, any_grid=True), oracle_search(scores, k=20), scores)


def test_planted_region_is_found_with_score_one():
    rng = np.random.default_rng(3)
    features = random_features(rng, (40, 16, 7, 7))
    query = random_features(rng, (16, 7, 7))
    weights = np.zeros((7, 7), np.float32)
    weights[2:4, 1:4] = 1
    weights[4, 1] = 1  # an L-shaped blob
    features[23, :, 3:6, 4:7] = query[:, 2:5, 1:4]  # plant the region's box at (row 3, col 4)
    best = search(query, weights, features, k=3)[0]
    assert (best.index, best.row, best.col, best.height, best.width) == (23, 3, 4, 3, 3)
    assert best.score == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_blockwise_equals_one_shot(dtype, monkeypatch):
    monkeypatch.setattr("vfs.retrieval.kernels.CHUNK_BYTES", 8 * 49 * 4 * 4)  # 4 images per kernel call
    rng = np.random.default_rng(4)
    features = random_features(rng, (30, 8, 7, 7), dtype)
    query = features[7]
    for mask in ["full", "box", "cell", "soft"]:
        weights = weights_of(mask, (7, 7), rng)
        one_shot = best_windows(query, weights, features, block=30)
        top = search(query, weights, features, k=9, per_image=2, block=30)
        for block in [1, 5, 13]:  # read 4, 8 and 16 images at a time; the last block is short
            part = best_windows(query, weights, features, block=block)
            np.testing.assert_array_equal(part.scores, one_shot.scores)
            np.testing.assert_array_equal(part.rows, one_shot.rows)
            np.testing.assert_array_equal(part.cols, one_shot.cols)
            assert search(query, weights, features, k=9, per_image=2, block=block) == top


def test_results_do_not_depend_on_the_kernel_chunk(monkeypatch):
    rng = np.random.default_rng(5)
    features = random_features(rng, (30, 8, 5, 5))
    weights = weights_of("box", (5, 5), rng)
    expected = search(features[0], weights, features, k=30)
    monkeypatch.setattr("vfs.retrieval.kernels.CHUNK_BYTES", 8 * 25 * 4 * 7)  # 7 images per chunk
    assert make_plan(torch.ones(8, 2, 3), torch.ones(2, 3), (5, 5), device=torch.device("cpu")).chunk == 7
    chunked = search(features[0], weights, features, k=30, block=5)
    assert [(m.index, m.row, m.col) for m in chunked] == [(m.index, m.row, m.col) for m in expected]
    np.testing.assert_allclose([m.score for m in chunked], [m.score for m in expected], atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on the CPU CI machine)")
def test_cuda_equals_cpu():
    rng = np.random.default_rng(11)
    features = random_features(rng, (40, 8, 7, 7), np.float16)
    for mask in ["full", "box", "cell", "L", "soft"]:
        weights = weights_of(mask, (7, 7), rng)
        cpu = best_windows(features[0], weights, features, device="cpu")
        cuda = best_windows(features[0], weights, torch.from_numpy(features).cuda(), device="cuda")
        np.testing.assert_allclose(cuda.scores, cpu.scores, atol=1e-5)


@pytest.mark.skipif(not numba_kernel.AVAILABLE, reason="numba is not installed (or VFS_NUMBA=0)")
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_numba_kernel_equals_torch_path(monkeypatch, dtype):
    rng = np.random.default_rng(12)
    features = random_features(rng, (70, 16, 7, 6), dtype)
    for mask in ["cell", "box", "corner", "L", "soft"]:
        weights = weights_of(mask, (7, 6), rng)
        monkeypatch.setattr("vfs.retrieval.kernels.USE_NUMBA", False)
        torch_path = best_windows(features[3], weights, make_source("cl_norms", features))
        monkeypatch.setattr("vfs.retrieval.kernels.USE_NUMBA", True)
        fused = best_windows(features[3], weights, make_source("cl_norms", features))
        np.testing.assert_allclose(fused.scores, torch_path.scores, atol=1e-6)
        np.testing.assert_array_equal(fused.rows, torch_path.rows)
        np.testing.assert_array_equal(fused.cols, torch_path.cols)


@pytest.mark.skipif(not numba_kernel.AVAILABLE, reason="numba is not installed (or VFS_NUMBA=0)")
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("channels_last", [True, False])
def test_best_scores_kernel_is_the_max_of_the_oracle(dtype, channels_last):
    """kernels.best_scores (two-stage's stage 1: one call, best score only) == the oracle's best window, any
    layout and dtype; 77 images, so the threads' parts of 32 images end in a partial one."""
    rng = np.random.default_rng(15)
    features = random_features(rng, (77, 9, 5, 6), dtype)
    tensor = torch.from_numpy(features)
    if channels_last:
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    for mask in ["cell", "box", "corner", "L", "soft", "full"]:
        weights = weights_of(mask, (5, 6), rng)
        plan, _, _ = plan_search(features[4], weights, features, subset=None, device="cpu")
        norms = torch.from_numpy((features.astype(np.float32) ** 2).sum(axis=1))  # (n, H, W)
        best = kernels.best_scores(tensor, plan, sq_norms=norms)
        expected = oracle_scores(features[4], weights, features).reshape(77, -1).max(axis=1)  # (n,)
        np.testing.assert_allclose(best.numpy(), expected, atol=2e-6)


@pytest.mark.parametrize("source_kind", ["numpy", "cl"])
def test_float16_extremes_are_widened_exactly(source_kind):
    rng = np.random.default_rng(14)
    values = np.array([0.0, -0.0, 1e-7, -3e-6, 6e-5, 1.0, -2.5, 1000.0, -60000.0], np.float16)
    features = rng.choice(values, size=(12, 5, 4, 4)).astype(np.float16)  # subnormals, negatives, large
    for mask in ["cell", "L", "corner"]:
        weights = weights_of(mask, (4, 4), rng)
        scores = oracle_scores(features[2], weights, features)
        best = best_windows(features[2], weights, make_source(source_kind, features))
        np.testing.assert_allclose(best.scores, scores.reshape(12, -1).max(axis=1), atol=1e-5)


# ---------------------------------------------------------------- options


@pytest.mark.parametrize("per_image", [1, 2, 5])
def test_exclude_subset_per_image_equal_the_oracle(per_image):
    rng = np.random.default_rng(6)
    features = random_features(rng, (20, 6, 5, 5))
    weights = weights_of("L", (5, 5), rng)
    query = features[3]
    scores = oracle_scores(query, weights, features)
    cases = [dict(), dict(exclude=[3]), dict(subset=[17, 2, 3, 9, 9]), dict(subset=[1, 2, 3], exclude=[2])]
    for options in cases:
        matches = search(query, weights, features, k=8, per_image=per_image, **options)
        expected = oracle_search(scores, k=8, per_image=per_image, exclude=options.get("exclude", ()),
                                 subset=options.get("subset"))
        assert_matches(matches, expected, scores)
        assert not set(options.get("exclude", ())) & {m.index for m in matches}
        per = {}
        for m in matches:
            per[m.index] = per.get(m.index, 0) + 1
        assert max(per.values()) <= per_image


def test_exclude_only_removes_matches():
    rng = np.random.default_rng(13)
    features = random_features(rng, (40, 4, 5, 5))
    weights = weights_of("L", (5, 5), rng)
    everything = search(features[0], weights, features, k=80, per_image=2)  # every candidate
    excluded = {0, 5, 39}
    assert search(features[0], weights, features, k=80, per_image=2, exclude=sorted(excluded)) == [
        m for m in everything if m.index not in excluded]


def test_subset_of_best_windows_and_sparse_reads():
    rng = np.random.default_rng(7)
    features = random_features(rng, (60, 4, 4, 4))
    weights = weights_of("corner", (4, 4), rng)
    full = best_windows(features[0], weights, make_source("zarr", features))
    subset = [59, 0, 30, 31, 32, 5]
    part = best_windows(features[0], weights, make_source("zarr", features), subset=subset)
    np.testing.assert_array_equal(part.indices, sorted(subset))
    np.testing.assert_allclose(part.scores, full.scores[sorted(subset)], atol=1e-6)
    np.testing.assert_array_equal(part.rows, full.rows[sorted(subset)])


def test_ties_go_to_lower_index_then_lower_row_col():
    features = np.zeros((5, 2, 3, 3), np.float32)
    features[:, 0] = 1  # every window of every image is identical: exact ties everywhere
    weights = np.zeros((3, 3), np.float32)
    weights[0, 0] = 1
    matches = search(features[0], weights, features, k=4, per_image=2)
    assert [(m.index, m.row, m.col) for m in matches] == [(0, 0, 0), (0, 0, 1), (1, 0, 0), (1, 0, 1)]
    assert all(m.score == pytest.approx(1.0) for m in matches)
    assert [m.index for m in search(features[0], weights, features, k=3, exclude=[0, 2])] == [1, 3, 4]


def test_zero_magnitude_windows_score_zero():
    rng = np.random.default_rng(8)
    features = random_features(rng, (6, 3, 4, 4))
    features[2] = 0  # an all-zero image
    features[4, :, :2, :2] = 0  # one zero window in a 2x2 search
    weights = weights_of("corner", (4, 4), rng)
    best = best_windows(features[1], weights, features)
    assert not np.isnan(best.scores).any() and best.scores[2] == 0
    scores = oracle_scores(features[1], weights, features)
    np.testing.assert_allclose(best.scores, scores.reshape(6, -1).max(axis=1), atol=1e-5)
    zero_query = np.zeros((3, 4, 4), np.float32)  # no activation under the mask: refused (scores would all be 0)
    with pytest.raises(MaskError, match="all zero under the mask.*another layer"):
        search(zero_query, weights, features, k=6)


def test_k_larger_than_the_candidates_returns_them_all():
    rng = np.random.default_rng(9)
    features = random_features(rng, (3, 2, 2, 2))
    weights = np.ones((2, 2), np.float32)
    matches = search(features[0], weights, features, k=10, per_image=4)
    assert len(matches) == 3 and all(m.height == 2 and m.width == 2 for m in matches)
    assert search(features[0], weights, features, k=10, subset=[]) == []


# ---------------------------------------------------------------- errors


def test_errors_say_what_to_do():
    rng = np.random.default_rng(10)
    features = random_features(rng, (4, 3, 5, 5))
    query, weights = features[0], weights_of("box", (5, 5), rng)
    with pytest.raises(MaskError, match="paint"):
        search(query, np.zeros((5, 5), np.float32), features)
    with pytest.raises(MaskError, match=r"\[0, 1\]"):
        search(query, weights * 255, features)
    with pytest.raises(MaskError, match="finite"):
        search(query, np.where(weights > 0, np.nan, 0).astype(np.float32), features)
    with pytest.raises(MaskError, match=r"\[0, 1\]"):
        search(query, -weights, features)
    with pytest.raises(SearchError, match="grid"):
        search(query, np.ones((4, 5), np.float32), features)
    with pytest.raises(SearchError, match="channels"):
        search(features[0, :2], weights, features)
    with pytest.raises(SearchError, match=r"\(C, H, W\)"):
        search(features, weights, features)
    with pytest.raises(SearchError, match="only 3x3"):
        search(query, weights_of("full", (5, 5), rng), features[:, :, :3, :3], any_grid=True)
    with pytest.raises(SearchError, match="k must"):
        search(query, weights, features, k=0)
    with pytest.raises(SearchError, match="per_image"):
        search(query, weights, features, per_image=0)
    with pytest.raises(SearchError, match="block"):
        search(query, weights, features, block=0)
    with pytest.raises(SearchError, match="outside"):
        search(query, weights, features, exclude=[4])
    with pytest.raises(SearchError, match="outside"):
        best_windows(query, weights, features, subset=[-1, 2])
    with pytest.raises(SearchError, match="integer"):
        search(query, weights, features, subset=[0.5])
    with pytest.raises(SearchError, match="float"):
        search(query.astype(np.int32), weights, features)
    with pytest.raises(SearchError, match=r"\(N, C, H, W\)"):
        search(query, weights, features[0])
    bad_norms = NormsSource(features)
    bad_norms.sq_norms = bad_norms.sq_norms[:, :4]
    with pytest.raises(SearchError, match="sq_norms"):
        search(query, weights, bad_norms)
    assert issubclass(SearchError, ValueError) and issubclass(MaskError, ValueError)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_channel_tiles_and_their_remainder_equal_the_oracle(dtype):
    rng = np.random.default_rng(15)
    features = random_features(rng, (9, 21, 4, 5), dtype)  # 21 channels: two tiles of 8 and 5 more
    for mask in ["cell", "L", "full"]:
        weights = weights_of(mask, (4, 5), rng)
        scores = oracle_scores(features[1], weights, features)
        best = best_windows(features[1], weights, features)  # (N, C, H, W): the kernel transposes each image
        np.testing.assert_allclose(best.scores, scores.reshape(9, -1).max(axis=1), atol=1e-5)
