"""Visual Feature Search: find the dataset regions whose features are most similar to a painted one.

The public surface, imported lazily so that `import vfs` stays cheap (torch loads on first use):

    model = vfs.load_model("efficientnet_lite0")
    extractor = vfs.FeatureExtractor(model.module, "blocks.5", preprocess=model.preprocess)
    features = extractor(images)                                  # (N, C, H, W)
    weights = vfs.mask_to_grid(mask, features.shape[-2:], preprocess=model.preprocess)
    matches = vfs.search(features[0], weights, features, k=10)    # best first
    source = vfs.prepare(features)                                # laid out once: every query at cache speed

    cache = vfs.open_cache("caches/big")                          # after `python -m vfs index-coarse caches/big`
    result = vfs.search_two_stage(cache[0], weights, cache, candidates=1000)  # approximate: exact scores of M

Analysis tools live in submodules: `vfs.analysis.overlays`, `vfs.analysis.decompose`, `vfs.analysis.metrics`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from vfs.errors import CacheBusyError as CacheBusyError
from vfs.errors import CacheCorruptError as CacheCorruptError
from vfs.errors import CacheError as CacheError
from vfs.errors import CacheIncompleteError as CacheIncompleteError
from vfs.errors import CacheMismatchError as CacheMismatchError
from vfs.errors import ClusterError as ClusterError
from vfs.errors import DatasetError as DatasetError
from vfs.errors import DeviceError as DeviceError
from vfs.errors import LayerError as LayerError
from vfs.errors import MaskError as MaskError
from vfs.errors import ModelError as ModelError
from vfs.errors import NonFiniteError as NonFiniteError
from vfs.errors import OptionError as OptionError
from vfs.errors import SearchError as SearchError
from vfs.errors import VFSError as VFSError

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "Preprocess": "vfs.models.preprocess",
    "LoadedModel": "vfs.models.loading",
    "LayerInfo": "vfs.models.loading",
    "load_model": "vfs.models.loading",
    "FeatureExtractor": "vfs.models.features",
    "list_layers": "vfs.models.features",
    "layer_shapes": "vfs.models.features",
    "mask_to_grid": "vfs.masks",
    "box_to_grid": "vfs.masks",
    "window_to_box": "vfs.masks",
    "Source": "vfs.source",
    "Match": "vfs.retrieval.window",
    "BestWindows": "vfs.retrieval.window",
    "search": "vfs.retrieval.window",
    "best_windows": "vfs.retrieval.window",
    "prepare": "vfs.retrieval.prepared",
    "PreparedSource": "vfs.retrieval.prepared",
    "ImageItem": "vfs.datasets",
    "ImageDataset": "vfs.datasets",
    "ArrayDataset": "vfs.datasets",
    "FolderDataset": "vfs.datasets",
    "from_torchvision": "vfs.datasets",
    "open_dataset": "vfs.datasets",
    "FeatureCache": "vfs.cache.reader",
    "CacheMeta": "vfs.cache.format",
    "open_cache": "vfs.cache.reader",
    "build_cache": "vfs.cache.build",
    "ClusterCache": "vfs.retrieval.cluster",
    "open_cluster_cache": "vfs.retrieval.cluster",
    "CoarseIndex": "vfs.cache.coarse",
    "open_coarse_index": "vfs.cache.coarse",
    "build_coarse_index": "vfs.cache.coarse",
    "TwoStageResult": "vfs.retrieval.two_stage",
    "search_two_stage": "vfs.retrieval.two_stage",
}

__all__ = sorted(
    [*_LAZY]
    + [
        "CacheBusyError",
        "CacheCorruptError",
        "CacheError",
        "CacheIncompleteError",
        "CacheMismatchError",
        "ClusterError",
        "DatasetError",
        "DeviceError",
        "LayerError",
        "MaskError",
        "ModelError",
        "NonFiniteError",
        "OptionError",
        "SearchError",
        "VFSError",
    ]
)
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vfs' has no attribute {name!r}; public names: {', '.join(__all__)}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs (`x as x`: an explicit re-export); at run time names load on first use
    from vfs.cache.build import build_cache as build_cache
    from vfs.cache.coarse import CoarseIndex as CoarseIndex
    from vfs.cache.coarse import build_coarse_index as build_coarse_index
    from vfs.cache.coarse import open_coarse_index as open_coarse_index
    from vfs.cache.format import CacheMeta as CacheMeta
    from vfs.cache.reader import FeatureCache as FeatureCache
    from vfs.cache.reader import open_cache as open_cache
    from vfs.datasets import ArrayDataset as ArrayDataset
    from vfs.datasets import FolderDataset as FolderDataset
    from vfs.datasets import ImageDataset as ImageDataset
    from vfs.datasets import ImageItem as ImageItem
    from vfs.datasets import from_torchvision as from_torchvision
    from vfs.datasets import open_dataset as open_dataset
    from vfs.masks import box_to_grid as box_to_grid
    from vfs.masks import mask_to_grid as mask_to_grid
    from vfs.masks import window_to_box as window_to_box
    from vfs.models.features import FeatureExtractor as FeatureExtractor
    from vfs.models.features import layer_shapes as layer_shapes
    from vfs.models.features import list_layers as list_layers
    from vfs.models.loading import LayerInfo as LayerInfo
    from vfs.models.loading import LoadedModel as LoadedModel
    from vfs.models.loading import load_model as load_model
    from vfs.models.preprocess import Preprocess as Preprocess
    from vfs.retrieval.cluster import ClusterCache as ClusterCache
    from vfs.retrieval.cluster import open_cluster_cache as open_cluster_cache
    from vfs.retrieval.prepared import PreparedSource as PreparedSource
    from vfs.retrieval.prepared import prepare as prepare
    from vfs.retrieval.two_stage import TwoStageResult as TwoStageResult
    from vfs.retrieval.two_stage import search_two_stage as search_two_stage
    from vfs.retrieval.window import BestWindows as BestWindows
    from vfs.retrieval.window import Match as Match
    from vfs.retrieval.window import best_windows as best_windows
    from vfs.retrieval.window import search as search
    from vfs.source import Source as Source
