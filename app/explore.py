"""Walking from result to result: a result seen large, a result made the next query, and the way back.

A researcher clicks a result to see it large with its matched window, label, score and id; one
action makes it the next query with that window painted; every query searched is kept in a short
history to go back to. No gradio here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from app import drawing, handlers, uploads
from app.editor import editor_value
from app.library import CacheLibrary
from app.state import Outcome, Query
from vfs.errors import DatasetError

DETAIL_SIDE = 448  # pixels of the longer side of a result seen large
HISTORY_KEPT = 12  # queries kept to go back to (oldest dropped first)


@dataclass(frozen=True)
class Step:
    """One query of the history: enough to put it back in the editor."""

    cache_key: str  # the cache it was searched in
    index: int | None  # its dataset index; None for an upload
    upload: str | None  # an upload's digest (`app.uploads`); None for a dataset image
    mask: np.ndarray = field(repr=False)  # (H, W) bool, as painted
    title: str = ""  # what the history list shows, unique within a history


def _match(outcome: Outcome | None, position: int):
    if outcome is None or not 0 <= int(position) < len(outcome.matches):
        count = 0 if outcome is None else len(outcome.matches)
        raise DatasetError(f"there is no result #{int(position) + 1} (the last search shows {count}): "
                           "run a search and click one of its results")
    return outcome.matches[int(position)]


def result_detail(library: CacheLibrary, outcome: Outcome | None, position: int) -> tuple[Image.Image, str]:
    """Result `position` (0 = best) large, its matched window outlined, and a line naming it."""
    from vfs import window_to_box

    match = _match(outcome, position)
    key = outcome.query.cache_key
    cache = library.open(key)
    picture = drawing.upscale(library.picture(key, match.index), side=DETAIL_SIDE)
    box = window_to_box(match.row, match.col, match.height, match.width, tuple(cache.shape[2:]),
                        (picture.height, picture.width), preprocess=library.preprocess(cache))
    text = (f"**Result {int(position) + 1}** · cosine **{match.score:.3f}** · **{handlers.label_name(cache, match.index)}**"
            f" · dataset image #{match.index} · id `{cache.ids[match.index]}` · window: rows {match.row}-"
            f"{match.row + match.height - 1}, columns {match.col}-{match.col + match.width - 1} of the "
            f"{cache.shape[2]}x{cache.shape[3]} feature grid")
    return drawing.outline_window(picture, box), text


def window_mask(library: CacheLibrary, cache_key: str, match, image_size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the pixels of `match`'s window on an image shown at `image_size` (height, width).

    Rounded inwards, so the mask covers exactly the window's cells on the feature grid (no sliver of a
    neighbouring cell that would widen the next search's window).
    """
    from vfs import window_to_box

    cache = library.open(cache_key)
    top, left, bottom, right = window_to_box(match.row, match.col, match.height, match.width,
                                             tuple(cache.shape[2:]), image_size, preprocess=library.preprocess(cache))
    mask = np.zeros(image_size, dtype=bool)  # (H, W)
    mask[math.ceil(top) : math.floor(bottom), math.ceil(left) : math.floor(right)] = True
    return mask


def next_query(library: CacheLibrary, outcome: Outcome | None, position: int) -> tuple[dict, handlers.Picked, str]:
    """Result `position` as the next query: (editor value with its window painted, picked image, caption)."""
    match = _match(outcome, position)
    key = outcome.query.cache_key
    cache = library.open(key)
    image = handlers.display_image(library, key, match.index)  # (H, W, 3)
    mask = window_mask(library, key, match, image.shape[:2])
    picked = handlers.Picked(cache_key=key, index=match.index, image_id=cache.ids[match.index])
    caption = (f"Dataset image **#{match.index}** · {handlers.label_name(cache, match.index)} · id "
               f"`{cache.ids[match.index]}` (result {int(position) + 1} of the last search, its window painted)")
    return editor_value(image, mask), picked, caption


def remember(history: list[Step] | None, library: CacheLibrary, query: Query) -> list[Step]:
    """`history` with `query` added last (an identical query moves to the end), at most `HISTORY_KEPT`."""
    cache = library.open(query.cache_key)
    upload = uploads.remember(query.image) if query.index is None else None
    what = (f"#{query.index} {handlers.label_name(cache, query.index)}" if query.index is not None
            else f"upload {upload[:6]}")
    cells = int(np.count_nonzero(query.mask))
    step = Step(cache_key=query.cache_key, index=query.index, upload=upload, mask=np.array(query.mask, dtype=bool),
                title=f"{what} · {cells:,} px painted · {query.cache_key}")
    kept = [old for old in (history or []) if not _same(old, step)]
    return [*kept, step][-HISTORY_KEPT:]


def _same(a: Step, b: Step) -> bool:
    return (a.cache_key, a.index, a.upload) == (b.cache_key, b.index, b.upload) and np.array_equal(a.mask, b.mask)


def titles(history: list[Step] | None) -> list[str]:
    """The history's titles, newest first (what the page lists)."""
    return [step.title for step in reversed(history or [])]


def restore(library: CacheLibrary, history: list[Step] | None, title: str) -> tuple[str, dict, handlers.Picked | None, str]:
    """The query named `title` back: (cache key, editor value, picked image or None, caption)."""
    step = next((step for step in history or [] if step.title == title), None)
    if step is None:
        raise DatasetError(f"no query {title!r} in this page's history: pick one from the list")
    if step.upload is not None:
        image = uploads.recall(step.upload)
        return step.cache_key, editor_value(image, step.mask), None, f"Uploaded image (from the history: {title})"
    cache = library.open(step.cache_key)
    handlers.check_index(cache, step.index)
    image = handlers.display_image(library, step.cache_key, step.index)
    picked = handlers.Picked(cache_key=step.cache_key, index=step.index, image_id=cache.ids[step.index])
    caption = (f"Dataset image **#{step.index}** · {handlers.label_name(cache, step.index)} · id "
               f"`{cache.ids[step.index]}` (from the history)")
    return step.cache_key, editor_value(image, step.mask), picked, caption
