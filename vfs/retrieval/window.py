"""Exact masked-window search: the dataset windows whose features are most similar to a painted region.

The query region is the bounding box (h, w) of the non-zero `weights`; every window of h x w cells
wholly inside every dataset map is scored by the cosine of the weighted features (each weight
multiplies every channel of its cell, on both sides):

    score(n, row, col) = cos(query_box * weights_box, features[n, :, row:row+h, col:col+w] * weights_box)

    matches = search(features[0], weights, features, k=10, exclude=[0])   # best first
    best = best_windows(features[0], weights, features)                   # every image's best window

Positions are (row, col) in feature cells. Ties go to the lower index, then the lower row, col.
The math lives in `vfs.retrieval.kernels`; this module validates, reads the source block by block and
keeps the best matches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vfs.errors import MaskError, SearchError
from vfs.retrieval.kernels import WindowPlan, make_plan, score_block
from vfs.source import Array, Device, Indices, Source, as_device

READ_BYTES = 64 << 20  # default bytes of features read from the source at a time


@dataclass(frozen=True)
class Match:
    """One matched window."""

    index: int  # image index in the source
    score: float  # cosine similarity in [-1, 1]
    row: int  # top row of the matched window, in feature cells
    col: int  # left column of the matched window, in feature cells
    height: int  # window height in cells (the bounding box of the non-zero weights)
    width: int  # window width in cells


@dataclass(frozen=True)
class BestWindows:
    """The best window of every scored image."""

    indices: np.ndarray  # (M,) int64, the images scored, ascending
    scores: np.ndarray  # (M,) float32, best window score per image
    rows: np.ndarray  # (M,) int64, top row of that window
    cols: np.ndarray  # (M,) int64, left column of that window
    height: int  # window height in cells
    width: int  # window width in cells


def search(query: Array, weights: Array, source: Source, *, k: int = 10, exclude: Indices | None = None,
           subset: Indices | None = None, per_image: int = 1, block: int | None = None,
           device: Device = None) -> list[Match]:
    """The `k` best windows over `source` (N, C, H, W), best first, at most `per_image` per image.

    `query` is one image's features (C, H, W) and `weights` (H, W) in [0, 1] the region on its grid.
    `exclude` lists indices never returned (the query image itself, say); `subset` restricts the
    search to these indices. `block` is how many images are read at a time (rounded up to the
    kernel's chunk); it never changes the results. `device` (e.g. "cuda") is where the math runs.
    """
    if not is_positive_int(k):
        raise SearchError(f"k must be a positive integer, got {k!r}: ask for k=1 or more matches")
    if not is_positive_int(per_image):
        raise SearchError(f"per_image must be a positive integer, got {per_image!r}: "
                          "use 1 for the best window per image")
    plan, indices, device = prepare(query, weights, source, subset=subset, device=device)
    excluded = check_indices(exclude if exclude is not None else [], int(source.shape[0]), "exclude")
    best = Candidates(k)
    for chunk_indices, scores in scan(plan, source, indices, block=block, device=device):
        if excluded.size:  # scored with the rest (whole slices read faster than gathers), never returned
            keep = ~np.isin(chunk_indices, excluded)
            chunk_indices, scores = chunk_indices[keep], scores[torch.from_numpy(keep).to(scores.device)]
        if per_image == 1:
            top, offsets = scores.max(dim=1, keepdim=True)  # (n, 1) each, first maximum = lowest offset
        else:
            top, offsets = scores.sort(dim=1, descending=True, stable=True)  # (n, offsets) each
            top, offsets = top[:, :per_image], offsets[:, :per_image]  # (n, p) each
        best.add(np.repeat(chunk_indices, top.shape[1]), top.cpu().numpy().ravel(),
                 offsets.cpu().numpy().ravel())
    columns = plan.offsets[1]
    return [Match(index=int(i), score=float(s), row=int(o // columns), col=int(o % columns),
                  height=plan.height, width=plan.width) for i, s, o in best.ranked()]


def best_windows(query: Array, weights: Array, source: Source, *, subset: Indices | None = None,
                 block: int | None = None, device: Device = None) -> BestWindows:
    """The best window (score, row, col) of every image of `source`, or of `subset` (ascending)."""
    plan, indices, device = prepare(query, weights, source, subset=subset, device=device)
    parts_indices: list[np.ndarray] = []
    parts_scores: list[np.ndarray] = []
    parts_offsets: list[np.ndarray] = []
    for chunk_indices, scores in scan(plan, source, indices, block=block, device=device):
        top, best = scores.max(dim=1)  # (n,) each, first maximum = lowest offset
        parts_indices.append(chunk_indices)
        parts_scores.append(top.cpu().numpy())
        parts_offsets.append(best.cpu().numpy())
    offsets = np.concatenate(parts_offsets).astype(np.int64) if parts_offsets else np.zeros(0, np.int64)
    columns = plan.offsets[1]
    return BestWindows(
        indices=np.concatenate(parts_indices) if parts_indices else np.zeros(0, np.int64),
        scores=np.concatenate(parts_scores).astype(np.float32) if parts_scores else np.zeros(0, np.float32),
        rows=offsets // columns, cols=offsets % columns, height=plan.height, width=plan.width)


class Candidates:
    """The k best (index, score, offset) seen so far, ties broken by lower index then lower offset."""

    def __init__(self, k: int):
        self.k = k
        self.indices = np.zeros(0, np.int64)
        self.scores = np.zeros(0, np.float32)
        self.offsets = np.zeros(0, np.int64)

    def add(self, indices: np.ndarray, scores: np.ndarray, offsets: np.ndarray) -> None:
        indices = np.concatenate([self.indices, indices.astype(np.int64)])
        scores = np.concatenate([self.scores, scores.astype(np.float32)])
        offsets = np.concatenate([self.offsets, offsets.astype(np.int64)])
        if len(scores) > self.k:  # keep only what can still make the top k (ties included)
            keep = scores >= np.partition(scores, len(scores) - self.k)[len(scores) - self.k]
            indices, scores, offsets = indices[keep], scores[keep], offsets[keep]
        order = np.lexsort((offsets, indices, -scores))[: self.k]
        self.indices, self.scores, self.offsets = indices[order], scores[order], offsets[order]

    def ranked(self) -> Iterator[tuple[int, float, int]]:
        return zip(self.indices.tolist(), self.scores.tolist(), self.offsets.tolist())


def prepare(query: Array, weights: Array, source: Source, *, subset: Indices | None,
            device: Device) -> tuple[WindowPlan, np.ndarray, torch.device]:
    """Validate the inputs; return the plan, the sorted image indices to scan, and the device."""
    query = as_float_tensor(query, "query")
    if query.ndim != 3:
        raise SearchError(f"query must be one image's features (C, H, W), got shape {tuple(query.shape)}: "
                          "pass features[i], not the whole batch")
    weights = as_float_tensor(weights, "weights").cpu()
    if weights.shape != query.shape[1:]:
        raise SearchError(f"weights {tuple(weights.shape)} must have the query's grid "
                          f"{tuple(query.shape[1:])}: map the mask onto the feature grid "
                          "with vfs.mask_to_grid")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()) or bool((weights > 1).any()):
        raise MaskError("weights must be finite numbers in [0, 1] (0 = outside the region): "
                        "scale a 0-255 mask by 1/255 and replace NaNs with 0")
    if not bool((weights > 0).any()):
        raise MaskError("mask is empty: paint over the region you want to search for")
    shape = getattr(source, "shape", None)
    if shape is None or len(shape) != 4:
        raise SearchError(f"source must hold features (N, C, H, W) and slice along dim 0, got shape {shape}: "
                          "stack single maps with torch.stack or pass a FeatureCache")
    count, channels, height, width = (int(x) for x in shape)
    if channels != query.shape[0]:
        raise SearchError(f"query has {query.shape[0]} channels but the source has {channels}: "
                          "take the query from the same model layer as the source")
    rows, cols = torch.nonzero(weights > 0, as_tuple=True)
    top, left, bottom, right = int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1
    if bottom - top > height or right - left > width:
        raise SearchError(f"the painted region spans {bottom - top}x{right - left} cells but the source maps "
                          f"are only {height}x{width}: paint a smaller region or use a layer "
                          "with a larger grid")
    sq_norms = getattr(source, "sq_norms", None)
    if sq_norms is not None and tuple(sq_norms.shape) != (count, height, width):
        raise SearchError(f"source.sq_norms has shape {tuple(sq_norms.shape)}, expected "
                          f"{(count, height, width)}: rebuild the cache's squared norms")
    indices = check_indices(subset, count, "subset") if subset is not None else np.arange(count)
    device = as_device(query.device if device is None else device)
    query_box = query[:, top:bottom, left:right].to(device)  # (C, h, w)
    plan = make_plan(query_box, weights[top:bottom, left:right].to(device), (height, width), device=device)
    return plan, indices, device


def as_float_tensor(value: object, name: str) -> torch.Tensor:
    """A torch view of a float numpy array or tensor; anything else is a SearchError."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            return torch.from_numpy(np.ascontiguousarray(value))
    elif isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.detach()
    raise SearchError(f"{name} must be a float numpy array or torch tensor, "
                      f"got {type(value).__name__} {getattr(value, 'dtype', '')}: "
                      "convert it with .astype(np.float32)")


def is_positive_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and bool(value >= 1)


def check_indices(values: Indices, count: int, name: str) -> np.ndarray:
    """Sorted unique int64 indices, each in [0, count)."""
    given = np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values).ravel()
    if given.size and given.dtype.kind not in "iu":
        raise SearchError(f"{name} must hold integer image indices, got dtype {given.dtype}")
    unique: np.ndarray = np.unique(given.astype(np.int64))
    if unique.size and (unique[0] < 0 or unique[-1] >= count):
        bad = unique[0] if unique[0] < 0 else unique[-1]
        raise SearchError(f"{name} holds index {bad}, outside the source's range [0, {count}): "
                          "pass indices of images in this source")
    return unique


