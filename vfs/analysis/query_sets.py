"""Where an experiment's queries come from: images of the searched cache, of another cache of the same
model and layer, or of any dataset spec (their features extracted now with the cache's model).

    --queries 500                    500 images of the searched cache (each left out of its own results)
    --queries OTHER_CACHE [--count]  images of another cache (VFS v1: ImageNet test vs validation)
    --queries SPEC [--count N]       images of a dataset (`fashion-mnist:test`, `hf:...`, `folder:...`)

Labels of another set are matched to the searched cache's labels by name. A spec's features are
extracted with the model of `--model/--module/--weights` when its weights are the cache's, else
with the cache's own model loaded by name (or by its `pkg.module:factory`); a model whose weights
differ from the cache's is refused, since its features would not be comparable.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from vfs.errors import ModelError, VFSError
from vfs.source import Source

if TYPE_CHECKING:
    from vfs.cache.format import CacheMeta
    from vfs.cache.reader import FeatureCache
    from vfs.models.loading import LoadedModel
    from vfs.models.preprocess import Preprocess


@dataclass(frozen=True)
class QuerySet:
    """The query images of an experiment, with what the metrics need to know about them."""

    name: str  # "the searched cache", a cache path or a dataset spec
    features: Source  # (M, C, H, W) source of query features: the searched cache, another cache, or an array
    indices: np.ndarray  # (Q,) int64, the chosen queries: indices into `features`
    labels: np.ndarray  # (M,) int64, in the searched cache's label numbering; -2 for a name it lacks
    boxes: list[np.ndarray] | None  # M entries of (k, 4) boxes (top, left, bottom, right), original pixels; None if none
    image_sizes: np.ndarray  # (M, 2) int, original (height, width)
    domains: list[str] | None  # M domains, None if the set has none
    own: bool  # the queries are images of the searched cache (each excluded from its own results)

    def options(self, *, use_boxes: bool, preprocess: Preprocess | None) -> dict[str, Any]:
        """Keyword arguments of the `vfs.analysis.metrics` functions for these queries."""
        found: dict[str, Any] = {} if self.own else {"query_source": self.features}
        if use_boxes:
            boxes = cast("list[np.ndarray]", self.boxes)  # a set opened with need_boxes has them (`_chosen`)
            found |= {"boxes": [boxes[q][0] for q in self.indices], "image_sizes": self.image_sizes,
                      "preprocess": preprocess}
        return found


def choose_queries(count: int, queries: int, *, seed: int) -> np.ndarray:
    """`queries` distinct image indices out of `count`, seeded and sorted (all of them if 0 or more)."""
    if queries <= 0 or queries >= count:
        return np.arange(count, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(count, size=queries, replace=False)).astype(np.int64)


def open_query_set(given: str, cache: FeatureCache, *, count: int, seed: int, need_boxes: bool,
                   model_args: argparse.Namespace | None = None) -> QuerySet:
    """The queries `given` (an image count, a cache path or a dataset spec) for searching `cache`."""
    if given.strip().isdigit():
        return _chosen(QuerySet("the searched cache", cache, np.zeros(0, np.int64), cache.labels, cache.boxes,
                                cache.image_sizes, cache.domains, True), int(given), seed, need_boxes)
    if (Path(given).expanduser() / "zarr.json").is_file():
        from vfs.cache.reader import open_cache

        other = open_cache(given)
        _check_same_features(other.meta, cache.meta, given)
        labels = _relabel(other.labels, other.label_names, cache.label_names)
        return _chosen(QuerySet(given, other, np.zeros(0, np.int64), labels, other.boxes, other.image_sizes,
                                other.domains, False), count, seed, need_boxes)
    return _from_spec(given, cache, count=count, seed=seed, need_boxes=need_boxes, model_args=model_args)


def _chosen(found: QuerySet, count: int, seed: int, need_boxes: bool) -> QuerySet:
    """`found` with `count` of its images chosen (0 = all), only images with a box if `need_boxes`."""
    candidates = np.arange(len(found.labels), dtype=np.int64)
    if need_boxes:
        if found.boxes is None:
            raise VFSError(f"the queries ({found.name}) have no boxes: drop --boxes, or take queries from a "
                           "dataset with boxes")
        candidates = candidates[[len(found.boxes[i]) > 0 for i in candidates]]
        if len(candidates) == 0:
            raise VFSError(f"no query image of {found.name} has a box: take queries from a dataset with boxes")
    indices = candidates[choose_queries(len(candidates), count, seed=seed)]
    return QuerySet(found.name, found.features, indices, found.labels, found.boxes, found.image_sizes,
                    found.domains, found.own)


def _from_spec(spec: str, cache: FeatureCache, *, count: int, seed: int, need_boxes: bool,
               model_args: argparse.Namespace | None) -> QuerySet:
    """Queries from a dataset spec: choose them, then extract only their features with the cache's model."""
    import torch

    from vfs.datasets import open_dataset
    from vfs.models.features import FeatureExtractor

    data = open_dataset(spec)
    items = [data[i] for i in range(len(data))] if need_boxes else None
    pool = np.arange(len(data), dtype=np.int64)
    if items is not None:  # need_boxes: keep the images that have a box
        pool = pool[[item.boxes is not None and len(item.boxes) > 0 for item in items]]
        if len(pool) == 0:
            raise VFSError(f"no image of {spec} has a box: take queries from a dataset with boxes")
    chosen = pool[choose_queries(len(pool), count, seed=seed)]
    picked = [items[i] for i in chosen] if items is not None else [data[int(i)] for i in chosen]
    model = model_for_cache(cache.meta, model_args)
    extractor = FeatureExtractor(model.module, cache.meta.layer, preprocess=cache.meta.make_preprocess())
    extracted = extractor([item.image for item in picked])  # (Q, C, H, W) float32
    features = extracted.to(getattr(torch, cache.meta.dtype)).float().numpy()  # rounded as the cache stores them
    labels = _relabel(np.array([item.label for item in picked], np.int64), data.label_names, cache.label_names)
    boxes = [np.zeros((0, 4), np.float32) if item.boxes is None else item.boxes for item in picked]
    sizes = np.array([[item.image.height, item.image.width] for item in picked], dtype=np.int64)
    domains = [item.domain or "" for item in picked] if data.has_domains else None
    return QuerySet(spec, features, np.arange(len(picked), dtype=np.int64), labels,
                    boxes if data.has_boxes else None, sizes, domains, False)


