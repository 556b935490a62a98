"""What the Search tab's events do: thin gradio callbacks over the plain handlers.

Each callback returns exactly what its event's outputs expect (see `app.search_tab`); each runs
through `app.wiring.readable`, so a library error becomes one message. No layout here.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import OrderedDict
from pathlib import Path

import gradio as gr
import numpy as np
from gradio.components.plot import PlotData
from PIL import Image

from app import drawing, explore, exports, handlers, uploads, veil
from app import editor as editor_module
from app.files import grid_file, result_files
from app.library import CacheLibrary
from app.wiring import ALL_LABELS, UNIQUE_LABELS, options_from, readable

log = logging.getLogger(__name__)
PER_PAGE = 24  # dataset thumbnails per page
UPLOAD_SIDE = 512  # an upload or example photo is shown for painting at this longer side (the brush
# is sized in image pixels: at one display size for every image, a stroke is as wide on any photo)
PUT_KEPT = 256  # digests of images put in editors remembered (any session's; 16 hex each)
PICK_HINT = "Pick an image below, upload one, or use an example; then paint the region to search for."


class SearchActions:
    """The Search tab's callbacks over one `CacheLibrary`."""

    def __init__(self, library: CacheLibrary):
        self.library = library
        self.examples = handlers.example_images()
        # digests of the last images the server put in an editor: the editor reports each as an upload,
        # sometimes after the next put (explore, then at once go back), when `shown` names the newer one
        self._put_digests: OrderedDict[str, None] = OrderedDict()

    # ---- putting an image in the editor: outputs [editor, query_value, picked, grid, picked_label, shown]
    def _put(self, key, value, picked, caption):
        """`shown` is the digest of the image put in the editor: the editor reports a value set by the
        server as an upload too, and `put_upload` leaves that one alone."""
        grid = handlers.grid_preview(self.library, key, value) if key else None
        image = editor_module.editor_image(value)
        if key and image is not None:  # the part the model cannot see, dimmed where one paints
            value = veil.veil_value(value, self.library.preprocess(self.library.open(key)))
        name = self._remember_put(value)
        return value, value, picked, grid, caption + self._crop_note(key, image), name

    def _remember_put(self, value) -> str:
        """The digest of the image of editor value `value`, remembered as one the server put there."""
        name = uploads.digest(editor_module.editor_image(value))
        self._put_digests[name] = None
        self._put_digests.move_to_end(name)
        while len(self._put_digests) > PUT_KEPT:
            self._put_digests.popitem(last=False)
        return name

    def _crop_note(self, key, image) -> str:
        """Where the model looks, when its centre crop leaves part of `image` out (else nothing)."""
        if not key or image is None:
            return ""
        height, width = image.shape[:2]
        top, left, bottom, right = self.library.preprocess(self.library.open(key)).crop_box(height, width)
        if top <= 0.5 and left <= 0.5 and bottom >= height - 0.5 and right >= width - 0.5:
            return ""
        return (f" · the model sees only its centre, x {left:.0f}-{right:.0f}, y {top:.0f}-{bottom:.0f} of "
                f"{width}x{height} (left bright on the editor, dimmed around it): paint inside it")

    def put_image(self, key, index, caption=None):
        if not key:
            raise gr.Error("no cache is selected: pick one in the 'Cache' list first")
        cache = self.library.open(key)
        index = int(index)
        value = editor_module.editor_value(handlers.display_image(self.library, key, index))
        picked = handlers.Picked(cache_key=key, index=index, image_id=cache.ids[index])
        caption = caption or (f"Dataset image **#{index}** · {handlers.label_name(cache, index)} · "
                              f"id `{cache.ids[index]}`")
        return self._put(key, value, picked, caption)

    @readable
    def pick_from_page(self, key, page, event: gr.SelectData):
        return self.put_image(key, int(page) * PER_PAGE + int(event.index))

    @readable
    def pick_random(self, key):
        if not key:
            raise gr.Error("no cache is selected: pick one in the 'Cache' list first")
        return self.put_image(key, random.randrange(self.library.open(key).shape[0]))

    @readable
    def pick_index(self, key, index):
        return self.put_image(key, int(index or 0))

    @readable
    def put_example(self, key, event: gr.SelectData):
        path = Path(self.examples[int(event.index)])
        image = editor_module.to_rgb(np.asarray(Image.open(path)))
        caption = f"Example photo **{path.stem}** (an upload: not an image of the dataset)"
        return self._put(key, editor_module.editor_value(_display_size(image)), None, caption)

    @readable
    def put_upload(self, key, value, shown):
        """An image dropped or pasted into the editor, re-shown at `UPLOAD_SIDE` so the brush fits it."""
        image = editor_module.editor_image(value)
        if image is None:
            return gr.update(), gr.update(), None, None, PICK_HINT, None
        if uploads.digest(image) == shown or uploads.digest(image) in self._put_digests:  # put there by the
            return [gr.update()] * 6  # server (this put or a recent one reported late), not an upload
        image, _, note = editor_module.fit_image(image)
        if note:
            gr.Warning(note)
        return self._put(key, editor_module.editor_value(_display_size(image)), None,
                         "Uploaded image (not an image of the dataset)")

    @readable
    def reveil(self, key, value, shown):
        """Another cache picked: the editor's image veiled for that cache's crop, the painting kept.
        Outputs [editor, query_value, grid, shown]; the editor is set again only when the veil changes."""
        image = editor_module.editor_image(value)
        if not key or image is None:
            return [gr.update()] * 4
        grid = handlers.grid_preview(self.library, key, value)
        again = veil.veil_value(value, self.library.preprocess(self.library.open(key)))
        if uploads.digest(editor_module.editor_image(again)) == uploads.digest(image):
            return gr.update(), gr.update(), grid, gr.update()
        return again, again, grid, self._remember_put(again)

    def cleared(self):
        """Outputs [query_value, picked, grid, picked_label, shown]."""
        return None, None, None, PICK_HINT, None

    @readable
    def turn_page(self, key, page, step):
        if not key:
            return gr.update(), 0, "page 1 of 1"
        page = int(page) + step
        items, pages = handlers.dataset_page(self.library, key, page, per_page=PER_PAGE)
        page = min(max(page, 0), pages - 1)
        return items, page, f"page {page + 1} of {pages}"

    @readable
    def preview(self, key, value):
        return handlers.grid_preview(self.library, key, value)

    # ---- search: outputs [results, summary, grid, plot, share, last, last_query, k, history, history_list, detail]
    @readable
    def search(self, key, value, k, exclude, unique, only_label, picked, history, candidates=0,
               progress=gr.Progress()):  # noqa: B008
        if not key:
            raise gr.Error("no cache is selected: pick one in the 'Cache' list first")
        library = self.library
        times = [("start", time.perf_counter())]
        progress(0.05, desc="reading the query")
        query, notes = handlers.read_query(library, key, value, picked)
        times.append(("query", time.perf_counter()))
        outcome = handlers.run_search(library, query, options_from(k, exclude, unique, only_label, candidates),
                                      progress=lambda fraction, text: progress(fraction, desc=text))
        times.append(("search", time.perf_counter()))
        progress(0.8, desc="drawing the results")
        for note in notes:
            gr.Warning(note)
        if len(outcome.matches) < outcome.options.k:
            gr.Warning(f"only {len(outcome.matches)} images fit the options (asked for {outcome.options.k})")
        items = result_files(library, outcome)  # written once: never rewritten while one streams
        times.append(("pictures", time.perf_counter()))
        plot = PlotData(type="altair", plot=json.dumps(handlers.score_plot(library, outcome)))
        times.append(("plot", time.perf_counter()))
        share = exports.share_string(library, outcome)
        grid = grid_file(library, query)  # the query as searched (downscaled if it was)
        times.append(("grid", time.perf_counter()))
        history = explore.remember(history, library, query)
        log.info("search handler: %.3f s in all (%s; %.3f s scoring)", times[-1][1] - times[0][1],
                 ", ".join(f"{name} {end - begin:.3f}" for (_, begin), (name, end) in zip(times, times[1:])),
                 outcome.seconds)
        return (items, handlers.search_summary(library, outcome), grid, plot, share, outcome, query,
                outcome.options.k, history, gr.update(choices=explore.titles(history), value=None),
                gr.update(visible=False))

    def search_if(self, wanted, key, value, k, exclude, unique, only_label, picked, history, candidates=0,
                  progress=gr.Progress()):  # noqa: B008
        """`search` when `wanted` (a state was loaded), else no change (the page was opened without one)."""
        if not wanted:
            return [gr.update()] * 11
        return self.search(key, value, k, exclude, unique, only_label, picked, history, candidates, progress=progress)

    # ---- exploring from a result
    @readable
    def show_detail(self, outcome, event: gr.SelectData):
        image, text = explore.result_detail(self.library, outcome, int(event.index))
        return gr.update(visible=True), image, text, int(event.index)

    @readable
    def explore(self, outcome, position):
        """Outputs [cache_key, editor, query_value, picked, grid, picked_label, shown]."""
        value, picked, caption = explore.next_query(self.library, outcome, int(position))
        key = outcome.query.cache_key
        return key, *self._put(key, value, picked, caption)

    @readable
    def go_back(self, history, title):
        """Outputs [cache_key, editor, query_value, picked, grid, picked_label, shown]."""
        key, value, picked, caption = explore.restore(self.library, history, title)
        return key, *self._put(key, value, picked, caption)

    # ---- files and share strings
    @readable
    def export(self, outcome):
        if outcome is None:
            raise gr.Error("nothing to export yet: run a search first")
        return list(map(str, exports.export_results(self.library, outcome)))

    @readable
    def load_state(self, text):
        """Outputs [cache_key, editor, query_value, picked, grid, picked_label, shown, k, exclude, unique,
        only_label, candidates, loaded]."""
        if not (text or "").strip():
            return [gr.update()] * 12 + [False]
        state, value, picked = exports.load_state(self.library, text)
        opts = state.options
        cache = self.library.open(state.cache_key)
        if state.index is None:
            caption = "Uploaded image (from a shared link)"
        else:
            caption = (f"Dataset image **#{state.index}** · {handlers.label_name(cache, state.index)} · id "
                       f"`{cache.ids[state.index]}` (from a shared link)")
        unique = {v: k for k, v in UNIQUE_LABELS.items()}[opts.unique]
        return (state.cache_key, *self._put(state.cache_key, value, picked, caption), opts.k, opts.exclude_query,
                unique, opts.only_label or ALL_LABELS, opts.candidates, True)


def _display_size(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 `image` with its longer side `UPLOAD_SIDE` (nearest for tiny images, else bicubic)."""
    return np.asarray(drawing.upscale(Image.fromarray(image), side=UPLOAD_SIDE))
