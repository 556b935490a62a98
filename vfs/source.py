"""What the library accepts: the `Source` protocol and the array types of public signatures.

A source is anything holding features `(N, C, H, W)` that slices along dim 0: a torch tensor, a
numpy array, a `zarr.Array`, a `vfs.FeatureCache` (or a `hub_caches` cache). No class hierarchy:

    def f(source: Source) -> None: ...
    f(torch.zeros(2, 8, 7, 7)); f(np.zeros((2, 8, 7, 7))); f(vfs.open_cache(path))
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Protocol, TypeAlias

import numpy as np
import torch

from vfs.errors import SearchError


class Source(Protocol):
    """Features `(N, C, H, W)`: `.shape`, and `source[start:stop]` gives rows as an array or tensor."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, key: Any, /) -> Any: ...


# A norm below this counts as zero: a feature vector (or a pooled embedding, or a map's peak) this short
# has cosine 0 with everything, and divisions by it are clamped or skipped. Post-ReLU features are often
# exactly zero; any non-zero float16 vector is far longer (the smallest float16 above 0 is about 6e-8).
ZERO_NORM = 1e-12

# A float array or tensor: a query (C, H, W), weights (H, W), features (N, C, H, W).
Array: TypeAlias = np.ndarray | torch.Tensor
# Image indices: a list, a numpy array or a tensor of integers.
Indices: TypeAlias = Sequence[int] | np.ndarray | torch.Tensor
# Where the math runs: "cpu", "cuda", "cuda:1" or a torch.device; None: the query's device.
Device: TypeAlias = str | torch.device | None


def as_tensor(values: Any, *, dims: str | None = None, name: str = "features", hint: str = "") -> torch.Tensor:
    """`values` (a tensor, a numpy array, a slice of a zarr array or of a cache) as a tensor, without a copy:
    a tensor keeps its device, dtype and strides. `dims` (e.g. "(N, C, H, W)") checks the number of
    dimensions; a mismatch is a SearchError naming `name`, followed by `hint` (what to do)."""
    if isinstance(values, torch.Tensor):
        tensor = values.detach()
    else:
        with warnings.catch_warnings():  # a read-only array is only read: callers copy before writing
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            tensor = torch.from_numpy(np.asarray(values))
    if dims is not None and tensor.ndim != dims.count(",") + 1:
        raise SearchError(f"{name} must be {dims.count(',') + 1}-D {dims}, got shape {tuple(tensor.shape)}"
                          + (f": {hint}" if hint else ""))
    return tensor
