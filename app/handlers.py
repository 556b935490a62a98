"""What the app's buttons do, as plain functions: editor value -> query -> search -> pictures and files.

No gradio here: `app/ui.py` calls these and turns `vfs.VFSError` into `gr.Error` in one place, so
tests call them directly with synthetic editor values.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from app import drawing
from app.editor import FORMATS, MAX_PIXELS, MAX_UPLOAD_MB, editor_image, editor_mask, fit_image
from app.library import CacheLibrary
from app.state import Outcome, Query, SearchOptions
from app.veil import unveil
from vfs.errors import CacheMismatchError, DatasetError, MaskError

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class Picked:
    cache_key: str  # the cache the image was picked from
    index: int  # its dataset index there
    image_id: str  # its id there (checked when another cache of the same dataset is searched)


# ---- dataset images


def display_image(library: CacheLibrary, cache_key: str, index: int) -> np.ndarray:
    """Dataset image `index` as shown for painting: (H, W, 3) uint8 at `drawing.QUERY_SIDE`."""
    check_index(library.open(cache_key), index)
    return np.asarray(drawing.upscale(library.picture(cache_key, int(index)), side=drawing.QUERY_SIDE))


def example_images() -> list[str]:
    """A few bundled photos (scikit-image) written once to a temp folder, for the Examples row."""
    from skimage import data

    folder = Path(tempfile.gettempdir()) / "vfs-examples"
    folder.mkdir(exist_ok=True)
    paths = []
    for name in ("chelsea", "astronaut", "coffee", "rocket"):
        path = folder / f"{name}.png"
        if not path.exists():
            Image.fromarray(getattr(data, name)()).save(path)
        paths.append(str(path))
    return paths


def check_index(cache, index: int) -> None:
    n = cache.shape[0]
    if not 0 <= int(index) < n:
        raise DatasetError(
            f"image index {index} is outside this cache's 0..{n - 1}: pick a number in that range"
        )


def label_name(cache, index: int) -> str:
    label = int(cache.labels[index])
    return cache.label_names[label] if 0 <= label < len(cache.label_names) else "unlabelled"


def dataset_page(
    library: CacheLibrary, cache_key: str, page: int, *, per_page: int = 24
) -> tuple[list[tuple[Image.Image, str]], int]:
    """Thumbnails of page `page` (0-based, clamped) as (image, "#index"), and the page count."""
    cache = library.open(cache_key)
    n = cache.shape[0]
    pages = max(1, -(-n // per_page))
    page = min(max(int(page), 0), pages - 1)
    items = []
    for index in range(page * per_page, min(n, (page + 1) * per_page)):
        thumb = drawing.upscale(cache.thumbnail(index), side=96)
        items.append((thumb, f"#{index}"))
    return items, pages


# ---- the query


def read_query(
    library: CacheLibrary, cache_key: str, value: dict | None, picked: Picked | None = None
) -> tuple[Query, list[str]]:
    """The query in the editor for cache `cache_key`, and notes for the user (e.g. downscaled).

    A dataset image keeps its index when the editor still shows it unchanged and `cache_key` holds
    the same image (same id at that index); anything else is treated as an upload.
    """
    cache = library.open(cache_key)
    image = editor_image(value)
    if image is None:
        raise DatasetError(
            "there is no query image: pick one from the dataset, upload one, or use an example. An "
            "upload the editor cannot show never reaches the server: it must be an image file "
            f"({', '.join(FORMATS)}) of at most {MAX_PIXELS:,} pixels and {MAX_UPLOAD_MB} MB"
        )
    mask = editor_mask(value, shape=image.shape[:2])
    image = unveil(image)  # the pixels shown with the outside of the crop dimmed -> the original
    notes = []
    image, mask, note = fit_image(image, mask)
    if note:
        notes.append(note)
    if mask is None or not mask.any():
        raise MaskError(
            "mask is empty: paint over the region you want to search for (the brush is in the editor's toolbar)"
        )
    index, image_id = None, None
    if (
        picked is not None
        and 0 <= picked.index < cache.shape[0]
        and cache.ids[picked.index] == picked.image_id
    ):
        shown = display_image(library, cache_key, picked.index)
        if shown.shape == image.shape and np.array_equal(shown, image):
            index, image_id = picked.index, picked.image_id
    return Query(cache_key=cache_key, image=image, mask=mask, index=index, image_id=image_id), notes


UPLOADS_KEPT = 16  # uploads whose features are kept: a user paints a few masks on the same image
_upload_features: dict[tuple, np.ndarray] = {}  # (model, layer, preprocess, image digest) -> (C, h, w)


def query_features(library: CacheLibrary, query: Query) -> np.ndarray:
    """(C, h, w) float32 features of the query: the cached row for a dataset image, else extracted.

    An upload's features are kept per (model, layer, preprocess, pixels): two caches of one model and
    layer built at different input sizes give different grids for the same image.
    """
    cache = library.open(query.cache_key)
    if query.index is not None:
        return np.asarray(cache[query.index : query.index + 1], dtype=np.float32)[0]  # (C, h, w)
    meta = cache.meta
    preprocess = library.preprocess(cache)
    digest = hashlib.sha1(query.image.tobytes() + str(query.image.shape).encode()).hexdigest()
    key = (meta.model, meta.layer, preprocess, digest)
    features = _upload_features.get(key)
    if features is None:  # read once: another thread may evict the dict between a check and a second read
        extractor = library.extractor(meta.model, meta.layer, preprocess=preprocess)
        features = extractor(Image.fromarray(query.image))  # (1, C, h, w)
        features = np.asarray(features, dtype=np.float32)[0]  # (C, h, w)
        if features.shape != tuple(cache.shape[1:]):
            raise CacheMismatchError(
                f"{meta.model} {meta.layer} gives features {features.shape} for this image but the cache holds "
                f"{tuple(cache.shape[1:])}: the cache was built with another input size; rebuild it or pick another cache"
            )
        if len(_upload_features) >= UPLOADS_KEPT:
            _upload_features.clear()
        _upload_features[key] = features
    return features


def query_weights(library: CacheLibrary, query: Query) -> np.ndarray:
    """(h, w) float32: the painted mask on the cache's feature grid, through the model's crop.

    A mask outside the crop is a MaskError from `mask_to_grid` (it names the rows and columns to paint in)."""
    from vfs import mask_to_grid

    cache = library.open(query.cache_key)
    return mask_to_grid(query.mask, tuple(cache.shape[2:]), preprocess=library.preprocess(cache))  # (h, w)


def grid_preview(library: CacheLibrary, cache_key: str, value: dict | None) -> Image.Image | None:
    """'What the model sees': the query with the crop, the feature grid and the mask's cell weights."""
    if not cache_key:
        return None
    image = editor_image(value)
    if image is None:
        return None
    mask = editor_mask(value, shape=image.shape[:2])
    image, mask, _ = fit_image(unveil(image), mask)
    cache = library.open(cache_key)
    preprocess = library.preprocess(cache)
    grid = tuple(cache.shape[2:])
    weights = np.zeros(grid, dtype=np.float32)  # (h, w)
    if mask is not None and mask.any():
        from vfs import mask_to_grid

        weights = np.asarray(mask_to_grid(mask, grid, preprocess=preprocess), dtype=np.float32)
        image = np.asarray(drawing.mask_overlay(image, mask))
    return drawing.grid_overlay(image, weights, preprocess=preprocess)


