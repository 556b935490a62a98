"""Quantitative neighbour metrics (the experiments of Ulrich & Fong, "Interactive Visual Feature
Search", made reusable): batch queries over any source, then measures of what came back.

    nb = neighbours(cache, queries, k=5)                  # whole-image queries, query itself excluded
    distinct_labels(nb, cache.labels).mean()              # labels among the top 5 (1 = all the same)
    shared_neighbours(nb, neighbours(other, queries, k=5)).mean()   # overlap of two layers/models
    window_ious(nb, boxes, image_sizes, grid)             # matched window vs ground-truth boxes
    domain_neighbours(cache, queries, domains, k=3)       # the best match from k distinct domains
    label_scores(cache, queries, labels)                  # per-query AUROC of "score predicts same label"

Every function takes a `source` (anything `(N, C, H, W)` that slices along dim 0, as in
`vfs.search`) and plain arrays for labels, domains and boxes, so it works on caches and on arrays.
A query is an image of the source (its index), or of another `query_source` of the same model and
layer (then nothing is excluded: VFS v1 queries ImageNet test images against the validation set);
its region is the whole image, or a box `(top, left, bottom, right)` in original pixels mapped with
`box_to_grid`. `python -m vfs
experiment` (in `vfs.analysis.experiment`) runs these on caches and prints tables.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from vfs.analysis.statistics import estimate
from vfs.errors import SearchError
from vfs.masks import box_to_grid, window_to_box
from vfs.retrieval.window import best_windows, search
from vfs.source import Source

if TYPE_CHECKING:
    from vfs.models.preprocess import Preprocess


@dataclass(frozen=True)
class Neighbours:
    """The top-k matches of a batch of queries over one source."""

    queries: np.ndarray  # (Q,) int64, query image indices into the query source (the source itself by default)
    indices: np.ndarray  # (Q, k) int64, matched image indices, best first
    scores: np.ndarray  # (Q, k) float32, cosine similarity of each match
    rows: np.ndarray  # (Q, k) int64, top row of each matched window, in feature cells
    cols: np.ndarray  # (Q, k) int64, left column of each matched window
    heights: np.ndarray  # (Q,) int64, window height in cells of each query
    widths: np.ndarray  # (Q,) int64, window width in cells of each query

    @classmethod
    def unfilled(cls, queries: np.ndarray, k: int) -> Neighbours:
        """Room for `k` matches of each query: indices, rows and cols -1, scores NaN, sizes 0."""
        shape = (len(queries), k)
        return cls(
            queries=queries,
            indices=np.full(shape, -1, np.int64),
            scores=np.full(shape, np.nan, np.float32),
            rows=np.full(shape, -1, np.int64),
            cols=np.full(shape, -1, np.int64),
            heights=np.zeros(len(queries), np.int64),
            widths=np.zeros(len(queries), np.int64),
        )


def box_weights(
    grid: tuple[int, int], *, box: Sequence[float] | None = None, image_size: tuple[int, int] | None = None,
    preprocess: Preprocess | None = None,
) -> np.ndarray:
    """Weights `(H, W)` of a query: all ones for the whole image, else the cells the box covers at
    least half of; a box smaller than that (no cell half covered) gets its best-covered cell(s)."""
    if box is None:
        return np.ones(grid, dtype=np.float32)
    if image_size is None:
        raise SearchError("a box query needs image_size=(height, width) of the original image")
    coverage = box_to_grid(box, image_size, grid, preprocess=preprocess)  # (H, W) float32, a MaskError if all 0
    cut = min(0.5, float(coverage.max()))
    return (coverage >= cut).astype(np.float32)


def _query_features(source: Source, index: int) -> np.ndarray:
    return np.asarray(source[index : index + 1])[0]  # (C, H, W)


def _weights_for(source: Source, queries: np.ndarray, boxes: Sequence[Sequence[float]] | None,
                 image_sizes: np.ndarray | None, preprocess: Preprocess | None) -> list[np.ndarray]:
    """One weight grid per query; `image_sizes` are those of the query source."""
    grid = cast("tuple[int, int]", tuple(source.shape[-2:]))  # (H, W) of the (N, C, H, W) source
    if boxes is None:
        return [box_weights(grid)] * len(queries)
    if len(boxes) != len(queries) or image_sizes is None:
        raise SearchError(
            f"{len(boxes)} boxes for {len(queries)} queries: give one box per query and the image_sizes of the "
            "query source"
        )
    return [
        box_weights(grid, box=box, image_size=cast("tuple[int, int]", tuple(int(v) for v in image_sizes[q])),
                    preprocess=preprocess)  # image_sizes is (N, 2): (height, width)
        for q, box in zip(queries, boxes)
    ]


def _check_query_source(source: Source, query_source: Source | None) -> Source:
    """The source queries come from (`source` when None), checked to have the same channels and grid."""
    if query_source is None:
        return source
    if tuple(query_source.shape[1:]) != tuple(source.shape[1:]):
        raise SearchError(f"query features {tuple(query_source.shape[1:])} do not match the source's "
                          f"{tuple(source.shape[1:])} (C, H, W): take queries from the same model, layer and input size")
    return query_source


def neighbours(
    source: Source, queries: Sequence[int] | np.ndarray, *, k: int = 5, boxes: Sequence[Sequence[float]] | None = None,
    image_sizes: np.ndarray | None = None, preprocess: Preprocess | None = None, block: int | None = None,
    query_source: Source | None = None,
) -> Neighbours:
    """Run `vfs.search` for every query and stack the top `k`. A query is an image of `source` (itself
    excluded), or of `query_source` when given (nothing excluded).

    `boxes` (one `(top, left, bottom, right)` per query, original pixels) restricts each query to a
    box; then `image_sizes` `(N, 2)` of the query source and the cache's `preprocess` map it onto the grid.
    """
    queries = np.asarray(queries, dtype=np.int64)
    own = query_source is None
    query_source = _check_query_source(source, query_source)
    weights = _weights_for(source, queries, boxes, image_sizes, preprocess)
    nb = Neighbours.unfilled(queries, k)
    for q, (index, w) in enumerate(zip(queries, weights)):
        exclude = [int(index)] if own else None
        matches = search(_query_features(query_source, int(index)), w, source, k=k, exclude=exclude, block=block)
        if len(matches) < k:
            raise SearchError(f"query {index} found {len(matches)} matches, fewer than k={k}: use a smaller k")
        nb.indices[q] = [m.index for m in matches]
        nb.scores[q] = [m.score for m in matches]
        nb.rows[q] = [m.row for m in matches]
        nb.cols[q] = [m.col for m in matches]
        nb.heights[q], nb.widths[q] = matches[0].height, matches[0].width
    return nb


def distinct_labels(nb: Neighbours, labels: np.ndarray) -> np.ndarray:
    """`(Q,)` number of distinct labels among each query's top k (1 when all agree)."""
    found = np.asarray(labels)[nb.indices]  # (Q, k)
    return np.array([len(set(row.tolist())) for row in found], dtype=np.int64)


