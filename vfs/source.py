"""What the library accepts: the `Source` protocol and the array types of public signatures.

A source is anything holding features `(N, C, H, W)` that slices along dim 0: a torch tensor, a
numpy array, a `zarr.Array`, a `vfs.FeatureCache` (or a `hub_caches` cache). No class hierarchy:

    def f(source: Source) -> None: ...
    f(torch.zeros(2, 8, 7, 7)); f(np.zeros((2, 8, 7, 7))); f(vfs.open_cache(path))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeAlias

import numpy as np
import torch


class Source(Protocol):
    """Features `(N, C, H, W)`: `.shape`, and `source[start:stop]` gives rows as an array or tensor."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, key: Any, /) -> Any: ...


# A float array or tensor: a query (C, H, W), weights (H, W), features (N, C, H, W).
Array: TypeAlias = np.ndarray | torch.Tensor
# Image indices: a list, a numpy array or a tensor of integers.
Indices: TypeAlias = Sequence[int] | np.ndarray | torch.Tensor
# Where the math runs: "cpu", "cuda", "cuda:1" or a torch.device; None: the query's device.
Device: TypeAlias = str | torch.device | None