def model_for_cache(meta: CacheMeta, model_args: argparse.Namespace | None) -> LoadedModel:
    """The model that built the cache of `meta`: the command line's if its weights match, else the
    cache's own model by name (or `pkg.module:factory`) with its usual weights."""
    from vfs.models.arguments import load_factory, model_from_arguments
    from vfs.models.loading import load_model

    tried: list[str] = []
    if model_args is not None and (model_args.model is not None or model_args.module is not None):
        loaded = model_from_arguments(model_args)
        if loaded.weights_id == meta.weights_id:
            return loaded
        tried.append(f"the command line's model has weights {loaded.weights_id}")
    try:
        if ":" in meta.model and "." in meta.model.partition(":")[0]:
            loaded = load_model(meta.model, module=load_factory(meta.model)())
        else:
            loaded = load_model(meta.model)
        if loaded.weights_id == meta.weights_id:
            return loaded
        tried.append(f"{meta.model} loads weights {loaded.weights_id}")
    except ModelError as error:
        tried.append(str(error))
    raise ModelError(f"cannot rebuild the model of the cache ({meta.model}, layer {meta.layer}, weights "
                     f"{meta.weights_id}) to extract the query features: {'; '.join(tried)}. Pass the same "
                     "--model/--module and --weights the cache was built with, or index the queries into a "
                     "cache with that model and pass its path")


def _check_same_features(meta: CacheMeta, searched: CacheMeta, where: str) -> None:
    keys = ("model", "weights_id", "layer", "input_size", "grid", "channels", "preprocess")
    differ = [f"{k}: {getattr(meta, k)!r} vs {getattr(searched, k)!r}" for k in keys
              if getattr(meta, k) != getattr(searched, k)]
    if differ:
        raise VFSError(f"the query cache {where} was built differently from the searched cache ({'; '.join(differ)}): "
                       "index both with the same model, weights, layer and input size")


def _relabel(labels: np.ndarray, names: Sequence[str], target_names: Sequence[str]) -> np.ndarray:
    """Labels of another set renumbered into `target_names` by name (-2 for a name not there, -1 unknown)."""
    if list(names) == list(target_names):
        return np.asarray(labels, np.int64)
    lookup = {name: i for i, name in enumerate(target_names)}
    mapped = [lookup.get(names[v], -2) if 0 <= v < len(names) else -1 for v in np.asarray(labels)]
    return np.array(mapped, dtype=np.int64)
