"""The checks at the entry of a search (and of `rerank_region`): inputs a caller can get wrong become
project errors that say what to pass; features that hold NaN or inf are named, never ranked."""

from __future__ import annotations

import numpy as np
import torch

from vfs.errors import NAMED, MaskError, NonFiniteError, SearchError
from vfs.retrieval.kernels import is_channels_last
from vfs.source import Indices, Source


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


def check_count(value: object, name: str, hint: str) -> None:
    """A positive int (not a bool, not a float) or a SearchError saying what to pass."""
    if not is_positive_int(value):
        raise SearchError(f"{name} must be a positive integer, got {value!r}: {hint}")


def check_grid(query_grid: tuple[int, ...], grid: tuple[int, int], source: Source) -> None:
    """The query's (H, W) must be the source's: features of another input size describe other regions."""
    if tuple(query_grid) == tuple(grid):
        return
    meta = getattr(source, "meta", None)
    built = f" (built at {meta.input_size} px input)" if meta is not None else ""
    size = f" at {meta.input_size} px, e.g. with cache.meta.make_preprocess()," if meta is not None else ""
    raise SearchError(f"the query's feature grid is {query_grid[0]}x{query_grid[1]} but the source's is "
                      f"{grid[0]}x{grid[1]}{built}: extract the query{size} the way the source was extracted, "
                      "or pass any_grid=True to compare grids of different sizes on purpose")


def check_query_region(query_box: torch.Tensor, weights_box: torch.Tensor) -> None:
    """The weighted query region (C, h, w) must be finite and not all zero: else no score means anything."""
    weighted = query_box * weights_box  # (C, h, w)
    if not bool(torch.isfinite(weighted).all()):
        raise NonFiniteError("the query's features hold NaN or inf under the mask: the model produced "
                             "non-finite values for this image; check the image and the model, or use "
                             "another layer")
    if not bool((weighted != 0).any()):
        raise MaskError("the query's features are all zero under the mask (no activation at this layer), so "
                        "every window would score 0: paint a larger region, or search at another layer")


def nonfinite_rows(features: torch.Tensor, norms: torch.Tensor | None, scores: torch.Tensor) -> np.ndarray:
    """(n,) bool: images of a scored block whose features hold NaN or inf.

    Scores alone do not show them all: the fused kernel widens float16 inf to a finite number and
    scores a window of NaN magnitude 0. So the squared norms are checked when the source gives them
    (a cache: its build refused non-finite features, this is a few bytes per image), else each
    image's sum (one more read of the block, without a copy): NaN or inf anywhere makes it
    non-finite; a sum that merely overflows is cleared by the image's exact min and max.
    """
    bad = ~torch.isfinite(scores).all(dim=1)  # (n,)
    if norms is not None:
        bad |= ~torch.isfinite(norms.reshape(len(norms), -1)).all(dim=1).to(bad.device)  # (n,)
        return bad.cpu().numpy()
    stored = features.permute(0, 2, 3, 1) if is_channels_last(features) else features  # a view
    flat = stored.reshape(len(features), -1)  # (n, C*H*W)
    suspect = ~torch.isfinite(flat.sum(dim=1))  # (n,)
    if bool(suspect.any()):
        low, high = torch.aminmax(flat[suspect], dim=1)  # (m,) each; NaN propagates
        confirmed = torch.zeros_like(suspect)
        confirmed[suspect] = ~(torch.isfinite(low) & torch.isfinite(high))
        bad |= confirmed.to(bad.device)
    return bad.cpu().numpy()


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


def check_finite(indices: np.ndarray, features: torch.Tensor, norms: torch.Tensor | None, scores: torch.Tensor,
                 ignore: np.ndarray | None) -> None:
    """A NonFiniteError naming the images of `indices` (not in `ignore`) whose features hold NaN or inf."""
    bad = nonfinite_rows(features, norms, scores)  # (n,)
    if ignore is not None and ignore.size:
        bad &= ~np.isin(indices, ignore)
    if bad.any():
        raise NonFiniteError(
            f"the features of image(s) {indices[bad][:NAMED].tolist()} hold NaN or inf, so they cannot be "
            "ranked: rebuild the source from the images (a cache build refuses non-finite features), or "
            f"leave them out with exclude={indices[bad][:NAMED].tolist()}")
