"""Results as files (JSON, CSV), and the share string that brings a query back.

No gradio here.
"""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from app import editor, handlers, uploads
from app.library import CacheLibrary
from app.state import Outcome, SharedState, decode_state, encode_state
from vfs.errors import DatasetError

COLUMNS = (
    "rank",
    "index",
    "id",
    "label",
    "score",
    "row",
    "col",
    "height",
    "width",
    "box_top",
    "box_left",
    "box_bottom",
    "box_right",
    "search",  # "exact", or "approximate (two-stage, M=...)": how the results were found
)


def result_rows(library: CacheLibrary, outcome: Outcome) -> list[dict]:
    """One row per match: rank, dataset index, id, label, score, window (cells) and box (original pixels)."""
    from vfs import window_to_box

    cache = library.open(outcome.query.cache_key)
    preprocess = library.preprocess(cache)
    grid = tuple(cache.shape[2:])
    candidates = outcome.options.candidates
    mode = f"approximate (two-stage, M={candidates})" if candidates else "exact"
    rows = []
    for rank, match in enumerate(outcome.matches, start=1):
        height, width = (int(v) for v in cache.image_sizes[match.index])
        top, left, bottom, right = window_to_box(
            match.row, match.col, match.height, match.width, grid, (height, width), preprocess=preprocess
        )
        rows.append(
            {
                "rank": rank,
                "index": match.index,
                "id": cache.ids[match.index],
                "label": handlers.label_name(cache, match.index),
                "score": round(float(match.score), 6),
                "row": match.row,
                "col": match.col,
                "height": match.height,
                "width": match.width,
                "box_top": round(top, 2),
                "box_left": round(left, 2),
                "box_bottom": round(bottom, 2),
                "box_right": round(right, 2),
                "search": mode,
            }
        )
    return rows


def export_results(
    library: CacheLibrary, outcome: Outcome, *, folder: Path | None = None
) -> tuple[Path, Path]:
    """Write the results to `results.json` (with the query and cache) and `results.csv`; return both paths."""
    folder = Path(folder or tempfile.mkdtemp(prefix="vfs-results-"))
    folder.mkdir(parents=True, exist_ok=True)
    cache = library.open(outcome.query.cache_key)
    rows = result_rows(library, outcome)
    meta = cache.meta
    document = {
        "cache": {
            "key": outcome.query.cache_key,
            "model": meta.model,
            "layer": meta.layer,
            "dataset": meta.dataset,
            "dataset_fingerprint": meta.dataset_fingerprint,
            "grid": list(cache.shape[2:]),
            "count": int(cache.shape[0]),
        },
        "query": {
            "index": outcome.query.index,
            "id": outcome.query.image_id,
            "mask_pixels": int(outcome.query.mask.sum()),
            "weights": np.round(outcome.weights, 4).tolist(),
        },
        "options": {
            "k": outcome.options.k,
            "exclude_query": outcome.options.exclude_query,
            "unique": outcome.options.unique,
            "only_label": outcome.options.only_label,
            "candidates": outcome.options.candidates,
        },
        "search": {
            "mode": "two-stage" if outcome.options.candidates else "exact",
            "approximate": bool(outcome.options.candidates),
            "candidates": outcome.options.candidates or None,
            "label": handlers.approximate_note(cache, outcome.options) or "exact search of every image",
        },
        "results": rows,
    }
    json_path, csv_path = folder / "results.json", folder / "results.csv"
    json_path.write_text(json.dumps(document, indent=2))
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return json_path, csv_path


def share_string(library: CacheLibrary, outcome: Outcome) -> str:
    """The string that reproduces the last query: a dataset image by index and id, an upload by the
    digest under which this server keeps its pixels (`app.uploads`, for the server's lifetime)."""
    query = outcome.query
    entry = library.entry(query.cache_key)
    return encode_state(
        SharedState(
            cache_key=query.cache_key,
            revision=entry.revision,
            index=query.index,
            image_id=query.image_id,
            image_size=tuple(query.image.shape[:2]),
            mask=query.mask,
            options=outcome.options,
            upload=uploads.remember(query.image) if query.index is None else None,
        )
    )


def load_state(library: CacheLibrary, text: str) -> tuple[SharedState, dict, handlers.Picked | None]:
    """Decode a share string and rebuild its editor value (image + painted mask) and picked image
    (None for an upload)."""
    state = decode_state(text)
    cache = library.open(state.cache_key)
    if state.upload is not None:
        image = uploads.recall(state.upload)
        return state, editor.editor_value(image, _fit_mask(state.mask, image)), None
    handlers.check_index(cache, state.index)
    if state.image_id is not None and cache.ids[state.index] != state.image_id:
        raise DatasetError(
            f"image #{state.index} of {state.cache_key!r} is {cache.ids[state.index]!r}, not {state.image_id!r} "
            "as when the state was made: the cache changed; make a new state string"
        )
    handlers.check_options(cache, state.options)
    image = handlers.display_image(library, state.cache_key, state.index)
    picked = handlers.Picked(cache_key=state.cache_key, index=state.index, image_id=cache.ids[state.index])
    return state, editor.editor_value(image, _fit_mask(state.mask, image)), picked


def _fit_mask(mask: np.ndarray, image: np.ndarray) -> np.ndarray:
    """`mask` (h, w) resized (nearest) to `image`'s (H, W) when the image is shown at another size."""
    if mask.shape == image.shape[:2]:
        return mask
    return np.asarray(Image.fromarray(mask).resize(image.shape[1::-1], Image.Resampling.NEAREST))
