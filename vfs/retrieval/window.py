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

import numpy as np
import torch

from vfs.errors import MaskError, SearchError
from vfs.models.devices import resolve_device
from vfs.retrieval.checks import (
    as_float_tensor,
    check_count,
    check_finite,
    check_grid,
    check_indices,
    check_query_region,
    is_positive_int,
)
from vfs.retrieval.kernels import WindowPlan, fused_applies, is_channels_last, make_plan, score_block
from vfs.retrieval.prepared import PreparedSource
from vfs.source import Array, Device, Indices, Source, as_tensor

READ_BYTES = 64 << 20  # default bytes of features read from the source at a time
CUDA_READ_BYTES = 2 << 30  # on a GPU: fewer, larger blocks (each costs kernel launches and a copy back)


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
           device: Device = None, any_grid: bool = False) -> list[Match]:
    """The `k` best windows over `source` (N, C, H, W), best first, at most `per_image` per image.

    `query` is one image's features (C, H, W) and `weights` (H, W) in [0, 1] the region on its grid.
    `exclude` lists indices never returned (the query image itself, say); `subset` restricts the
    search to these indices. `block` is how many images are read at a time (rounded up to the
    kernel's chunk); it never changes the results. `device` (e.g. "cuda") is where the math runs; None
    means the source's device when it is held on a GPU (`vfs.prepare(cache).to("cuda")`), else the
    query's. A plain (N, C, H, W) source is transposed per query: `vfs.prepare` it once to search at
    cache speed. The query's grid must be the source's (features of another input size rank wrongly)
    unless `any_grid=True`. Non-finite features, in the query region or in a scored window, raise
    `NonFiniteError` (naming the images) rather than dropping or misranking them.
    """
    check_count(k, "k", "ask for k=1 or more matches")
    check_count(per_image, "per_image", "use 1 for the best window per image")
    plan, indices, device = plan_search(query, weights, source, subset=subset, any_grid=any_grid,
                                        device="cpu" if is_self_scoring(source) else device)
    excluded = check_indices(exclude if exclude is not None else [], int(source.shape[0]), "exclude")
    if is_self_scoring(source):  # a cluster scores its own shards (vfs.retrieval.cluster.ClusterCache)
        best = source.cluster_top_windows(plan, indices, excluded=excluded, k=k,  # type: ignore[attr-defined]
                                          per_image=per_image)
    else:
        best = top_windows(plan, source, indices, excluded=excluded, k=k, per_image=per_image,
                           block=block, device=device)
    columns = plan.offsets[1]
    return [Match(index=int(i), score=float(s), row=int(o // columns), col=int(o % columns),
                  height=plan.height, width=plan.width) for i, s, o in best.ranked()]


def best_windows(query: Array, weights: Array, source: Source, *, subset: Indices | None = None,
                 block: int | None = None, device: Device = None, any_grid: bool = False) -> BestWindows:
    """The best window (score, row, col) of every image of `source`, or of `subset` (ascending).

    Inputs are checked as `search` checks them (grid, non-finite features): scores are never NaN.
    """
    plan, indices, device = plan_search(query, weights, source, subset=subset, any_grid=any_grid,
                                        device="cpu" if is_self_scoring(source) else device)
    if is_self_scoring(source):
        indices, scores, offsets = source.cluster_best_windows(plan, indices)  # type: ignore[attr-defined]
    else:
        indices, scores, offsets = each_best(plan, source, indices, block=block, device=device)
    columns = plan.offsets[1]
    return BestWindows(indices=indices, scores=scores, rows=offsets // columns, cols=offsets % columns,
                       height=plan.height, width=plan.width)


def is_self_scoring(source: Source) -> bool:
    """True for a source that scores its own data where it lives (a `ClusterCache`): it gets the plan."""
    return callable(getattr(source, "cluster_top_windows", None))


def top_windows(plan: WindowPlan, source: Source, indices: np.ndarray, *, excluded: np.ndarray, k: int, per_image: int,
                block: int | None, device: torch.device, chunk: int | None = None,
                position: int = 0) -> Candidates:
    """The k best (index, score, offset) over `indices` of `source`, at most `per_image` per image.

    `chunk` and `position` (where `indices[0]` stands in the whole search) are for a part of a larger
    search (one shard of a cluster): each image is then scored exactly as the whole search scores it.
    """
    best = Candidates(k)
    for chunk_indices, scores in scan(plan, source, indices, block=block, device=device, ignore=excluded,
                                      chunk=chunk, position=position):
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
    return best


def each_best(plan: WindowPlan, source: Source, indices: np.ndarray, *, block: int | None, device: torch.device,
              chunk: int | None = None, position: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices (M,) int64, best scores (M,) float32, best offsets (M,) int64) of every image of `indices`."""
    parts_indices, parts_scores, parts_offsets = [], [], []
    for chunk_indices, scores in scan(plan, source, indices, block=block, device=device, chunk=chunk,
                                      position=position):
        top, offsets = scores.max(dim=1)  # (n,) each, first maximum = lowest offset
        parts_indices.append(chunk_indices)
        parts_scores.append(top.cpu().numpy())
        parts_offsets.append(offsets.cpu().numpy())
    if not parts_indices:
        return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
    return (np.concatenate(parts_indices).astype(np.int64), np.concatenate(parts_scores).astype(np.float32),
            np.concatenate(parts_offsets).astype(np.int64))


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


def plan_search(query: Array, weights: Array, source: Source, *, subset: Indices | None, device: Device,
                any_grid: bool = False) -> tuple[WindowPlan, np.ndarray, torch.device]:
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
    if not any_grid:
        check_grid(tuple(query.shape[1:]), (height, width), source)
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
    if device is None:  # where the features live (a source held on a GPU), else where the query is
        held = getattr(source, "device", None)
        device = held if isinstance(held, torch.device) and held.type != "cpu" else query.device
    device = resolve_device(device)
    query_box = query[:, top:bottom, left:right].to(device)  # (C, h, w)
    check_query_region(query_box, weights[top:bottom, left:right].to(device))
    plan = make_plan(query_box, weights[top:bottom, left:right].to(device), (height, width), device=device)
    return plan, indices, device


def kernel_chunk(plan: WindowPlan, count: int) -> int:
    """Images per kernel call in a search of `count` images: a small search needs no padding."""
    return min(plan.chunk, max(1, count))


def scan(plan: WindowPlan, source: Source, indices: np.ndarray, *, block: int | None, device: torch.device,
         ignore: np.ndarray | None = None, chunk: int | None = None,
         position: int = 0) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield (indices (n,), scores (n, offsets)) over `indices`, one read block at a time.

    Images with non-finite features raise `NonFiniteError`, except those in `ignore` (never returned).

    Kernel calls hold `chunk` images (default: min(`plan.chunk`, len(indices)); the last call padded
    with zeros) and blocks are whole numbers of them, so each image is scored the same way whatever
    `block` is. `position` says where `indices[0]` stands in a larger search split into parts (a
    cluster's shards): the first call is then padded in front so that every image takes the same
    place in its kernel call as in the whole search (the torch kernels' bits depend on it).
    """
    if block is not None and not is_positive_int(block):
        raise SearchError(f"block must be a positive number of images, got {block!r}: "
                          "leave it None for the default")
    _, channels, height, width = (int(x) for x in source.shape)
    if block is None:
        read_bytes = CUDA_READ_BYTES if device.type == "cuda" else READ_BYTES
        block = max(1, read_bytes // (channels * height * width * 4))
    chunk = kernel_chunk(plan, len(indices)) if chunk is None else chunk
    block = -(-block // chunk) * chunk  # a whole number of chunks
    sq_norms = getattr(source, "sq_norms", None)
    lead = position % chunk
    first = min(len(indices), chunk - lead) if lead else 0
    if first:  # the images that share their kernel call with the previous part's last ones
        wanted = indices[:first]
        features = read(source, wanted)  # (n, C, H, W)
        norms = None if sq_norms is None else read(sq_norms, wanted)  # (n, H, W)
        padded, padded_norms = features, norms
        if not fused_applies(plan, features.dtype, device=device, data_device=features.device,
                             channels_last=is_channels_last(features)):
            padded, padded_norms = pad_front(features, lead), None if norms is None else pad_front(norms, lead)
        scores = score_block(padded, plan, chunk=chunk, device=device, sq_norms=padded_norms)  # (lead + n, offsets)
        scores = scores[scores.shape[0] - len(wanted):]  # (n, offsets)
        check_finite(wanted, features, norms, scores, ignore)
        yield wanted, scores
    for start in range(first, len(indices), block):
        wanted = indices[start:start + block]
        features = read(source, wanted)  # (n, C, H, W)
        norms = None if sq_norms is None else read(sq_norms, wanted)  # (n, H, W)
        scores = score_block(features, plan, chunk=chunk, device=device, sq_norms=norms)  # (n, offsets)
        check_finite(wanted, features, norms, scores, ignore)
        yield wanted, scores


def pad_front(values: torch.Tensor, lead: int) -> torch.Tensor:
    """`lead` rows of zeros, then `values` (n, ...), in the same memory layout: (lead + n, ...)."""
    order = sorted(range(values.ndim), key=lambda d: -values.stride()[d])  # dims from outermost in memory
    padded = values.new_zeros((lead + values.shape[0], *(values.shape[d] for d in order[1:])))
    out = padded.permute(0, *[order[1:].index(d) + 1 for d in range(1, values.ndim)])  # the input's layout
    out[lead:] = values
    return out


def read(source: Source, indices: np.ndarray) -> torch.Tensor:
    """Rows `indices` (sorted) of a source that slices along dim 0, as a tensor (n, ...) in its own dtype."""
    if len(indices) == 0:
        raise SearchError("internal: nothing to read")
    first, last = int(indices[0]), int(indices[-1]) + 1
    if isinstance(source, (torch.Tensor, PreparedSource)):
        return source[first:last] if last - first == len(indices) else source[torch.from_numpy(indices)]
    if isinstance(source, np.ndarray) and last - first != len(indices):
        return torch.from_numpy(np.ascontiguousarray(source[indices]))
    if last - first <= 2 * len(indices):  # dense enough: one slice, then pick
        values = as_tensor(source[first:last])  # (last - first, ...)
        return values if last - first == len(indices) else values[torch.from_numpy(indices - first)]
    runs = np.split(indices, np.flatnonzero(np.diff(indices) != 1) + 1)
    return torch.cat([as_tensor(source[int(run[0]):int(run[-1]) + 1]) for run in runs])
