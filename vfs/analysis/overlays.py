"""Similarity overlays (Fong, Mordvintsev, Vedaldi & Olah, "Interactive Similarity Overlays", 2021).

Point at one feature cell `(row, col)` of one image; every cell of a set of feature maps is shaded
by the cosine similarity of its feature vector to the pointed one:

    grids = similarity_grids(features, 0, 3, 4)          # (N, H, W), grids[0, 3, 4] == 1
    every = all_similarity_grids(features, 0)            # (H*W, N, H, W): one overlay per pointed cell

Layers of different grid sizes stay synchronised by mapping the pointed cell through normalised
image coordinates (`map_cell`). Two companions from the same article live here too: the
non-negative matrix factorization of the shown images' activations (`factorize`, `render_factors`)
and, in `vfs.analysis.sensitivity`, how the pointed patch's similarity changes under rotation and scaling.

Positions are `(row, col)` in feature cells throughout. A zero feature vector has cosine 0 with
everything (itself included): post-ReLU features can be exactly zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from vfs.errors import SearchError
from vfs.source import ZERO_NORM, Array, as_tensor

# One color per NMF component (tab10's first colors, as RGB in [0, 1]).
PALETTE: tuple[tuple[float, float, float], ...] = (
    (0.122, 0.467, 0.706),
    (1.000, 0.498, 0.055),
    (0.173, 0.627, 0.173),
    (0.839, 0.153, 0.157),
    (0.580, 0.404, 0.741),
    (0.549, 0.337, 0.294),
    (0.890, 0.467, 0.761),
    (0.498, 0.498, 0.498),
    (0.737, 0.741, 0.133),
    (0.090, 0.745, 0.812),
)


def _as_features(features: object) -> torch.Tensor:
    """Any array-like `(N, C, H, W)` as a float32 CPU tensor."""
    tensor = as_tensor(features, dims="(N, C, H, W)", hint="stack the images' feature maps along a first dimension")
    return tensor.to("cpu", torch.float32)


def _check_cell(features: torch.Tensor, image_index: int, row: int, col: int) -> None:
    n, _, h, w = features.shape
    if not 0 <= image_index < n:
        raise SearchError(f"image_index {image_index} is outside 0..{n - 1}: point at one of the {n} images")
    if not (0 <= row < h and 0 <= col < w):
        raise SearchError(
            f"cell ({row}, {col}) is outside the {h}x{w} feature grid: rows 0..{h - 1}, cols 0..{w - 1}"
        )


def _unit(features: torch.Tensor) -> torch.Tensor:
    """Feature vectors scaled to unit length along C; zero vectors stay zero."""
    norms = features.norm(dim=1, keepdim=True)  # (N, 1, H, W)
    return features / norms.clamp_min(ZERO_NORM)  # (N, C, H, W)


def similarity_grids(features: Array, image_index: int, row: int, col: int) -> np.ndarray:
    """Cosine similarity of every cell of `features` to the cell `(row, col)` of image `image_index`.

    `features` is `(N, C, H, W)` (tensor or array). Returns `(N, H, W)` float32 in [-1, 1];
    the pointed cell itself scores 1 unless its feature vector is zero.
    """
    features = _as_features(features)
    _check_cell(features, image_index, row, col)
    unit = _unit(features)  # (N, C, H, W)
    pointed = unit[image_index, :, row, col]  # (C,)
    grids = torch.einsum("nchw,c->nhw", unit, pointed)  # (N, H, W)
    return grids.clamp(-1.0, 1.0).numpy()


def all_similarity_grids(features: Array, image_index: int) -> np.ndarray:
    """`similarity_grids` for every cell of image `image_index` at once, for a hover UI.

    Returns `(H*W, N, H, W)` float32: entry `[row * W + col]` is the overlay for pointing at
    `(row, col)`. Size is N*(H*W)^2 floats: 2.4 MB for 16 images of 14x14.
    """
    features = _as_features(features)
    _check_cell(features, image_index, 0, 0)
    unit = _unit(features)  # (N, C, H, W)
    pointed = unit[image_index].flatten(1)  # (C, H*W)
    grids = torch.einsum("nchw,cp->pnhw", unit, pointed)  # (H*W, N, H, W)
    return grids.clamp(-1.0, 1.0).numpy()


def map_cell(row: int, col: int, grid: tuple[int, int], to_grid: tuple[int, int]) -> tuple[int, int]:
    """The cell of `to_grid` that holds the centre of cell `(row, col)` of `grid`.

    Both grids cover the same image: the centre `((row + 0.5) / H, (col + 0.5) / W)` in normalised
    image coordinates falls in exactly one cell of the other grid. Identity when the grids match;
    14x14 -> 7x7 sends cells 2r and 2r+1 to r.
    """
    (h, w), (h2, w2) = grid, to_grid
    if not (0 <= row < h and 0 <= col < w):
        raise SearchError(f"cell ({row}, {col}) is outside the {h}x{w} grid: rows 0..{h - 1}, cols 0..{w - 1}")
    # (2*row + 1) * h2 // (2*h) is floor(((row + 0.5) / h) * h2) in exact integer arithmetic
    return min((2 * row + 1) * h2 // (2 * h), h2 - 1), min((2 * col + 1) * w2 // (2 * w), w2 - 1)


def layer_similarity_grids(
    features_by_layer: Mapping[str, object], image_index: int, row: int, col: int, *, grid: tuple[int, int]
) -> dict[str, np.ndarray]:
    """Synchronised overlays over several layers: `(row, col)` is a cell of `grid`, mapped into each
    layer's own grid by `map_cell`. Returns layer -> `(N, H_l, W_l)` cosine grids."""
    grids = {}
    for layer, features in features_by_layer.items():
        features = _as_features(features)
        r, c = map_cell(row, col, grid, (features.shape[-2], features.shape[-1]))
        grids[layer] = similarity_grids(features, image_index, r, c)
    return grids


