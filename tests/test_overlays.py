"""Similarity overlays, cross-grid mapping, NMF of activations and transformation sensitivity."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from vfs.analysis.overlays import (
    all_similarity_grids,
    factorize,
    layer_similarity_grids,
    map_cell,
    render_factors,
    similarity_grids,
)
from vfs.analysis.sensitivity import transform_image, transform_sensitivity, transformed_cell
from vfs.errors import SearchError


def naive_grids(features: np.ndarray, image_index: int, row: int, col: int) -> np.ndarray:
    n, _, h, w = features.shape
    pointed = features[image_index, :, row, col].astype(np.float64)
    out = np.zeros((n, h, w))
    for i in range(n):
        for r in range(h):
            for c in range(w):
                v = features[i, :, r, c].astype(np.float64)
                denom = np.linalg.norm(v) * np.linalg.norm(pointed)
                out[i, r, c] = 0.0 if denom == 0 else v @ pointed / denom
    return out


@pytest.mark.parametrize("shape", [(3, 5, 4, 6), (1, 1, 2, 2), (4, 16, 7, 7)])
def test_similarity_grids_equal_naive_loop(shape):
    features = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    features[0, :, 0, 0] = 0.0  # a zero vector scores 0 with everything
    n, _, h, w = shape
    for image_index, row, col in [(0, 0, 0), (n - 1, h - 1, w - 1), (n // 2, h // 2, w // 3)]:
        got = similarity_grids(features, image_index, row, col)
        assert got.shape == (n, h, w)
        np.testing.assert_allclose(got, naive_grids(features, image_index, row, col), atol=1e-5)


def test_pointed_cell_scores_one_and_accepts_tensors():
    features = torch.randn(3, 8, 5, 5, generator=torch.Generator().manual_seed(1))
    grids = similarity_grids(features, 2, 1, 3)
    assert grids[2, 1, 3] == pytest.approx(1.0, abs=1e-6)
    assert grids.max() <= 1.0 and grids.min() >= -1.0


def test_all_grids_stack_every_pointed_cell():
    features = np.random.default_rng(2).normal(size=(3, 6, 4, 5)).astype(np.float32)
    every = all_similarity_grids(features, 1)
    assert every.shape == (4 * 5, 3, 4, 5)
    for row in range(4):
        for col in range(5):
            np.testing.assert_allclose(every[row * 5 + col], similarity_grids(features, 1, row, col), atol=1e-6)
            assert every[row * 5 + col, 1, row, col] == pytest.approx(1.0, abs=1e-6)


def test_bad_cell_or_shape_is_refused_with_valid_range():
    features = np.ones((2, 3, 4, 4), np.float32)
    with pytest.raises(SearchError, match="rows 0..3"):
        similarity_grids(features, 0, 4, 0)
    with pytest.raises(SearchError, match="outside 0..1"):
        similarity_grids(features, 2, 0, 0)
    with pytest.raises(SearchError, match="4-D"):
        similarity_grids(features[0], 0, 0, 0)


def test_map_cell_identity_and_centre_preserving():
    for row in range(7):
        for col in range(5):
            assert map_cell(row, col, (7, 5), (7, 5)) == (row, col)
    for row in range(14):
        for col in range(14):
            r, c = map_cell(row, col, (14, 14), (7, 7))
            assert (r, c) == (row // 2, col // 2)
            # the centre of the source cell lies inside the target cell
            assert r / 7 <= (row + 0.5) / 14 < (r + 1) / 7 and c / 7 <= (col + 0.5) / 14 < (c + 1) / 7
    # 7 -> 14 -> 7 comes back; centres of a coarse cell land in one of its two fine cells
    for row in range(7):
        assert map_cell(*map_cell(row, row, (7, 7), (14, 14)), (14, 14), (7, 7)) == (row, row)
    # odd ratios: every cell maps inside the target grid and keeps order
    mapped = [map_cell(r, 0, (13, 1), (6, 1))[0] for r in range(13)]
    assert mapped == sorted(mapped) and mapped[0] == 0 and mapped[-1] == 5


def test_layer_grids_follow_the_mapped_cell():
    rng = np.random.default_rng(3)
    layers = {"fine": rng.normal(size=(2, 4, 14, 14)), "coarse": rng.normal(size=(2, 6, 7, 7))}
    grids = layer_similarity_grids(layers, 1, 9, 4, grid=(14, 14))
    np.testing.assert_allclose(grids["fine"], similarity_grids(layers["fine"], 1, 9, 4), atol=1e-6)
    np.testing.assert_allclose(grids["coarse"], similarity_grids(layers["coarse"], 1, 4, 2), atol=1e-6)
    assert grids["coarse"][1, 4, 2] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_nmf_error_decreases_with_components_and_maps_are_non_negative():
    rng = np.random.default_rng(4)
    # features built from 4 planted non-negative parts plus a little noise
    parts = rng.random((4, 12))
    loadings = rng.random((3, 6, 6, 4)) ** 3
    features = np.einsum("nhwk,kc->nchw", loadings, parts) + 0.01 * rng.random((3, 12, 6, 6))
    errors = [factorize(features, k=k).reconstruction_error for k in (1, 2, 3, 4)]
    assert all(b < a for a, b in itertools.pairwise(errors)), errors
    four = factorize(features, k=4)
    assert four.maps.shape == (3, 4, 6, 6) and four.components.shape == (4, 12)
    assert (four.maps >= 0).all() and (four.components >= 0).all()
    # the reported error is the real residual of the returned factors
    x = features.transpose(0, 2, 3, 1).reshape(-1, 12)
    approx = four.maps.transpose(0, 2, 3, 1).reshape(-1, 4) @ four.components
    assert np.linalg.norm(x - approx) == pytest.approx(four.reconstruction_error, rel=1e-3)


def test_nmf_negatives_clip_and_shift():
    features = np.random.default_rng(5).normal(size=(2, 5, 3, 3)).astype(np.float32)
    clipped = factorize(features, k=2, negatives="clip")
    shifted = factorize(features, k=2, negatives="shift")
    assert clipped.negatives == "clip" and shifted.negatives == "shift"
    # oracles: "clip" factorizes max(x, 0) and "shift" factorizes x - min(x); on non-negative input
    # both leave x as it is, so the same seed gives the same factors
    by_hand = {"clip": np.maximum(features, 0), "shift": features - features.min()}
    for result in (clipped, shifted):
        expected = factorize(by_hand[result.negatives], k=2, negatives="clip")
        np.testing.assert_allclose(result.maps, expected.maps, rtol=1e-4, atol=1e-5)
        assert result.reconstruction_error == pytest.approx(expected.reconstruction_error, rel=1e-4)
    with pytest.raises(SearchError, match="'clip' or 'shift'"):
        factorize(features, k=2, negatives="abs")
    with pytest.raises(SearchError, match="k in 1..5"):
        factorize(features, k=6)


def test_render_factors_colors():
    maps = np.zeros((1, 2, 2, 2), np.float32)
    maps[0, 0, 0, 0] = 3.0  # component 0 at full strength, alone
    maps[0, 1, 1, 1] = 1.0  # component 1 at full strength, alone
    rgb = render_factors(maps, colors=[(1.0, 0.0, 0.0), (0.0, 0.0, 1.0)])
    assert rgb.shape == (1, 2, 2, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0, 0].tolist() == [255, 0, 0] and rgb[0, 1, 1].tolist() == [0, 0, 255]
    assert rgb[0, 0, 1].tolist() == [0, 0, 0]


def identity(images: torch.Tensor) -> torch.Tensor:
    return images  # the "features" are the pixels themselves: (B, C, H, W)


def test_transform_by_zero_is_identity_with_similarity_one():
    image = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(transform_image(image), image)
    conv = torch.nn.Conv2d(3, 5, 3, padding=1)
    result = transform_sensitivity(image, conv, 2, 5, angles=[-30, 0, 30])
    assert result.cells[1].tolist() == [2, 5]
    assert result.similarities[1] == pytest.approx(1.0, abs=1e-5)
    result = transform_sensitivity(image, conv, 2, 5, scales=[0.5, 1.0, 2.0])
    assert result.similarities[1] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("angle", [90, 180, 270, -90])
def test_right_angles_move_each_pixel_to_its_mapped_cell(angle):
    image = torch.randn(6, 8, 8, generator=torch.Generator().manual_seed(7))
    rotated = transform_image(image, angle=angle)
    for row in range(8):
        for col in range(8):
            r, c = transformed_cell(row, col, (8, 8), angle=angle, image_size=(8, 8))
            torch.testing.assert_close(rotated[:, r, c], image[:, row, col], atol=1e-5, rtol=0)
    result = transform_sensitivity(image, identity, 1, 6, angles=[angle])
    assert result.similarities[0] == pytest.approx(1.0, abs=1e-5)


def test_rotation_is_counter_clockwise_and_zoom_moves_cells_outward():
    # the right-middle cell goes to the top-middle under +90 degrees
    assert transformed_cell(4, 7, (8, 8), angle=90, image_size=(8, 8)) == (0, 4)
    assert transformed_cell(1, 1, (8, 8), scale=2.0, image_size=(8, 8)) is None  # zoomed out of view
    assert transformed_cell(2, 2, (8, 8), scale=2.0, image_size=(8, 8)) == (1, 1)  # centre -0.375 -> -0.75
    result = transform_sensitivity(torch.randn(3, 8, 8), identity, 0, 0, scales=[1.0, 3.0])
    assert result.cells[1].tolist() == [-1, -1] and np.isnan(result.similarities[1])


def test_sensitivity_needs_exactly_one_kind_of_step():
    with pytest.raises(SearchError, match="exactly one"):
        transform_sensitivity(torch.zeros(3, 4, 4), identity, 0, 0)
    with pytest.raises(SearchError, match="exactly one"):
        transform_sensitivity(torch.zeros(3, 4, 4), identity, 0, 0, angles=[0], scales=[1])
