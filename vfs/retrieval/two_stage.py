"""Two-stage search: approximate over a coarse index in RAM, then exact over the best `candidates` images.

    index = vfs.open_coarse_index(cache)                     # once; python -m vfs index-coarse CACHE
    result = vfs.search_two_stage(query, weights, cache, index=index, candidates=1000, k=10)
    result.matches                                           # best first, exact scores
    result.label                                             # "approximate: ... M=1000 ..."

Stage 1 scores every window of every image with the projected query over the index's d channels
and the cache's exact squared norms, so only the numerator is approximate (`coarse_scores`: the
fused numba kernel of exact search, keeping only each image's best score, in one parallel pass
over the whole index; `vfs.best_windows` over the index without numba or for a subset). The
`candidates` images with the best approximate window are kept. Stage 2 reads only their features from the cache (their chunks, on
disk or in RAM) and runs the exact `vfs.search` over them: every returned score is the exact score
of the returned window, and within the candidates the result equals exact search. What can be
missed is an image whose approximate score falls outside the top `candidates`; bench/two_stage.py
measures how often (recall@k against exact search, per mask shape and M).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from vfs.cache.coarse import CoarseIndex, cache_fingerprint, open_coarse_index
from vfs.cache.reader import FeatureCache
from vfs.errors import CacheMismatchError, SearchError
from vfs.retrieval import kernels
from vfs.retrieval.checks import as_float_tensor, check_indices, is_positive_int
from vfs.retrieval.window import BestWindows, Match, best_windows, each_best, plan_search, search
from vfs.source import Array, Indices

CANDIDATES = 1000  # default M: images re-scored exactly (see the recall table in docs/design.md)


@dataclass(frozen=True)
class TwoStageResult:
    """Matches of a two-stage search: exact scores, approximate selection."""

    matches: list[Match]  # best first; each score is the exact score of its window
    candidates: int  # M: images re-scored exactly (the best M by the coarse index)
    scanned: int  # images the coarse index scored
    dims: int  # channels of the coarse index

    @property
    def label(self) -> str:
        """How to present these results: they are approximate, with M."""
        return approximate_label(self.candidates, self.scanned)


def approximate_label(candidates: int, scanned: int) -> str:
    """The one-line label every view of two-stage results shows."""
    return (f"approximate: two-stage search, exact scores of the best of M={candidates:,} candidate images "
            f"picked by a coarse index out of {scanned:,}")


def search_two_stage(query: Array, weights: Array, cache: FeatureCache, *, index: CoarseIndex | None = None,
                     candidates: int = CANDIDATES, k: int = 10, exclude: Indices | None = None,
                     subset: Indices | None = None,
                     per_image: int = 1) -> TwoStageResult:
    """The `k` best windows of `cache` for the region `weights` (H, W) of `query` (C, H, W), found in two stages.

    `index` is `open_coarse_index(cache)` (opened here when None: open it once for many queries).
    `candidates` (M) images are re-scored exactly; `exclude`, `subset` and `per_image` are as for `vfs.search`.
    """
    if not is_positive_int(k):
        raise SearchError(f"k must be a positive integer, got {k!r}: ask for k=1 or more matches")
    picked, source, scanned, dims = _candidates(query, weights, cache, index=index, candidates=candidates,
                                                exclude=exclude, subset=subset)
    if source is None:
        return TwoStageResult(matches=[], candidates=candidates, scanned=scanned, dims=dims)
    found = search(query, weights, source, k=k, per_image=per_image)
    matches = [Match(index=int(picked[m.index]), score=m.score, row=m.row, col=m.col, height=m.height,
                     width=m.width) for m in found]
    return TwoStageResult(matches=matches, candidates=candidates, scanned=scanned, dims=dims)


def best_windows_two_stage(query: Array, weights: Array, cache: FeatureCache, *,
                           index: CoarseIndex | None = None, candidates: int = CANDIDATES,
                           exclude: Indices | None = None, subset: Indices | None = None) -> BestWindows:
    """The exact best window of each of the `candidates` images (of `subset`) the coarse index ranks best.

    Like `vfs.best_windows`, but only over those M images (ascending indices of the cache).
    """
    picked, source, _, _ = _candidates(query, weights, cache, index=index, candidates=candidates,
                                       exclude=exclude, subset=subset)
    if source is None:
        return BestWindows(indices=np.zeros(0, np.int64), scores=np.zeros(0, np.float32),
                           rows=np.zeros(0, np.int64), cols=np.zeros(0, np.int64), height=0, width=0)
    best = best_windows(query, weights, source)
    return replace(best, indices=picked[best.indices])


def _candidates(query: Array, weights: Array, cache: FeatureCache, *, index: CoarseIndex | None,
                candidates: int, exclude: Indices | None,
                subset: Indices | None) -> tuple[np.ndarray, Gathered | None, int, int]:
    """Stage 1: (the M picked images, ascending; their features as a source; images scanned; d)."""
    if not is_positive_int(candidates):
        raise SearchError(f"candidates must be a positive integer, got {candidates!r}: "
                          f"ask for M images to re-score exactly, e.g. candidates={CANDIDATES}")
    index = open_coarse_index(cache) if index is None else index
    if index.meta.cache != cache_fingerprint(cache):
        raise CacheMismatchError(f"this coarse index was built from another cache than {cache.where}: "
                                 "open the index of the cache you search (vfs.open_coarse_index(cache))")
    query = as_float_tensor(query, "query")
    if query.ndim != 3 or query.shape[0] != cache.shape[1]:
        raise SearchError(f"query must be one image's features (C, H, W) with the cache's {cache.shape[1]} "
                          f"channels, got shape {tuple(query.shape)}: take it from the cache's model layer")
    count = cache.shape[0]
    excluded = check_indices(exclude if exclude is not None else [], count, "exclude")
    indices, scores = coarse_scores(index.project(query), weights, index, subset=subset)  # (n,) each
    scores[np.isin(indices, excluded)] = -np.inf
    keep = min(candidates, len(scores) - int(np.isin(indices, excluded).sum()))
    if keep <= 0:
        return np.zeros(0, np.int64), None, len(scores), index.meta.dims
    picked = np.sort(indices[top_indices(scores, keep)])  # (M,) ascending: ties as exact search
    return picked, Gathered(cache.take(picked), index.sq_norms[picked]), len(scores), index.meta.dims


def coarse_scores(query: Array, weights: Array, index: CoarseIndex, *,
                  subset: Indices | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stage 1: (images (n,) ascending, each one's best approximate window score (n,) float32).

    `query` is already projected, (d, H, W). The scores are those of `vfs.best_windows` over the index
    (to float32 rounding): with numba, a whole index is scanned by one call of the fused kernel that
    keeps only each image's best score (no (n, windows) array, no per-block work in Python).
    """
    plan, indices, device = plan_search(query, weights, index, subset=subset, device="cpu")
    features = torch.from_numpy(index[:])  # (N, d, H, W), a channels-last view of the codes
    if subset is None and kernels.fused_applies(plan, features.dtype, device=device, data_device=features.device,
                                                channels_last=kernels.is_channels_last(features)):
        scores = kernels.best_scores(features, plan, sq_norms=torch.from_numpy(index.sq_norms)).numpy()  # (N,)
        if np.isfinite(scores).all():
            return indices, scores
    indices, scores, _ = each_best(plan, index, indices, block=None, device=device)  # names non-finite images
    return indices, scores


def top_indices(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` largest scores (ties to the lower index), in no particular order."""
    if count >= len(scores):
        return np.arange(len(scores))
    threshold = np.partition(scores, len(scores) - count)[len(scores) - count]
    above = np.flatnonzero(scores > threshold)
    tied = np.flatnonzero(scores == threshold)[: count - len(above)]
    return np.concatenate([above, tied])


class Gathered:
    """A few images' features (n, C, H, W) with their exact squared norms (n, H, W): a search source."""

    def __init__(self, features: np.ndarray, sq_norms: np.ndarray):
        self.features, self.sq_norms = features, sq_norms
        self.shape = features.shape

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.features[index]

    def __len__(self) -> int:
        return self.shape[0]