# ---- search


def run_search(
    library: CacheLibrary, query: Query, options: SearchOptions, *, progress: Progress | None = None
) -> Outcome:
    """Score every image's best window for the query, then rank under the options."""
    from app import gpu

    if progress:
        progress(0.1, "opening the cache")
    cache = library.open(query.cache_key)
    check_options(cache, options)
    subset = None
    if options.only_label:
        subset = np.flatnonzero(cache.labels == cache.label_names.index(options.only_label))
        if subset.size == 0:
            raise DatasetError(f"no image has the label {options.only_label!r}: pick another label or 'all'")
    if progress:
        progress(0.3, "reading the query")
    features = query_features(library, query)
    weights = query_weights(library, query)
    if progress:
        progress(0.5, f"searching {cache.shape[0] if subset is None else subset.size} images")
    start = time.perf_counter()
    if options.candidates:
        best = two_stage_windows(library, query, options, features, weights, subset=subset)
    else:
        best = gpu.best_windows(features, weights, cache, subset=subset, device=library.device)
    seconds = time.perf_counter() - start
    matches = rank(best, cache, options, exclude=query.index if options.exclude_query else None)
    return Outcome(
        query=query,
        options=options,
        matches=matches,
        best=best,
        weights=weights,
        features=features,
        seconds=seconds,
    )


def two_stage_windows(library: CacheLibrary, query: Query, options: SearchOptions, features, weights, *,
                      subset: np.ndarray | None):
    """The exact best windows of the `options.candidates` images (>= 1: `SearchOptions` refuses a
    negative count, and 0 means exact search) that a cache's coarse index ranks best."""
    from vfs.retrieval.two_stage import best_windows_two_stage

    index = library.coarse(query.cache_key)
    if index is None:
        entry = library.entry(query.cache_key)
        where = entry.path or entry.key
        raise DatasetError("this cache has no coarse index, which two-stage search needs: set the candidates "
                           f"to 0 for exact search, or build one with `python -m vfs index-coarse {where}`")
    exclude = [query.index] if options.exclude_query and query.index is not None else None
    return best_windows_two_stage(features, weights, library.open(query.cache_key), index=index,
                                  candidates=options.candidates, exclude=exclude, subset=subset)


