"""Checked by mypy (tests/test_types.py), never run: what users pass type-checks against vfs's signatures.

A tensor, a numpy array, a zarr.Array and a FeatureCache are all a `vfs.Source`; `search` takes
lists, arrays or tensors for indices, and a device as a string or a torch.device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import zarr

import vfs


def sources(cache: vfs.FeatureCache, array: zarr.Array[Any]) -> list[vfs.Source]:
    return [torch.zeros(2, 8, 7, 7), np.zeros((2, 8, 7, 7), np.float32), array, cache]


def searches(source: vfs.Source) -> list[vfs.Match]:
    query, weights = np.zeros((8, 7, 7), np.float32), torch.ones(7, 7)
    matches = vfs.search(query, weights, source, k=3, exclude=[0], subset=np.arange(2), device="cpu")
    matches += vfs.search(torch.from_numpy(query), weights, source, exclude=torch.tensor([1]),
                          device=torch.device("cpu"))
    best: vfs.BestWindows = vfs.best_windows(query, weights, source, subset=range(2))
    return matches + [vfs.Match(index=int(best.indices[0]), score=float(best.scores[0]), row=0, col=0,
                                height=best.height, width=best.width)]


def errors() -> tuple[type[vfs.VFSError], ...]:
    return vfs.VFSError, vfs.SearchError, vfs.MaskError, vfs.CacheError
