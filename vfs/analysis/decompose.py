"""Similarity decomposition of pooled embeddings (Stylianou, Souvenir & Pless, "Visualizing Deep
Similarity Networks", WACV 2019).

Pool a layer's features `(C, H, W)` into one vector (global average or max pooling); the cosine of
two pooled vectors splits exactly into one contribution per feature cell, in either direction:

    map_a, map_b, score = decompose(features_a, features_b, pooling="avg")
    map_a.sum() == map_b.sum() == score        # up to float rounding

Average pooling (paper eq. 2-3): beta = mean of the cells, so
    map_a[y, x] = alpha_a[:, y, x] . beta_b / (H * W * |beta_a| |beta_b|).
Max pooling (eq. 4-6): each channel's maximum is credited to the cell that produced it, divided
evenly between the cells that tie for it (the surrogate alpha-hat), every other cell gets 0:
    map_a[y, x] = alpha_hat_a[:, y, x] . beta_b / (|beta_a| |beta_b|).

Summing a map inside a query sub-region scores how much that region explains the match, which ranks
a dataset for region-specific retrieval (`rerank_region`, paper section 4.6). Two pooled vectors of
which one is zero have cosine 0 and all-zero maps. Positions are `(row, col)` in feature cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from vfs.errors import NAMED, NonFiniteError, SearchError
from vfs.retrieval.checks import check_count, check_indices
from vfs.source import ZERO_NORM, Array, Indices, Source, as_tensor

POOLINGS = ("avg", "max")


class Decomposition(NamedTuple):
    """Per-cell contributions to the cosine of two pooled embeddings; unpacks as (map_a, map_b, score)."""

    map_a: np.ndarray  # (H, W) float64, sums to score: where image A's embedding meets B's
    map_b: np.ndarray  # (H', W') float64, sums to score: where image B's embedding meets A's
    score: float  # cosine similarity of the two pooled vectors


@dataclass(frozen=True)
class RegionMatch:
    """One image ranked by how much a query sub-region contributes to its similarity."""

    index: int  # image index in the source
    score: float  # sum of the query's decomposition map inside the region (weighted)
    similarity: float  # cosine of the whole pooled embeddings (the score of the full map)


def _as_float64(features: Array, dims: str, name: str) -> torch.Tensor:
    """Features as a float64 CPU tensor (the maps must sum to the score up to float64 rounding)."""
    return as_tensor(features, dims=dims, name=name).to("cpu", torch.float64)


def _check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise SearchError(f"pooling={pooling!r} is not known: use one of {', '.join(POOLINGS)}")


def pool(features: torch.Tensor, *, pooling: str = "avg") -> torch.Tensor:
    """Global pooling over the last two dims: `(..., C, H, W)` -> `(..., C)`."""
    _check_pooling(pooling)
    return features.mean(dim=(-2, -1)) if pooling == "avg" else features.amax(dim=(-2, -1))  # (..., C)


def surrogate(features: torch.Tensor, *, pooling: str = "avg") -> torch.Tensor:
    """The per-cell terms whose sum over cells is the pooled vector: `(C, H, W)` -> `(C, H, W)`.

    Average pooling: features / (H * W). Max pooling: each channel's maximum at the cells that
    reach it, divided by how many do (ties split evenly), zero elsewhere.
    """
    _check_pooling(pooling)
    _c, h, w = features.shape
    if pooling == "avg":
        return features / (h * w)  # (C, H, W)
    peaks = features.amax(dim=(1, 2), keepdim=True)  # (C, 1, 1)
    at_peak = features == peaks  # (C, H, W) bool
    ties = at_peak.sum(dim=(1, 2), keepdim=True)  # (C, 1, 1), at least 1
    return torch.where(at_peak, features / ties, torch.zeros_like(features))  # (C, H, W)


def decompose(features_a: Array, features_b: Array, *, pooling: str = "avg") -> Decomposition:
    """Split the cosine of the pooled embeddings of A `(C, H, W)` and B `(C, H', W')` over their cells.

    Returns `(map_a (H, W), map_b (H', W'), score)`; each map sums to `score`.
    """
    a = _as_float64(features_a, "(C, H, W)", "features_a")
    b = _as_float64(features_b, "(C, H, W)", "features_b")
    if a.shape[0] != b.shape[0]:
        raise SearchError(
            f"features_a has {a.shape[0]} channels and features_b {b.shape[0]}: decompose two maps of the same layer"
        )
    beta_a, beta_b = pool(a, pooling=pooling), pool(b, pooling=pooling)  # (C,), (C,)
    norm = float(beta_a.norm() * beta_b.norm())
    if norm < ZERO_NORM:
        return Decomposition(np.zeros(a.shape[1:]), np.zeros(b.shape[1:]), 0.0)
    map_a = torch.einsum("chw,c->hw", surrogate(a, pooling=pooling), beta_b) / norm  # (H, W)
    map_b = torch.einsum("chw,c->hw", surrogate(b, pooling=pooling), beta_a) / norm  # (H', W')
    return Decomposition(map_a.numpy(), map_b.numpy(), float(beta_a @ beta_b) / norm)


def rerank_region(
    query: Array,
    weights: Array,
    source: Source,
    *,
    pooling: str = "avg",
    k: int = 10,
    exclude: Indices | None = None,
    block: int = 256,
) -> list[RegionMatch]:
    """Rank the images of `source` by the query's decomposition map summed inside a sub-region.

    `query` is `(C, H, W)`; `weights` is `(H, W)` in [0, 1] (e.g. from `mask_to_grid`), the
    region on the query's grid; `source` is `(N, C, H', W')`, anything that slices along dim 0,
    streamed in blocks of `block` images. The region score of image i is
    sum(weights * map_a(query, i)); since map_a is linear in the query's surrogate, it is the
    region's pooled share `sum(weights * surrogate)` dotted with image i's pooled vector.
    Returns the `k` best, best first; `exclude` lists indices to leave out (e.g. the query).
    """
    q = _as_float64(query, "(C, H, W)", "query")
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    if tuple(w.shape) != tuple(q.shape[1:]):
        raise SearchError(
            f"weights have shape {tuple(w.shape)} but the query's grid is {tuple(q.shape[1:])}: "
            "make the weights with mask_to_grid(mask, query.shape[-2:])"
        )
    if not bool((w != 0).any()):
        raise SearchError("weights are all zero: paint over the region of the query you want to rank by")
    if len(source.shape) != 4 or source.shape[1] != q.shape[0]:
        raise SearchError(
            f"source has shape {tuple(source.shape)} but the query has {q.shape[0]} channels: "
            "use a source of (N, C, H, W) features from the query's layer"
        )
    check_count(k, "k", "ask for k=1 or more matches")  # the checks `search` makes, shared
    check_count(block, "block", "leave it at the default")
    n = source.shape[0]
    excluded = check_indices(exclude if exclude is not None else [], int(n), "exclude")
    if not bool(torch.isfinite(q).all()):
        raise NonFiniteError("the query's features hold NaN or inf: the model produced non-finite values for "
                             "this image; check the image and the model, or use another layer")
    beta_q = pool(q, pooling=pooling)  # (C,)
    region = torch.einsum("chw,hw->c", surrogate(q, pooling=pooling), w)  # (C,)
    region_scores = np.zeros(n)
    similarities = np.zeros(n)
    for start in range(0, n, block):
        features = _as_float64(source[start : start + block], "(N, C, H, W)", "source block")  # (b, C, H', W')
        beta = pool(features, pooling=pooling)  # (b, C)
        norms = beta.norm(dim=1) * beta_q.norm()  # (b,)
        safe = torch.where(norms < ZERO_NORM, torch.ones_like(norms), norms)  # (b,)
        zero = norms < ZERO_NORM
        region_scores[start : start + len(beta)] = torch.where(zero, 0.0, beta @ region / safe).numpy()
        similarities[start : start + len(beta)] = torch.where(zero, 0.0, beta @ beta_q / safe).numpy()
    keep = np.ones(n, dtype=bool)
    keep[excluded] = False
    bad = np.flatnonzero(keep & ~np.isfinite(region_scores))
    if bad.size:
        raise NonFiniteError(f"the features of image(s) {bad[:NAMED].tolist()} hold NaN or inf, so they cannot be "
                             f"ranked: rebuild the source from the images, or leave them out with "
                             f"exclude={bad[:NAMED].tolist()}")
    candidates = np.flatnonzero(keep)
    order = candidates[np.argsort(-region_scores[candidates], kind="stable")][:k]
    return [RegionMatch(index=int(i), score=float(region_scores[i]), similarity=float(similarities[i])) for i in order]
