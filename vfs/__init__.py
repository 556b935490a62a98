"""Visual Feature Search: find the dataset regions whose features are most similar to a painted one.

The public surface, imported lazily so that `import vfs` stays cheap (torch loads on first use):

    model = vfs.load_model("efficientnet_lite0")
    extractor = vfs.FeatureExtractor(model.module, "blocks.5", preprocess=model.preprocess)
    features = extractor(images)                                  # (N, C, H, W)
    weights = vfs.mask_to_grid(mask, features.shape[-2:], preprocess=model.preprocess)
    matches = vfs.search(features[0], weights, features, k=10)    # best first

Analysis tools live in submodules: `vfs.analysis.overlays`, `vfs.analysis.decompose`, `vfs.analysis.metrics`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from vfs.errors import (
    CacheCorruptError,
    CacheError,
    CacheIncompleteError,
    CacheMismatchError,
    DatasetError,
    LayerError,
    MaskError,
    ModelError,
    SearchError,
    VFSError,
)

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "Preprocess": "vfs.models.preprocess",
    "LoadedModel": "vfs.models.loading",
    "load_model": "vfs.models.loading",
    "FeatureExtractor": "vfs.models.features",
    "list_layers": "vfs.models.features",
    "layer_shapes": "vfs.models.features",
    "mask_to_grid": "vfs.masks",
    "box_to_grid": "vfs.masks",
    "window_to_box": "vfs.masks",
    "Match": "vfs.retrieval.window",
    "BestWindows": "vfs.retrieval.window",
    "search": "vfs.retrieval.window",
    "best_windows": "vfs.retrieval.window",
    "ImageItem": "vfs.datasets",
    "open_dataset": "vfs.datasets",
    "FeatureCache": "vfs.cache.reader",
    "CacheMeta": "vfs.cache.format",
    "open_cache": "vfs.cache.reader",
    "build_cache": "vfs.cache.build",
}

__all__ = sorted(
    [*_LAZY]
    + [
        "CacheCorruptError",
        "CacheError",
        "CacheIncompleteError",
        "CacheMismatchError",
        "DatasetError",
        "LayerError",
        "MaskError",
        "ModelError",
        "SearchError",
        "VFSError",
    ]
)
__version__ = "0.1.0"


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vfs' has no attribute {name!r}; public names: {', '.join(__all__)}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs; at run time names load on first use
    from vfs.cache.build import build_cache
    from vfs.cache.format import CacheMeta
    from vfs.cache.reader import FeatureCache, open_cache
    from vfs.datasets import ImageItem, open_dataset
    from vfs.masks import box_to_grid, mask_to_grid, window_to_box
    from vfs.models.features import FeatureExtractor, layer_shapes, list_layers
    from vfs.models.loading import LoadedModel, load_model
    from vfs.models.preprocess import Preprocess
    from vfs.retrieval.window import BestWindows, Match, best_windows, search
