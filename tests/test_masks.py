"""Masks, boxes and windows between the original image and the feature grid.

Oracles: a naive loop over pixels and cells for area coverage; the image pipeline itself (a painted
square lands where the preprocessed image shows it); box == rasterised mask; window -> box -> grid
recovers the window for several aspect ratios and crop settings.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vfs.errors import MaskError
from vfs.masks import box_to_grid, mask_to_grid, window_to_box
from vfs.models.preprocess import Preprocess

HALF = (0.5, 0.5, 0.5)


def naive_coverage(mask: np.ndarray, region, shape) -> np.ndarray:
    """Fraction of each cell of a regular `shape` grid over `region` covered by `mask`, one pixel at a time."""
    top, left, bottom, right = region
    cell_h, cell_w = (bottom - top) / shape[0], (right - left) / shape[1]
    out = np.zeros(shape)
    for i in range(shape[0]):
        for j in range(shape[1]):
            y0, x0 = top + i * cell_h, left + j * cell_w
            for y in range(mask.shape[0]):
                for x in range(mask.shape[1]):
                    dy = min(y + 1, y0 + cell_h) - max(y, y0)
                    dx = min(x + 1, x0 + cell_w) - max(x, x0)
                    if dy > 0 and dx > 0:
                        out[i, j] += mask[y, x] * dy * dx
            out[i, j] /= cell_h * cell_w
    return out


@pytest.mark.parametrize("image_size, preprocess, grid", [
    ((13, 17), Preprocess(size=8, crop=6, mean=HALF, std=HALF), (3, 3)),
    ((19, 11), Preprocess(size=9, crop=7, mean=HALF, std=HALF), (2, 4)),
    ((10, 10), Preprocess(size=10, crop=10, mean=HALF, std=HALF), (4, 3)),
])
def test_mask_to_grid_equals_naive_area_coverage(rng, image_size, preprocess, grid):
    mask = rng.random(image_size)
    region = preprocess.crop_box(*image_size)
    np.testing.assert_allclose(mask_to_grid(mask, grid, preprocess=preprocess), naive_coverage(mask, region, grid), atol=1e-6)
    np.testing.assert_allclose(
        preprocess.map_mask(mask), naive_coverage(mask, region, (preprocess.crop, preprocess.crop)), atol=1e-6
    )


def test_preprocess_none_means_model_input_space(rng):
    mask = rng.random((12, 8))
    np.testing.assert_allclose(mask_to_grid(mask, (3, 2)), mask.reshape(3, 4, 2, 4).mean(axis=(1, 3)), atol=1e-6)
    assert (mask_to_grid(np.ones((7, 7), bool), (7, 7)) == 1).all()


@pytest.mark.parametrize("image_size", [(300, 451), (451, 300), (224, 224), (97, 500)])
def test_painted_square_lands_where_the_preprocessed_image_shows_it(image_size):
    preprocess = Preprocess(size=256, crop=224, mean=(0, 0, 0), std=(1, 1, 1), interpolation="bilinear")
    height, width = image_size
    mask = np.zeros(image_size, bool)
    mask[height // 3 : height // 3 + height // 4, width // 2 - width // 5 : width // 2 + width // 10] = True
    image = Image.fromarray(np.repeat(mask[:, :, None] * np.uint8(255), 3, axis=2))
    seen = preprocess(image)[0, 0].numpy() > 0.5  # (224, 224) where the model sees the square
    mapped = preprocess.map_mask(mask) > 0.5
    iou = (seen & mapped).sum() / (seen | mapped).sum()
    assert iou > 0.97, iou


def test_box_equals_rasterised_mask():
    preprocess = Preprocess(size=256, crop=224, mean=HALF, std=HALF)
    box = (40, 100, 190, 260)
    mask = np.zeros((300, 451), bool)
    mask[40:190, 100:260] = True
    np.testing.assert_allclose(
        box_to_grid(box, (300, 451), (7, 7), preprocess=preprocess),
        mask_to_grid(mask, (7, 7), preprocess=preprocess),
        atol=1e-5,
    )


@pytest.mark.parametrize("image_size", [(300, 451), (451, 300), (224, 224), (97, 500), (1000, 37)])
@pytest.mark.parametrize("preprocess", [
    Preprocess(size=256, crop=224, mean=HALF, std=HALF),
    Preprocess(size=224, crop=224, mean=HALF, std=HALF),
    Preprocess(size=160, crop=112, mean=HALF, std=HALF),
    None,
])
def test_window_to_box_round_trips(image_size, preprocess):
    for grid, (row, col, height, width) in [((7, 7), (2, 3, 2, 3)), ((14, 14), (0, 0, 14, 14)), ((5, 9), (4, 8, 1, 1))]:
        box = window_to_box(row, col, height, width, grid, image_size, preprocess=preprocess)
        expected = np.zeros(grid, np.float32)
        expected[row : row + height, col : col + width] = 1
        weights = box_to_grid(box, image_size, grid, preprocess=preprocess)
        np.testing.assert_allclose(weights, expected, atol=1e-5)
        assert (box_to_grid(box, image_size, grid, preprocess=preprocess, binarize=0.5) == expected).all()


def test_window_box_lies_inside_the_crop():
    preprocess = Preprocess(size=256, crop=224, mean=HALF, std=HALF)
    assert window_to_box(0, 0, 7, 7, (7, 7), (300, 451), preprocess=preprocess) == pytest.approx(preprocess.crop_box(300, 451))
    top, left, bottom, right = preprocess.crop_box(300, 451)
    assert (top, bottom) == (18.75, 281.25)  # 300x451 -> 256x384, crop offset (16, 80): 16 * 300 / 256
    assert left == pytest.approx(80 * 451 / 384) and right == pytest.approx(304 * 451 / 384)


def test_every_mask_format_gives_the_same_weights():
    preprocess = Preprocess(size=256, crop=224, mean=HALF, std=HALF)
    painted = np.zeros((120, 200), bool)
    painted[30:90, 50:140] = True
    rgba = np.zeros((120, 200, 4), np.uint8)
    rgba[painted] = (0, 0, 0, 255)  # a black stroke: only the alpha says it is painted
    formats = [painted, painted.astype(np.uint8) * 255, painted.astype(np.float32), painted[:, :, None], rgba]
    expected = mask_to_grid(painted, (7, 7), preprocess=preprocess)
    # oracle by hand: 120x200 resized to 256x426 (shorter side 256, int), centre crop 224 from
    # (16, 101), 32 px per cell. Rows 30..90 -> 64..192 -> 48..176 in the crop: cells 1 and 5 half
    # covered, 2..4 whole. Cols 50..140 -> 106.5..298.2 -> 5.5..197.2: cell 0 covers 26.5 of 32 px,
    # 1..5 whole, 6 covers 5.2 px.
    rows = np.array([0, 0.5, 1, 1, 1, 0.5, 0])
    cols = np.array([26.5 / 32, 1, 1, 1, 1, 1, (140 * 426 / 200 - 101 - 192) / 32])
    np.testing.assert_allclose(expected, np.outer(rows, cols), atol=2e-3)
    for mask in formats:
        np.testing.assert_array_equal(mask_to_grid(mask, (7, 7), preprocess=preprocess), expected)


def test_weights_are_fractional_and_binarize_thresholds():
    mask = np.zeros((8, 8), bool)
    mask[0:2, 0:3] = True  # cell (0, 0) of a 2x2 grid (4x4 pixels) is 6/16 covered
    weights = mask_to_grid(mask, (2, 2))
    assert weights[0, 0] == pytest.approx(6 / 16) and weights.sum() == pytest.approx(6 / 16)
    assert (mask_to_grid(mask, (2, 2), binarize=0.3) == np.array([[1, 0], [0, 0]])).all()
    with pytest.raises(MaskError, match="lower binarize"):
        mask_to_grid(mask, (2, 2), binarize=0.5)


def test_bad_masks_say_what_to_do():
    preprocess = Preprocess(size=256, crop=224, mean=HALF, std=HALF)
    with pytest.raises(MaskError, match="mask is empty: paint over the region"):
        mask_to_grid(np.zeros((50, 50), bool), (7, 7))
    outside = np.zeros((100, 400), bool)
    outside[:, :20] = True  # the left strip of a wide image is cropped away
    with pytest.raises(MaskError, match="entirely outside the centre crop.*paint inside the middle"):
        mask_to_grid(outside, (7, 7), preprocess=preprocess)
    nan = np.ones((10, 10))
    nan[3, 3] = np.nan
    with pytest.raises(MaskError, match="NaN"):
        mask_to_grid(nan, (2, 2))
    with pytest.raises(MaskError, match="shape"):
        mask_to_grid(np.ones((10, 10, 3), np.uint8), (2, 2))
    with pytest.raises(MaskError, match=r"\[0, 1\]"):
        mask_to_grid(np.full((10, 10), 2.0), (2, 2))
    with pytest.raises(MaskError, match="flipped"):
        box_to_grid((50, 10, 20, 40), (100, 100), (7, 7))
    with pytest.raises(MaskError, match="centre crop"):
        box_to_grid((0, 0, 100, 20), (100, 400), (7, 7), preprocess=preprocess)
    with pytest.raises(MaskError, match="does not fit"):
        window_to_box(6, 0, 2, 1, (7, 7), (224, 224))
    assert isinstance(MaskError("x"), ValueError)
