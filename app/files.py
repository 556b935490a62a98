"""Pictures the page shows, as files written once under a name that says what they hold.

Gradio saves every PIL image or array an event returns into its file cache under a hash of the
encoded bytes, rewriting the file each time (`processing_utils.save_pil_to_cache`). When sixteen
users get the same result picture at once, one response streams the file while another truncates
and rewrites it: "peer closed connection" / "Too little data for declared Content-Length" for 1-4%
of requests. Handed a path instead, gradio copies the file once under a hash of its content
(written aside and renamed into place) and reuses that copy. Here each result picture is also
rendered and encoded only once: it is named by what determines its pixels, so a repeated result
costs one `stat`. No gradio here.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from app import drawing, editor, handlers
from app.library import CacheLibrary
from app.state import Outcome, Query

FOLDER = Path(tempfile.gettempdir()) / "vfs-pictures"  # gradio may serve files under the temp folder


def write_once(image: Image.Image, *, name: str | None = None, folder: Path = FOLDER) -> str:
    """Save `image` as PNG at `folder/<name>.png` unless it is there; return the path.

    `name` must determine the pixels (default: a hash of the PNG bytes). The file is written aside
    and renamed into place, so a reader never sees it half written, and it is never rewritten.
    """
    data = None
    if name is None:
        data = _png(image)
        name = hashlib.sha256(data).hexdigest()
    path = folder / f"{name}.png"
    if path.exists():
        return str(path)
    folder.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=folder, prefix=".", suffix=".png")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data if data is not None else _png(image))
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return str(path)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="png", compress_level=1)  # fast; these pictures are small
    return buffer.getvalue()


def result_files(
    library: CacheLibrary, outcome: Outcome, *, side: int = drawing.RESULT_SIDE
) -> list[tuple[str, str]]:
    """`handlers.result_items` as (path, caption): each match's outlined thumbnail is rendered once, ever."""
    cache = library.open(outcome.query.cache_key)
    meta = cache.meta
    items = []
    for rank, match in enumerate(outcome.matches, start=1):
        window = (match.index, match.row, match.col, match.height, match.width)
        identity = f"{meta!r}|{tuple(cache.shape)}|{cache.ids[match.index]}|{window}|{side}"  # fixes the pixels
        name = "result-" + hashlib.sha256(identity.encode()).hexdigest()
        path = FOLDER / f"{name}.png"
        if not path.exists():
            single = Outcome(query=outcome.query, options=outcome.options, matches=[match], best=outcome.best,
                             weights=outcome.weights, features=outcome.features)
            [(picture, _)] = handlers.result_items(library, single, side=side)
            write_once(picture, name=name)
        items.append((str(path), handlers.result_caption(cache, rank, match)))
    return items


def grid_file(library: CacheLibrary, query: Query) -> str:
    """`handlers.grid_preview` of the query as a file, drawn once per (cache, image, mask)."""
    cache = library.open(query.cache_key)
    digest = hashlib.sha256(f"{cache.meta!r}|{tuple(cache.shape)}|{query.image.shape}".encode())
    digest.update(np.ascontiguousarray(query.image).tobytes())
    digest.update(np.packbits(query.mask).tobytes())
    name = "grid-" + digest.hexdigest()
    path = FOLDER / f"{name}.png"
    if path.exists():
        return str(path)
    value = editor.editor_value(query.image, query.mask)
    return write_once(handlers.grid_preview(library, query.cache_key, value), name=name)
