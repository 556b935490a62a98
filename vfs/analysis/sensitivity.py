"""Sensitivity of one patch's features to rotation and scaling (Fong et al., "Interactive Similarity
Overlays", section "Sensitivity to Geometric Transformations").

Transform an image in steps (rotate by -45..45 degrees, or rescale by 0.5..2x about its centre),
extract the features of every copy, follow the pointed cell to where its centre lands in each copy,
and chart the cosine similarity of the original cell to that corresponding cell:

    result = transform_sensitivity(image, extractor, 3, 4, angles=[-45, -30, -15, 0, 15, 30, 45])
    result.similarities          # (T,) one value per copy, 1 at angle 0
    result.grids                 # (T, H, W) the overlay of each copy for the pointed cell

Geometry: the transform acts about the image centre in pixel units (so non-square images rotate
rigidly); a positive angle turns the picture counter-clockwise as displayed; scale 2 zooms in.
Pixels that come from outside the image are zero, which after normalisation is the dataset mean.
Positions are `(row, col)` in feature cells.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F

from vfs.analysis.overlays import similarity_grids
from vfs.errors import SearchError


@dataclass(frozen=True)
class Sensitivity:
    """How the pointed cell's features follow one geometric transformation in steps."""

    kind: str  # "rotate" (steps in degrees, counter-clockwise) or "scale" (steps are zoom factors)
    steps: np.ndarray  # (T,) float64, the angle or scale of each copy
    cells: np.ndarray  # (T, 2) int64, (row, col) where the pointed cell's centre lands; -1 when outside
    similarities: np.ndarray  # (T,) float32, cosine of the pointed cell to its corresponding cell; NaN outside
    grids: np.ndarray  # (T, H, W) float32, cosine of every cell of each copy to the pointed cell
    images: torch.Tensor  # (T, 3, H_img, W_img) the transformed copies, as fed to the model


def _matrix(height: int, width: int, angle: float, scale: float) -> torch.Tensor:
    """Forward map in normalised coordinates [-1, 1]: p_out = M p_in (2x2), rotating and scaling about
    the centre in pixel units."""
    rad = math.radians(angle)
    # x to the right, y down: this rotation turns the picture counter-clockwise on screen
    rotation = torch.tensor([[math.cos(rad), math.sin(rad)], [-math.sin(rad), math.cos(rad)]], dtype=torch.float64)
    to_pixels = torch.diag(torch.tensor([width / 2.0, height / 2.0], dtype=torch.float64))
    return torch.linalg.inv(to_pixels) @ (scale * rotation) @ to_pixels  # (2, 2)


def transform_image(image: torch.Tensor, *, angle: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """Rotate by `angle` degrees (counter-clockwise) and scale by `scale` about the centre.

    `image` is `(3, H, W)` (already preprocessed for the model); returns `(3, H, W)`, bilinear,
    zero outside the original. Angles that are multiples of 90 degrees on a square image move
    pixel centres exactly onto pixel centres.
    """
    if scale <= 0:
        raise SearchError(f"scale must be positive, got {scale}: use e.g. 0.5 to shrink or 2 to zoom in")
    _, height, width = image.shape
    inverse = torch.linalg.inv(_matrix(height, width, angle, scale))  # (2, 2): output -> input
    theta = torch.zeros(1, 2, 3, dtype=torch.float32)
    theta[0, :, :2] = inverse.to(torch.float32)
    grid = F.affine_grid(theta, [1, 3, height, width], align_corners=False)  # (1, H, W, 2)
    batch = image.to(torch.float32).unsqueeze(0)  # (1, 3, H, W)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]  # (3, H, W)


def transformed_cell(
    row: int, col: int, grid: tuple[int, int], *, angle: float = 0.0, scale: float = 1.0, image_size: tuple[int, int]
) -> tuple[int, int] | None:
    """The cell of `grid` where the centre of cell `(row, col)` lands after `transform_image`;
    None when it leaves the image. `image_size` is `(H, W)` of the transformed image."""
    h, w = grid
    point = torch.tensor([(2 * col + 1) / w - 1.0, (2 * row + 1) / h - 1.0], dtype=torch.float64)  # (x, y)
    x, y = (_matrix(*image_size, angle, scale) @ point).tolist()
    if not (-1.0 <= x < 1.0 and -1.0 <= y < 1.0):
        return None
    return min(int((y + 1.0) / 2.0 * h), h - 1), min(int((x + 1.0) / 2.0 * w), w - 1)


def transform_sensitivity(
    image: torch.Tensor,
    extract: Callable[[torch.Tensor], torch.Tensor],
    row: int,
    col: int,
    *,
    angles: Sequence[float] | None = None,
    scales: Sequence[float] | None = None,
    batch: int = 8,
) -> Sensitivity:
    """Similarity of cell `(row, col)` of `image` to its corresponding cell in rotated or rescaled copies.

    `image` is `(3, H, W)`, preprocessed; `extract` maps `(B, 3, H, W)` images to `(B, C, h, w)`
    features (a `FeatureExtractor` built without a preprocess, or any module). Give exactly one of
    `angles` (degrees) or `scales`. The pointed feature comes from the untransformed image.
    """
    if (angles is None) == (scales is None):
        raise SearchError("give exactly one of angles=[...] (degrees) or scales=[...] (zoom factors)")
    kind, given = ("rotate", angles) if angles is not None else ("scale", scales)
    assert given is not None  # the check above: exactly one of angles and scales is given
    steps = np.asarray(list(given), dtype=np.float64)  # (T,)
    if steps.size == 0:
        raise SearchError(f"no {kind} steps given: pass e.g. angles=[-45, 0, 45] or scales=[0.5, 1, 2]")
    image = torch.as_tensor(image).to(torch.float32)
    if image.ndim != 3:
        raise SearchError(f"image must be one (3, H, W) tensor, got shape {tuple(image.shape)}")
    transforms = [{"angle": float(s)} if kind == "rotate" else {"scale": float(s)} for s in steps]
    copies = torch.stack([image] + [transform_image(image, **t) for t in transforms])  # (1+T, 3, H, W)
    with torch.no_grad():
        parts = [torch.as_tensor(extract(copies[i : i + batch])) for i in range(0, len(copies), batch)]
    features = torch.cat(parts).detach().to("cpu", torch.float32)  # (1+T, C, h, w)
    grid = cast("tuple[int, int]", tuple(features.shape[-2:]))  # (h, w); similarity_grids checks it is 4-D
    grids = similarity_grids(features, 0, row, col)[1:]  # (T, h, w)
    cells = np.full((len(steps), 2), -1, dtype=np.int64)
    similarities = np.full(len(steps), np.nan, dtype=np.float32)
    for t, transform in enumerate(transforms):
        cell = transformed_cell(row, col, grid, image_size=(image.shape[-2], image.shape[-1]), **transform)
        if cell is not None:
            cells[t] = cell
            similarities[t] = grids[t, cell[0], cell[1]]
    return Sensitivity(kind=kind, steps=steps, cells=cells, similarities=similarities, grids=grids, images=copies[1:])