def same_label_fraction(nb: Neighbours, labels: np.ndarray, query_labels: np.ndarray | None = None) -> np.ndarray:
    """`(Q,)` fraction of each query's top k that carry the query's own label (precision at k);
    `query_labels` are the labels of the query source when it is not the searched one."""
    labels = np.asarray(labels)
    own = labels[nb.queries] if query_labels is None else np.asarray(query_labels)[nb.queries]  # (Q,)
    return (labels[nb.indices] == own[:, None]).mean(axis=1)  # (Q,)


def shared_neighbours(a: Neighbours, b: Neighbours) -> np.ndarray:
    """`(Q,)` number of images in both top-k lists, for the same queries over two models or layers
    of the same dataset (the caller checks the dataset fingerprint)."""
    if not np.array_equal(a.queries, b.queries) or a.indices.shape != b.indices.shape:
        raise SearchError(
            "the two neighbour sets have different queries or k: run both with the same query list and k"
        )
    return np.array([len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a.indices, b.indices)], np.int64)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two `(top, left, bottom, right)` boxes."""
    top, left = max(a[0], b[0]), max(a[1], b[1])
    bottom, right = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, bottom - top) * max(0.0, right - left)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def window_ious(
    nb: Neighbours, boxes: Sequence[np.ndarray | None], image_sizes: np.ndarray, grid: tuple[int, int], *,
    preprocess: Preprocess | None = None, rank: int = 0,
) -> np.ndarray:
    """`(Q,)` IoU, in original pixels, of each query's matched window (at `rank`, 0 = best) with the
    best-overlapping ground-truth box of the matched image. A match to an image without a box is a
    miss, IoU 0 (VFS v1 Fig. 8: a face query that retrieves a non-face failed); `matched_boxed` says which."""
    out = np.zeros(len(nb.queries))
    for q in range(len(nb.queries)):
        index = int(nb.indices[q, rank])
        truth = boxes[index]
        if truth is None or len(truth) == 0:
            continue
        size = cast("tuple[int, int]", tuple(int(v) for v in image_sizes[index]))  # image_sizes is (N, 2)
        window = window_to_box(
            int(nb.rows[q, rank]), int(nb.cols[q, rank]), int(nb.heights[q]), int(nb.widths[q]), grid, size,
            preprocess=preprocess,
        )
        out[q] = max(box_iou(window, box) for box in np.asarray(truth, dtype=np.float64))
    return out


def matched_boxed(nb: Neighbours, boxes: Sequence[np.ndarray | None], *, rank: int = 0) -> np.ndarray:
    """`(Q,)` bool: the match at `rank` is an image with at least one ground-truth box (else a miss)."""
    return np.array([(box := boxes[int(i)]) is not None and len(box) > 0 for i in nb.indices[:, rank]], bool)


def top_k_ious(
    nb: Neighbours, boxes: Sequence[np.ndarray | None], image_sizes: np.ndarray, grid: tuple[int, int], *,
    preprocess: Preprocess | None = None,
) -> np.ndarray:
    """`(Q, k)` IoU of every match of the top k (misses 0), as `window_ious` at each rank."""
    ranks = nb.indices.shape[1]
    return np.stack([window_ious(nb, boxes, image_sizes, grid, preprocess=preprocess, rank=r) for r in range(ranks)],
                    axis=1)  # (Q, k)


def box_area(box: Sequence[float]) -> float:
    """Area of a `(top, left, bottom, right)` box in square pixels of the original image."""
    return float(max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1]))


def relative_box_size(box: Sequence[float], image_size: tuple[int, int]) -> float:
    """sqrt(box area / image area): 1 for the whole image, 0.5 for a box of a quarter of it."""
    return float(np.sqrt(max(0.0, (box[2] - box[0]) * (box[3] - box[1])) / (image_size[0] * image_size[1])))


def bin_by(values: np.ndarray, keys: np.ndarray, edges: Sequence[float]) -> list[dict[str, Any]]:
    """Rows `{low, high, count, mean, mean se, mean ci95}` of `values` grouped by `keys` into
    `[edges[i], edges[i+1])` (NaN values left out)."""
    values, keys = np.asarray(values, np.float64), np.asarray(keys, np.float64)
    rows = []
    for low, high in itertools.pairwise(edges):
        inside = (keys >= low) & (keys < high) & ~np.isnan(values)
        rows.append({"low": float(low), "high": float(high), "count": int(inside.sum()),
                     **estimate(values[inside]).columns("mean")})
    return rows


def domain_neighbours(
    source: Source, queries: Sequence[int] | np.ndarray, domains: Sequence[str], *, k: int = 3,
    boxes: Sequence[Sequence[float]] | None = None, image_sizes: np.ndarray | None = None,
    preprocess: Preprocess | None = None, block: int | None = None, query_source: Source | None = None,
) -> Neighbours:
    """The top k over distinct domains: for each query (itself excluded unless it comes from another
    `query_source`), every image's best window (`best_windows`), the best image of each domain, then
    the `k` best domains. `domains` are those of the searched source."""
    queries = np.asarray(queries, dtype=np.int64)
    own = query_source is None
    query_source = _check_query_source(source, query_source)
    names, codes = np.unique(np.asarray(domains, dtype=object).astype(str), return_inverse=True)
    if len(names) < k:
        raise SearchError(f"the source has {len(names)} domains, fewer than k={k}: use k <= {len(names)}")
    weights = _weights_for(source, queries, boxes, image_sizes, preprocess)
    nb = Neighbours.unfilled(queries, k)
    for q, (index, w) in enumerate(zip(queries, weights)):
        best = best_windows(_query_features(query_source, int(index)), w, source, block=block)
        keep = best.indices != index if own else np.ones(len(best.indices), bool)
        order = np.lexsort((best.indices[keep], -best.scores[keep]))  # best first, ties to lower index
        ranked = np.flatnonzero(keep)[order]
        _, first = np.unique(codes[best.indices[ranked]], return_index=True)  # best image per domain
        chosen = ranked[np.sort(first)][:k]
        nb.indices[q], nb.scores[q] = best.indices[chosen], best.scores[chosen]
        nb.rows[q], nb.cols[q] = best.rows[chosen], best.cols[chosen]
        nb.heights[q], nb.widths[q] = best.height, best.width
    return nb


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of `scores` predicting boolean `positives`, ties counted as half
    (the Mann-Whitney U statistic with mid-ranks)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives = np.asarray(positives, dtype=bool).ravel()
    n_pos = int(positives.sum())
    n_neg = len(scores) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise SearchError(f"AUROC needs both classes, got {n_pos} positives and {n_neg} negatives")
    order = np.argsort(scores, kind="stable")
    ordered = scores[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ordered)) + 1]  # first position of each run of ties
    ends = np.r_[starts[1:], len(ordered)]
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)  # mid-rank of each tie run, 1-based
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@dataclass(frozen=True)
class LabelScores:
    """Every image's best-window score for each query, split by whether it shares the query's label."""

    queries: np.ndarray  # (Q,) int64, query image indices
    scores: np.ndarray  # (Q, N) float32, best-window cosine of every image; NaN at the query itself
    same: np.ndarray  # (Q, N) bool, the image carries the query's label
    aurocs: np.ndarray  # (Q,) float64, AUROC of "score predicts same label" per query; NaN if one class


def label_scores(
    source: Source, queries: Sequence[int] | np.ndarray, labels: np.ndarray, *,
    boxes: Sequence[Sequence[float]] | None = None, image_sizes: np.ndarray | None = None,
    preprocess: Preprocess | None = None, block: int | None = None, query_source: Source | None = None,
    query_labels: np.ndarray | None = None,
) -> LabelScores:
    """Score distributions by label: `best_windows` of each query over the whole source (the query
    image left out unless it comes from another `query_source`, whose labels are `query_labels`)."""
    queries = np.asarray(queries, dtype=np.int64)
    labels = np.asarray(labels)
    own = query_source is None
    if not own and query_labels is None:
        raise SearchError("queries from another query_source need their query_labels")
    query_source = _check_query_source(source, query_source)
    weights = _weights_for(source, queries, boxes, image_sizes, preprocess)
    n = source.shape[0]
    scores = np.full((len(queries), n), np.nan, np.float32)
    aurocs = np.full(len(queries), np.nan)
    own_labels = labels[queries] if own else np.asarray(query_labels)[queries]  # (Q,)
    same = labels[None, :] == own_labels[:, None]  # (Q, N)
    for q, (index, w) in enumerate(zip(queries, weights)):
        best = best_windows(_query_features(query_source, int(index)), w, source, block=block)
        scores[q, best.indices] = best.scores
        others = np.ones(n, bool)
        if own:
            scores[q, index] = np.nan
            others[index] = False
        if 0 < same[q, others].sum() < others.sum():
            aurocs[q] = auroc(scores[q, others], same[q, others])
    return LabelScores(queries, scores, same, aurocs)