def approximate_note(cache, options: SearchOptions) -> str | None:
    """The label of two-stage results (approximate, with M), or None for an exact search."""
    if not options.candidates:
        return None
    from vfs.retrieval.two_stage import approximate_label

    return approximate_label(options.candidates, int(cache.shape[0]))


def check_options(cache, options: SearchOptions) -> None:
    """Refuse options this cache cannot honour (`SearchOptions` itself checks what holds for any cache)."""
    if options.unique == "domain" and not cache.domains:
        raise DatasetError("this cache has no domains: choose 'one per label' or no limit")
    if options.only_label and options.only_label not in cache.label_names:
        raise DatasetError(
            f"no label {options.only_label[:60]!r} in this cache; labels: {', '.join(cache.label_names)}"
        )


def rank(best, cache, options: SearchOptions, *, exclude: int | None = None) -> list:
    """The top `options.k` of `best` (a vfs.BestWindows), best first, at most one per label/domain if asked."""
    from vfs import Match

    order = np.argsort(-best.scores, kind="stable")
    seen, matches = set(), []
    for position in order:
        index = int(best.indices[position])
        if index == exclude:
            continue
        if options.unique != "none":
            group = int(cache.labels[index]) if options.unique == "label" else cache.domains[index]
            if group in seen:
                continue
            seen.add(group)
        matches.append(
            Match(
                index=index,
                score=float(best.scores[position]),
                row=int(best.rows[position]),
                col=int(best.cols[position]),
                height=int(best.height),
                width=int(best.width),
            )
        )
        if len(matches) == options.k:
            break
    return matches


def caption(rank: int, score: float, label: str) -> str:
    """A result's caption, "3 · 0.912 · Ankle boot": the score before the label, so a narrow gallery
    that cuts the caption's end cuts the label, never the score."""
    return f"{rank} · {score:.3f} · {label}"


def result_items(
    library: CacheLibrary, outcome: Outcome, *, side: int = drawing.RESULT_SIDE
) -> list[tuple[Image.Image, str]]:
    """Gallery items: each match's thumbnail with its window outlined, captioned by `caption`."""
    from vfs import window_to_box

    cache = library.open(outcome.query.cache_key)
    preprocess = library.preprocess(cache)
    grid = tuple(cache.shape[2:])
    items = []
    for rank_, match in enumerate(outcome.matches, start=1):
        thumb = drawing.upscale(library.picture(outcome.query.cache_key, match.index), side=side)
        box = window_to_box(
            match.row,
            match.col,
            match.height,
            match.width,
            grid,
            (thumb.height, thumb.width),
            preprocess=preprocess,
        )
        items.append((drawing.outline_window(thumb, box), result_caption(cache, rank_, match)))
    return items


def result_caption(cache, rank: int, match) -> str:
    """'rank · score · label', as under each result (`caption`)."""
    return caption(rank, match.score, label_name(cache, match.index))


def score_plot(library: CacheLibrary, outcome: Outcome) -> dict:
    """Vega-Lite spec of the best-window scores over every scored image, one box per label."""
    cache = library.open(outcome.query.cache_key)
    scores = np.asarray(outcome.best.scores, dtype=np.float64)
    codes = np.asarray(cache.labels)[np.asarray(outcome.best.indices)]  # (M,) label numbers
    known = (codes >= 0) & (codes < len(cache.label_names))
    names = np.asarray([*cache.label_names, "unlabelled"], dtype=object)  # as `label_name`, for every image
    labels = names[np.where(known, codes, len(cache.label_names))].tolist()
    marks = [
        {"rank": rank_, "label": label_name(cache, match.index), "score": match.score}
        for rank_, match in enumerate(outcome.matches, start=1)
    ]
    return drawing.score_boxplot_spec(scores, labels, marks=marks)


def search_summary(library: CacheLibrary, outcome: Outcome) -> str:
    cache = library.open(outcome.query.cache_key)
    source = f"dataset image #{outcome.query.index}" if outcome.query.index is not None else "uploaded image"
    cells = int(np.count_nonzero(outcome.weights))
    count = len(outcome.matches)
    meta = cache.meta
    summary = (
        f"{count} result{'' if count == 1 else 's'} in {meta.model} `{meta.layer}` · {meta.dataset} for the {source} · mask covers {cells} of {outcome.weights.size} cells · "
        f"searched {outcome.best.scores.size} of {cache.shape[0]} images in {outcome.seconds * 1000:.0f} ms"
    )
    note = approximate_note(cache, outcome.options)
    return summary if note is None else f"**{note}** · {summary}"
