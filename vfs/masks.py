"""Masks and boxes on the original image -> `weights` on a feature grid, and feature windows -> boxes.

Geometry: the model sees `preprocess.crop_box(height, width)` of the original image (shorter side
resized, then centre-cropped), and a feature grid `(h, w)` is assumed to tile that crop evenly: cell
`(row, col)` covers rows `[row, row + 1) * crop / h` of the model input (true when the network's
total stride divides the crop, e.g. 224 -> 7, 14, 28; approximately otherwise). The weight of a cell
is the fraction of its area that the mask covers, computed exactly (area averaging), so strokes
thinner than a cell stay fractional. With `preprocess=None` the mask is already on the model input.
Boxes are `(top, left, bottom, right)` in pixels; positions are `(row, col)` in feature cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vfs.errors import MaskError
from vfs.models.preprocess import Preprocess, area_resample

BINARIZE_SLACK = 1e-6  # a fully covered cell may sum to 0.9999999: it still reaches binarize=1
NO_COVER = 1e-9  # a cell's coverage at or below this is rounding in the area resampling, not paint
EMPTY = "mask is empty: paint over the region you want to search for"
OUTSIDE = (
    "the mask lies entirely outside the centre crop the model sees: paint inside the middle "
    "{crop} of the image (rows {top:.0f}-{bottom:.0f}, columns {left:.0f}-{right:.0f} of this {height}x{width} image)"
)


def mask_to_grid(
    mask: Any,
    grid: tuple[int, int],
    *,
    preprocess: Preprocess | None = None,
    binarize: float | None = None,
) -> np.ndarray:
    """(H, W) mask on the original image -> (h, w) float32 weights in [0, 1] (fraction of each cell covered).

    `mask`: bool, uint8 (non-zero = painted) or float in [0, 1], shaped (H, W), (H, W, 1), or RGBA
    (H, W, 4) where alpha > 0 is painted. `binarize=t` turns weights >= t into 1 and the rest into 0.
    """
    mask = as_mask(mask)
    if not mask.any():
        raise MaskError(EMPTY)
    height, width = mask.shape
    region = preprocess.crop_box(height, width) if preprocess is not None else (0.0, 0.0, float(height), float(width))
    weights = area_resample(mask, region, _grid(grid))  # (h, w)
    return _checked_weights(weights, binarize, preprocess, (height, width), region)


def box_to_grid(
    box: Sequence[float],
    image_size: tuple[int, int],
    grid: tuple[int, int],
    *,
    preprocess: Preprocess | None = None,
    binarize: float | None = None,
) -> np.ndarray:
    """Box (top, left, bottom, right) in original pixels -> (h, w) float32 weights (fraction of each cell covered).

    `image_size` is the original (height, width); with `preprocess=None` it is the model input's.
    """
    height, width = int(image_size[0]), int(image_size[1])
    top, left, bottom, right = _box(box)
    region = preprocess.crop_box(height, width) if preprocess is not None else (0.0, 0.0, float(height), float(width))
    rows, cols = _grid(grid)
    row_cover = _cover(top, bottom, region[0], region[2], rows)  # (h,)
    col_cover = _cover(left, right, region[1], region[3], cols)  # (w,)
    weights = (row_cover[:, None] * col_cover[None, :]).astype(np.float32)  # (h, w)
    return _checked_weights(weights, binarize, preprocess, (height, width), region)


def window_to_box(
    row: int,
    col: int,
    height: int,
    width: int,
    grid: tuple[int, int],
    image_size: tuple[int, int],
    *,
    preprocess: Preprocess | None = None,
) -> tuple[float, float, float, float]:
    """Feature window (top row, left col, height, width in cells) -> (top, left, bottom, right) original pixels."""
    rows, cols = _grid(grid)
    if not (0 <= row and 0 <= col and height >= 1 and width >= 1 and row + height <= rows and col + width <= cols):
        raise MaskError(
            f"window at (row {row}, col {col}) of {height}x{width} cells does not fit the {rows}x{cols} grid: "
            "rows/cols start at 0 and the window must end inside the grid"
        )
    image_h, image_w = int(image_size[0]), int(image_size[1])
    top, left, bottom, right = (
        preprocess.crop_box(image_h, image_w) if preprocess is not None else (0.0, 0.0, float(image_h), float(image_w))
    )
    cell_h, cell_w = (bottom - top) / rows, (right - left) / cols
    return (top + row * cell_h, left + col * cell_w, top + (row + height) * cell_h, left + (col + width) * cell_w)


def as_mask(mask: Any) -> np.ndarray:
    """Any accepted mask -> (H, W) float64 in [0, 1], or a `MaskError` saying what is accepted."""
    if hasattr(mask, "detach"):  # a torch tensor
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 4:
        mask = mask[:, :, 3] > 0  # RGBA: painted where alpha > 0
    elif mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.ndim != 2 or 0 in mask.shape:
        raise MaskError(
            f"mask has shape {mask.shape}: pass an (H, W) mask the size of the image, (H, W, 1), or an "
            "RGBA (H, W, 4) layer whose alpha marks the painted pixels"
        )
    if mask.dtype == np.bool_ or np.issubdtype(mask.dtype, np.integer):
        return (mask != 0).astype(np.float64)
    if not np.issubdtype(mask.dtype, np.floating):
        raise MaskError(f"mask has dtype {mask.dtype}: pass bool, uint8 (non-zero = painted) or float in [0, 1]")
    if not np.isfinite(mask).all():
        raise MaskError("mask contains NaN or infinite values: pass finite floats in [0, 1]")
    if mask.min() < 0 or mask.max() > 1:
        raise MaskError(f"float mask values run from {mask.min():g} to {mask.max():g}: scale them into [0, 1]")
    return mask.astype(np.float64)


def _checked_weights(weights: np.ndarray, binarize: float | None, preprocess: Preprocess | None,
            image_size: tuple[int, int], region: tuple[float, float, float, float]) -> np.ndarray:
    """Check the weights are not all zero (else say why), then clip and optionally threshold them."""
    weights = np.clip(weights, 0.0, 1.0)
    if weights.max() <= NO_COVER:
        if preprocess is None:
            raise MaskError("the box lies outside the image: give (top, left, bottom, right) inside it")
        top, left, bottom, right = region
        raise MaskError(
            OUTSIDE.format(crop=f"{bottom - top:.0f}x{right - left:.0f} pixels", top=top, left=left,
                           bottom=bottom, right=right, height=image_size[0], width=image_size[1])
        )
    if binarize is None:
        return weights.astype(np.float32)
    if not 0 < binarize <= 1:
        raise MaskError(f"binarize={binarize}: pass a threshold in (0, 1], or None to keep fractional weights")
    binary = (weights >= binarize - BINARIZE_SLACK).astype(np.float32)  # tolerance: a fully covered cell may sum to 0.9999999
    if not binary.any():
        raise MaskError(
            f"no feature cell is covered by at least {binarize:g} of the mask (the most is {weights.max():.2f}): "
            "paint a larger region or lower binarize"
        )
    return binary


def _cover(start: float, stop: float, low: float, high: float, cells: int) -> np.ndarray:
    """(cells,) fraction of each of `cells` even bins of [low, high] that [start, stop] covers."""
    edges = np.linspace(low, high, cells + 1)
    overlap = np.clip(np.minimum(edges[1:], stop) - np.maximum(edges[:-1], start), 0.0, None)
    return overlap / (edges[1:] - edges[:-1])


def _box(box: Sequence[float]) -> tuple[float, float, float, float]:
    values = np.asarray(box, dtype=np.float64).reshape(-1)
    if values.size != 4 or not np.isfinite(values).all():
        raise MaskError(f"box {box!r} is not four finite numbers: pass (top, left, bottom, right) in pixels")
    top, left, bottom, right = (float(v) for v in values)
    if bottom <= top or right <= left:
        raise MaskError(
            f"box {box!r} is empty or flipped: pass (top, left, bottom, right) with top < bottom and left < right"
        )
    return top, left, bottom, right


def _grid(grid: Sequence[int]) -> tuple[int, int]:
    rows, cols = (int(v) for v in tuple(grid)[-2:])
    if rows < 1 or cols < 1:
        raise MaskError(f"grid {tuple(grid)} must be (h, w) with h, w >= 1 feature cells")
    return rows, cols