def scan(plan: WindowPlan, source: Source, indices: np.ndarray, *, block: int | None,
         device: torch.device) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield (indices (n,), scores (n, offsets)) over `indices`, one read block at a time.

    Kernel calls hold min(`plan.chunk`, len(indices)) images (the last one padded with zeros) and
    blocks are whole numbers of them, so each image is scored the same way whatever `block` is.
    """
    if block is not None and not is_positive_int(block):
        raise SearchError(f"block must be a positive number of images, got {block!r}: "
                          "leave it None for the default")
    _, channels, height, width = (int(x) for x in source.shape)
    if block is None:
        block = max(1, READ_BYTES // (channels * height * width * 4))
    chunk = min(plan.chunk, max(1, len(indices)))  # a small search needs no padding
    block = -(-block // chunk) * chunk  # a whole number of chunks
    sq_norms = getattr(source, "sq_norms", None)
    for start in range(0, len(indices), block):
        wanted = indices[start:start + block]
        features = read(source, wanted)  # (n, C, H, W)
        norms = None if sq_norms is None else read(sq_norms, wanted)  # (n, H, W)
        yield wanted, score_block(features, plan, chunk=chunk, device=device, sq_norms=norms)  # (n, offsets)


def read(source: Source, indices: np.ndarray) -> torch.Tensor:
    """Rows `indices` (sorted) of a source that slices along dim 0, as a tensor (n, ...) in its own dtype."""
    if len(indices) == 0:
        raise SearchError("internal: nothing to read")
    first, last = int(indices[0]), int(indices[-1]) + 1
    if isinstance(source, torch.Tensor):
        return source[first:last] if last - first == len(indices) else source[torch.from_numpy(indices)]
    if isinstance(source, np.ndarray) and last - first != len(indices):
        return torch.from_numpy(np.ascontiguousarray(source[indices]))
    if last - first <= 2 * len(indices):  # dense enough: one slice, then pick
        values = as_tensor(source[first:last])  # (last - first, ...)
        return values if last - first == len(indices) else values[torch.from_numpy(indices - first)]
    runs = np.split(indices, np.flatnonzero(np.diff(indices) != 1) + 1)
    return torch.cat([as_tensor(source[int(run[0]):int(run[-1]) + 1]) for run in runs])


def as_tensor(values: Any) -> torch.Tensor:
    """A tensor sharing memory with a sliced block (numpy array or tensor), strides kept."""
    if isinstance(values, torch.Tensor):
        return values
    values = np.asarray(values)
    if not values.flags.writeable:
        values = values.copy()
    return torch.from_numpy(values)