@dataclass(frozen=True)
class Factors:
    """Non-negative factorization of the activations of a handful of images."""

    maps: np.ndarray  # (N, K, H, W) float32 >= 0: how much of each component sits at each cell
    components: np.ndarray  # (K, C) float32 >= 0: each component's direction in feature space
    reconstruction_error: float  # Frobenius norm of (X - maps @ components) over all N*H*W cells
    negatives: str  # how negative activations were made non-negative: "clip" or "shift"


def factorize(features: Array, *, k: int = 4, negatives: str = "clip", seed: int = 0, max_iter: int = 500) -> Factors:
    """Non-negative matrix factorization of the `(N*H*W, C)` matrix of feature vectors.

    NMF needs non-negative input. Post-ReLU layers already are; for layers without a final
    activation (EfficientNet block outputs are linear projections) `negatives` picks:
      - "clip": replace negatives by 0 (keeps what a following ReLU would keep; the default);
      - "shift": subtract the global minimum (keeps every value, but adds a constant offset
        that the components must absorb).
    Uses scikit-learn's `NMF` (init "nndsvda", seeded). Returns per-image component maps.
    """
    from sklearn.decomposition import NMF  # sklearn loads only when factorizing

    features = _as_features(features)
    n, c, h, w = features.shape
    if not 1 <= k <= c:
        raise SearchError(f"k={k} components cannot be fitted to {c} channels: pick k in 1..{c}")
    matrix = features.permute(0, 2, 3, 1).reshape(n * h * w, c).numpy()  # (N*H*W, C)
    if negatives == "clip":
        matrix = np.maximum(matrix, 0.0)
    elif negatives == "shift":
        matrix = matrix - min(float(matrix.min()), 0.0)
    else:
        raise SearchError(f"negatives={negatives!r} is not known: use 'clip' or 'shift'")
    if not matrix.any():
        raise SearchError("every activation is zero after making them non-negative: try negatives='shift'")
    model = NMF(n_components=k, init="nndsvda", random_state=seed, max_iter=max_iter)
    loadings = model.fit_transform(matrix)  # (N*H*W, K)
    maps = loadings.reshape(n, h, w, k).transpose(0, 3, 1, 2)  # (N, K, H, W)
    return Factors(
        maps=np.ascontiguousarray(maps, dtype=np.float32),
        components=model.components_.astype(np.float32),
        reconstruction_error=float(model.reconstruction_err_),
        negatives=negatives,
    )


def render_factors(maps: np.ndarray, *, colors: list[tuple[float, float, float]] | None = None) -> np.ndarray:
    """Color rendering of component maps `(N, K, H, W)`: each component one color, blended additively
    by its strength (each component scaled by its maximum over all images). Returns `(N, H, W, 3)` uint8."""
    maps = np.asarray(maps, dtype=np.float32)
    k = maps.shape[1]
    colors = list(colors) if colors is not None else [PALETTE[i % len(PALETTE)] for i in range(k)]
    if len(colors) < k:
        raise SearchError(f"{len(colors)} colors for {k} components: give one color per component")
    peaks = maps.max(axis=(0, 2, 3), keepdims=True)  # (1, K, 1, 1)
    strength = maps / np.maximum(peaks, ZERO_NORM)  # (N, K, H, W) in [0, 1]
    palette = np.asarray(colors[:k], dtype=np.float32)  # (K, 3)
    rgb = np.einsum("nkhw,kc->nhwc", strength, palette)  # (N, H, W, 3)
    return (np.clip(rgb, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
