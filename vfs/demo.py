"""`python -m vfs search`: search scikit-image's bundled photos from the command line (no cache needed).

With a cache as first argument the command searches that cache instead (`vfs.retrieval.command`).

    python -m vfs search --query chelsea --box 40,120,200,300
    python -m vfs search --query coffee --layer blocks.5 --k 3

Loads a model (the offline `efficientnet_lite0` by default), extracts one layer's features of the
bundled photos, maps the query box onto the query photo's feature grid and prints the best windows
of the other photos: rank, photo, cosine score, window (row, col, height, width in cells) and its
pixel box (top, left, bottom, right) on the original photo.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vfs.errors import DatasetError, ModelError, positive_int


def search_command(argv: list[str]) -> int:
    """`python -m vfs search`: a cache when the first argument names one (`vfs.retrieval.command`), else
    the bundled photos: parse `argv`, run the search, print the matches; returns 0 (bad input raises a VFSError,
    which `python -m vfs` prints and exits with `vfs.cli.LIBRARY_ERROR`)."""
    if argv and not argv[0].startswith("-"):
        from vfs.retrieval.command import search_command as cache_command

        return cache_command(argv)
    from vfs.models.arguments import add_model_arguments

    parser = argparse.ArgumentParser(
        prog="python -m vfs search",
        description="Search scikit-image's bundled photos for regions like a box on a query photo.",
    )
    parser.add_argument("--query", default="chelsea", help="query photo name (default chelsea; see --list)")
    parser.add_argument("--box", default=None,
                        help="query region top,left,bottom,right in pixels of the query photo (default: the whole photo)")
    add_model_arguments(parser)
    parser.add_argument("--layer", default=None, help="layer name (default: the model's first suggested layer)")
    parser.add_argument("--k", type=positive_int, default=5, help="how many matches to print (default 5)")
    parser.add_argument("--include-query", action="store_true", help="let the query photo itself be matched")
    parser.add_argument("--list", action="store_true", help="list the photo names and exit")
    return _run(parser.parse_args(argv))


def _run(args: argparse.Namespace) -> int:
    from vfs.datasets import skimage_photos
    from vfs.masks import box_to_grid, window_to_box
    from vfs.models.arguments import model_from_arguments
    from vfs.models.features import FeatureExtractor
    from vfs.retrieval.command import parse_box
    from vfs.retrieval.window import search

    photos = skimage_photos()
    items = [photos[index] for index in range(len(photos))]
    names = [item.id for item in items]
    if args.list:
        print("\n".join(names))
        return 0
    if args.query not in names:
        raise DatasetError(f"no photo {args.query!r}; pick one of: {', '.join(names)}")
    query_index = names.index(args.query)
    query_image = items[query_index].image
    size = (query_image.height, query_image.width)
    box = parse_box(args.box) if args.box else (0.0, 0.0, float(size[0]), float(size[1]))

    loaded = model_from_arguments(args)
    layer = args.layer or next(iter(loaded.layers), None)
    if layer is None:
        raise ModelError(f"{loaded.name} has no suggested layer: pass --layer (see python -m vfs layers {loaded.name})")
    box_to_grid(box, size, (loaded.preprocess.crop,) * 2, preprocess=loaded.preprocess)  # a bad box fails before the work
    print(f"{loaded.name} ({loaded.weights_id}), layer {layer}: extracting {len(items)} photos ...", flush=True)
    features = FeatureExtractor(loaded.module, layer, preprocess=loaded.preprocess)([item.image for item in items])
    grid = (features.shape[-2], features.shape[-1])  # (h, w)
    weights = box_to_grid(box, size, grid, preprocess=loaded.preprocess)  # (h, w)
    exclude = None if args.include_query else [query_index]
    matches = search(features[query_index], weights, features, k=args.k, exclude=exclude)

    print(f"query {args.query} {size[0]}x{size[1]}, box {_fmt(box)} -> {int((weights > 0).sum())} of "
          f"{grid[0]}x{grid[1]} feature cells")
    print(f"{'rank':>4}  {'photo':<22} {'score':>6}  {'window (row,col,h,w)':<21} box (top,left,bottom,right)")
    for rank, match in enumerate(matches, start=1):
        image = items[match.index].image
        pixels = window_to_box(match.row, match.col, match.height, match.width, grid, (image.height, image.width),
                               preprocess=loaded.preprocess)
        window = f"({match.row},{match.col},{match.height},{match.width})"
        print(f"{rank:>4}  {names[match.index]:<22} {match.score:6.3f}  {window:<21} {_fmt(pixels)}")
    return 0


def _fmt(box: Sequence[float]) -> str:
    return "(" + ",".join(f"{value:.0f}" for value in box) + ")"
