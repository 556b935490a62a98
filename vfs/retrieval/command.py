"""`python -m vfs search CACHE ...`: search a feature cache from the command line.

    python -m vfs search caches/fmnist --index 12 --box 4,4,20,20 -k 5
    python -m vfs search caches/fmnist --image shoe.png --mask shoe-mask.png --json
    python -m vfs search caches/imagenet --index 3 --scheduler tcp://10.0.0.5:8786
    python -m vfs search caches/imagenet --index 3 --candidates 1000   # two-stage (needs index-coarse)
    python -m vfs search --query chelsea --box 40,120,200,300      # no cache: the bundled photos (vfs.demo)

The query is an image of the cache (`--index`: its stored features, no model needed) or an image
file (`--image`: its features are extracted with the cache's model, layer and preprocessing). The
region is a pixel box of that image (`--box top,left,bottom,right`, default the whole image) or a
mask image of the same size (`--mask`: painted where the pixel, or the alpha of an RGBA PNG, is
non-zero). With `--scheduler` (or the environment variable VFS_SCHEDULER) the cache is loaded
into the workers of that Dask cluster and searched there, with the same answer. With
`--candidates M` the search is two-stage (`vfs.search_two_stage`, over the coarse index that
`python -m vfs index-coarse CACHE` built): exact scores of the best of M images the index picks,
labelled approximate in the output and the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vfs.errors import MaskError, SearchError


def search_command(argv: list[str]) -> int:
    """Search the cache named by the first argument (a folder or URL); see the module docstring."""
    return _search_cache(_parser().parse_args(argv))


def _parser() -> argparse.ArgumentParser:
    from vfs.cluster import SCHEDULER_ENV

    parser = argparse.ArgumentParser(prog="python -m vfs search", description=__doc__.splitlines()[0])
    parser.add_argument("cache", help="cache folder or fsspec URL (built by `python -m vfs index`)")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--index", type=int, help="query with image INDEX of the cache (its stored features)")
    query.add_argument("--image", type=Path, help="query with an image file (features extracted with the cache's model)")
    region = parser.add_mutually_exclusive_group()
    region.add_argument("--box", help="region top,left,bottom,right in pixels of the query image (default: all of it)")
    region.add_argument("--mask", type=Path, help="mask image of the query's size: painted where non-zero (or alpha > 0)")
    parser.add_argument("-k", "--k", type=int, default=10, help="how many matches (default 10)")
    parser.add_argument("--per-image", type=int, default=1, help="windows per image at most (default 1)")
    parser.add_argument("--exclude", default="", help="comma-separated image indices never returned")
    parser.add_argument("--include-query", action="store_true", help="let the --index image itself be matched")
    parser.add_argument("--candidates", type=int, metavar="M",
                        help="two-stage search: re-score the M images a coarse index picks (approximate; "
                             "needs `python -m vfs index-coarse CACHE`; default: exact search of every image)")
    parser.add_argument("--json", action="store_true", help="print the matches as JSON")
    parser.add_argument("--scheduler", default=os.environ.get(SCHEDULER_ENV) or None,
                        help=f"Dask scheduler address to search on (env {SCHEDULER_ENV}; default: this process)")
    return parser


def _search_cache(args: argparse.Namespace) -> int:
    from vfs.cache.reader import open_cache
    from vfs.masks import box_to_grid, mask_to_grid
    from vfs.retrieval.window import search

    cache: Any = open_cache(args.cache, in_memory=False if args.scheduler else None)
    meta = cache.meta
    preprocess = meta.make_preprocess()
    if args.index is not None:
        if not 0 <= args.index < cache.shape[0]:
            raise SearchError(f"--index {args.index} is outside the cache's {cache.shape[0]} images: "
                              f"pass 0 to {cache.shape[0] - 1}")
        query = np.asarray(cache[args.index], dtype=np.float32)  # (C, H, W)
        height, width = (int(v) for v in cache.image_sizes[args.index])  # the original's
        size = (height, width)
    else:
        query, size = _extract(args.image, meta, preprocess)
    grid = (int(cache.shape[2]), int(cache.shape[3]))
    if args.mask is not None:
        mask = _read_mask(args.mask, size)
        weights = mask_to_grid(mask, grid, preprocess=preprocess)  # (h, w)
    else:
        box = parse_box(args.box) if args.box else (0.0, 0.0, float(size[0]), float(size[1]))
        weights = box_to_grid(box, size, grid, preprocess=preprocess)  # (h, w)
    exclude = _parse_indices(args.exclude)
    if args.index is not None and not args.include_query:
        exclude.append(args.index)
    if args.candidates is not None and args.scheduler:
        raise SearchError("--candidates (two-stage search) and --scheduler (exact search on a cluster) do not go "
                          "together: pass one of them")
    if args.scheduler:
        from vfs.retrieval.cluster import open_cluster_cache

        started = time.perf_counter()
        cache = open_cluster_cache(args.cache, scheduler=args.scheduler)
        print(f"loaded {cache.shape[0]:,} images into {len(cache.place())} workers of {args.scheduler} "
              f"in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    started = time.perf_counter()
    weights = np.asarray(weights, np.float32)
    approximate = None
    if args.candidates is not None:
        from vfs.cache.coarse import open_coarse_index
        from vfs.retrieval.two_stage import search_two_stage

        index = open_coarse_index(cache)
        started = time.perf_counter()  # the index opens once per process: time the search alone
        result = search_two_stage(query, weights, cache, index=index, candidates=args.candidates, k=args.k,
                                  exclude=exclude, per_image=args.per_image)
        matches, approximate = result.matches, result.label
    else:
        matches = search(query, weights, cache, k=args.k, exclude=exclude, per_image=args.per_image)
    seconds = time.perf_counter() - started
    rows = [_row(rank, match, cache, grid, preprocess) for rank, match in enumerate(matches, start=1)]
    if args.json:
        print(json.dumps({"cache": str(args.cache), "model": meta.model, "layer": meta.layer,
                          "query": {"index": args.index, "image": None if args.image is None else str(args.image)},
                          "cells": int((np.asarray(weights) > 0).sum()), "seconds": round(seconds, 4),
                          "approximate": approximate is not None, "candidates": args.candidates,
                          "mode": approximate or "exact", "matches": rows}, indent=1))
        return 0
    print(f"{meta.model} {meta.layer}, {cache.shape[0]:,} images: {int((np.asarray(weights) > 0).sum())} of "
          f"{grid[0]}x{grid[1]} cells searched in {seconds:.3f} s")
    if approximate:
        print(approximate)
    print(f"{'rank':>4} {'index':>8}  {'score':>7}  {'label':<14} {'window (row,col,h,w)':<21} box (top,left,bottom,right)  id")
    for row in rows:
        window = f"({row['row']},{row['col']},{row['height']},{row['width']})"
        corners = "(" + ",".join(f"{v:.0f}" for v in row["box"]) + ")"
        print(f"{row['rank']:>4} {row['index']:>8}  {row['score']:7.4f}  {row['label']:<14} {window:<21} "
              f"{corners:<28} {row['id']}")
    return 0


def _row(rank: int, match: Any, cache: Any, grid: tuple[int, int], preprocess: Any) -> dict[str, Any]:
    from vfs.masks import window_to_box

    label = int(cache.labels[match.index])
    height, width = (int(v) for v in cache.image_sizes[match.index])
    box = window_to_box(match.row, match.col, match.height, match.width, grid, (height, width), preprocess=preprocess)
    return {"rank": rank, "index": match.index, "score": match.score, "row": match.row, "col": match.col,
            "height": match.height, "width": match.width, "id": cache.ids[match.index],
            "label": cache.label_names[label] if 0 <= label < len(cache.label_names) else "",
            "box": [round(float(v), 1) for v in box]}


def _extract(path: Path, meta: Any, preprocess: Any) -> tuple[np.ndarray, tuple[int, int]]:
    """(C, H, W) float32 features of an image file through the cache's model and layer, and its size."""
    from vfs.errors import CacheMismatchError, DatasetError
    from vfs.models.features import FeatureExtractor
    from vfs.models.loading import load_model

    try:
        image = Image.open(path).convert("RGB")
    except OSError as error:
        raise DatasetError(f"cannot read the query image {path} ({error}): pass a PNG or JPEG file") from error
    loaded = load_model(meta.model)
    if loaded.weights_id != meta.weights_id:
        raise CacheMismatchError(f"the cache was built with {meta.model} weights {meta.weights_id!r} but this "
                                 f"machine loads {loaded.weights_id!r}: query with --index, or rebuild the cache")
    features = FeatureExtractor(loaded.module, meta.layer, preprocess=preprocess)([image])  # (1, C, H, W)
    return np.asarray(features[0], dtype=np.float32), (image.height, image.width)


def _read_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: painted where the pixel (or an RGBA PNG's alpha) is non-zero."""
    try:
        image = Image.open(path)
        image.load()
    except OSError as error:
        raise MaskError(f"cannot read the mask {path} ({error}): pass a PNG painted where the region is") from error
    values = np.asarray(image)
    mask = values[..., 3] > 0 if image.mode in ("RGBA", "LA") else np.asarray(image.convert("L")) > 0
    if mask.shape != size:
        raise MaskError(f"the mask {path} is {mask.shape[0]}x{mask.shape[1]} pixels but the query image is "
                        f"{size[0]}x{size[1]}: paint the mask over the query image at its own size")
    return mask


def parse_box(text: str) -> tuple[float, float, float, float]:
    """`--box` "top,left,bottom,right" -> four floats, or a MaskError saying the form."""
    try:
        values = [float(part) for part in text.replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise MaskError(f"--box {text!r} is not four numbers: pass top,left,bottom,right in pixels, e.g. 4,4,20,20")
    top, left, bottom, right = values
    return top, left, bottom, right


def _parse_indices(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise SearchError(f"--exclude {text!r} is not comma-separated image indices, e.g. --exclude 3,17") from None
