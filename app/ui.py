"""The Gradio page: pick a cache, paint a region, see the most similar regions; compare two caches.

With its tabs (`app.compare_tab`, `app.analysis_tab`), the only modules of the app that import
gradio. Handlers (`app.handlers`, `app.exports`, `app.compare`) are plain functions; `app.wiring.readable`
is the one place where their errors become `gr.Error` messages.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from pathlib import Path

import gradio as gr
import numpy as np
from gradio.components.plot import PlotData
from PIL import Image

from app import editor as editor_module
from app import exports, handlers
from app.compare_tab import build_compare_tab
from app.files import grid_file, result_files
from app.library import CacheLibrary, DefaultBuild
from app.state import MAX_K
from app.wiring import (
    ALL_LABELS,
    COPY_EDITOR,
    UNIQUE_LABELS,
    AnalysisContext,
    options_from,
    read_uploads_header_first,
    readable,
)
from vfs.errors import VFSError

log = logging.getLogger(__name__)
PER_PAGE = 24
MAX_UPLOAD = f"{editor_module.MAX_UPLOAD_MB}mb"  # gradio refuses bigger uploads before they reach a handler


CSS = """
#vfs-results .caption-label, #vfs-results-a .caption-label, #vfs-results-b .caption-label {font-size: 0.8rem;}
#vfs-summary, #vfs-status {min-height: 1.5em;}
.vfs-small {font-size: 0.85rem; color: var(--body-text-color-subdued);}
"""


def build(library: CacheLibrary, *, default_build: DefaultBuild | None = None) -> gr.Blocks:
    """The whole page over `library` (and the progress of `default_build` while it runs)."""

    def cache_choices():
        return [(entry.title, entry.key) for entry in library.entries]

    # ---- handlers wired below (each through `readable`)
    @readable
    def pick_cache(key, label):
        if not key:
            return ("No cache selected (or none built yet).", [], 0, "page 1 of 1", gr.update(choices=[ALL_LABELS]), gr.update())
        cache = library.open(key)
        items, pages = handlers.dataset_page(library, key, 0, per_page=PER_PAGE)
        meta = cache.meta
        info = (f"**{meta.model}** · layer `{meta.layer}` · **{meta.dataset}** — {cache.shape[0]:,} images · "
                f"feature grid {cache.shape[2]}x{cache.shape[3]} x {cache.shape[1]} channels · "
                f"{meta.dtype} · input {meta.input_size} px")
        unique = list(UNIQUE_LABELS) if cache.domains else list(UNIQUE_LABELS)[:2]
        label = label if label in cache.label_names else ALL_LABELS  # a loaded state's label survives
        labels = gr.update(choices=[ALL_LABELS, *cache.label_names], value=label)
        return info, items, 0, f"page 1 of {pages}", labels, gr.update(choices=unique)

    @readable
    def turn_page(key, page, step):
        if not key:
            return gr.update(), 0, "page 1 of 1"
        page = int(page) + step
        items, pages = handlers.dataset_page(library, key, page, per_page=PER_PAGE)
        page = min(max(page, 0), pages - 1)
        return items, page, f"page {page + 1} of {pages}"

    @readable
    def put_example(key, event: gr.SelectData):
        path = Path(examples[int(event.index)])
        value = editor_module.editor_value(editor_module.to_rgb(np.asarray(Image.open(path))))
        label = f"Example photo **{path.stem}** (an upload: not an image of the dataset)"
        return value, None, handlers.grid_preview(library, key, value) if key else None, label

    def put_image(key, index):
        cache = library.open(key)
        image = handlers.display_image(library, key, index)
        picked = handlers.Picked(cache_key=key, index=int(index), image_id=cache.ids[int(index)])
        value = editor_module.editor_value(image)
        index = int(index)
        label = f"Dataset image **#{index}** · {handlers.label_name(cache, index)} · id `{cache.ids[index]}`"
        return value, picked, handlers.grid_preview(library, key, value), label

    @readable
    def pick_from_page(key, page, event: gr.SelectData):
        return put_image(key, int(page) * PER_PAGE + int(event.index))

    @readable
    def pick_random(key):
        if not key:
            raise gr.Error("no cache is selected: pick one in the 'Cache' list first")
        return put_image(key, random.randrange(library.open(key).shape[0]))

    @readable
    def pick_index(key, index):
        if not key:
            raise gr.Error("no cache is selected: pick one in the 'Cache' list first")
        return put_image(key, int(index or 0))

    @readable
    def preview(key, value):
        return handlers.grid_preview(library, key, value)

    @readable
    def search(key, value, k, exclude, unique, only_label, picked, candidates=0,
               progress=gr.Progress()):  # noqa: B008
        if not key:
            raise gr.Error("no cache is selected: pick one in the 'Cache' list first")
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
        plot = PlotData(type="altair", plot=_json(handlers.score_plot(library, outcome)))
        times.append(("plot", time.perf_counter()))
        try:
            share = exports.share_string(library, outcome)
        except VFSError as error:
            share = str(error)
        grid = grid_file(library, query)  # the query as searched (downscaled if it was)
        times.append(("grid", time.perf_counter()))
        log.info("search handler: %.3f s in all (%s; %.3f s scoring)", times[-1][1] - times[0][1],
                 ", ".join(f"{name} {end - begin:.3f}" for (_, begin), (name, end) in zip(times, times[1:])),
                 outcome.seconds)
        return items, handlers.search_summary(library, outcome), grid, plot, share, outcome, query

    @readable
    def export(outcome):
        if outcome is None:
            raise gr.Error("nothing to export yet: run a search first")
        return list(map(str, exports.export_results(library, outcome)))

    @readable
    def load_state(text):
        state, value, picked = exports.load_state(library, text)
        opts = state.options
        unique = {v: k for k, v in UNIQUE_LABELS.items()}[opts.unique]
        cache = library.open(state.cache_key)
        label = (f"Dataset image **#{state.index}** · {handlers.label_name(cache, state.index)} · id "
                 f"`{cache.ids[state.index]}` (from a shared state)")
        grid_image = handlers.grid_preview(library, state.cache_key, value)
        return (state.cache_key, value, picked, opts.k, opts.exclude_query, unique,
                opts.only_label or ALL_LABELS, grid_image, label, opts.candidates)

    def on_load(request: gr.Request):
        library.refresh()
        choices = cache_choices()
        key = choices[0][1] if choices else None
        state_text = (request.query_params.get("state") if request is not None else None) or ""
        return (gr.update(choices=choices, value=key), gr.update(choices=choices, value=key),
                gr.update(choices=choices, value=choices[1][1] if len(choices) > 1 else key), state_text)

    def tick(current):
        if default_build is None:
            return gr.update(), gr.update(), gr.Timer(active=False)
        if not default_build.done:
            status = (f"**Building the default caches** (first start only; the list fills in when done) "
                      f"<progress value='{default_build.fraction:.3f}' max='1'></progress> {default_build.message}")
            return status, gr.update(), gr.Timer()
        library.refresh()
        choices = cache_choices()
        status = f"**The default cache build failed:** {default_build.error}" if default_build.error else ""
        value = current if current in {v for _, v in choices} else (choices[0][1] if choices else None)
        return status, gr.update(choices=choices, value=value), gr.Timer(active=False)

    def read_editor(trigger):
        """`trigger` copies the painted editor into `query_value` in the page; chain the server event on it."""
        return trigger(None, [editor], [query_value], js=COPY_EDITOR, api_name=False, queue=False)

    # ---- layout
    examples = handlers.example_images()
    first_key = library.entries[0].key if library.entries else None
    with gr.Blocks(title="Visual Feature Search") as demo:
        gr.Markdown("# Visual Feature Search\nPaint a region on an image and find the dataset regions that a "
                    "vision model's layer finds most similar (cosine over the masked feature window).")
        status = gr.Markdown("", elem_id="vfs-status")
        picked = gr.State(None)
        page = gr.State(0)
        last = gr.State(None)
        last_query = gr.State(None)
        with gr.Row():
            cache_key = gr.Dropdown(label="Cache (model · layer · dataset)", choices=cache_choices(),
                                    value=first_key, elem_id="vfs-cache", scale=3, interactive=True,
                                    allow_custom_value=True)  # caches built after launch are valid too
            refresh = gr.Button("↻ Refresh list", elem_id="vfs-refresh", scale=0, size="sm")
        cache_info = gr.Markdown("", elem_id="vfs-cache-info")
        with gr.Tabs():
            with gr.Tab("Search", id="search"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=4, min_width=380):
                        editor = gr.ImageEditor(
                            label="Query: paint the region to search for",
                            type="numpy", image_mode="RGBA", layers=False, transforms=(),
                            sources=("upload", "clipboard"), height=420, elem_id="vfs-editor",
                            brush=gr.Brush(default_size=24, colors=["#ff7800"], default_color="#ff7800",
                                           color_mode="fixed"),
                            eraser=gr.Eraser(default_size=24), format="png", canvas_size=(400, 400),
                        )
                        picked_label = gr.Markdown("Pick an image below, upload one, or use an example.",
                                                   elem_id="vfs-picked", elem_classes="vfs-small")
                        with gr.Row(equal_height=True):
                            random_button = gr.Button("Random image", size="sm", elem_id="vfs-random")
                            index_box = gr.Number(show_label=False, placeholder="image #", precision=0,
                                                  minimum=0, elem_id="vfs-index", min_width=90,
                                                  container=False)
                            open_index = gr.Button("Open #", size="sm", elem_id="vfs-open-index")
                        with gr.Accordion("Browse the dataset", open=True):
                            dataset = gr.Gallery(columns=4, height=250, allow_preview=False,
                                                 object_fit="contain", elem_id="vfs-dataset", format="png",
                                                 show_label=False)
                            with gr.Row(equal_height=True):
                                prev_page = gr.Button("◀ previous", size="sm", elem_id="vfs-prev")
                                page_label = gr.Markdown("page 1 of 1", elem_id="vfs-page")
                                next_page = gr.Button("next ▶", size="sm", elem_id="vfs-next")
                        example_gallery = gr.Gallery(examples, label="Example photos (uploaded queries)",
                                                     columns=4, height=120, allow_preview=False,
                                                     object_fit="cover", elem_id="vfs-examples")
                        query_value = read_uploads_header_first(gr.ImageEditor(  # what the server reads:
                            type="numpy", image_mode="RGBA", layers=False, transforms=(), format="png",
                            visible=False, label="query (painted image)",  # a copy made at each click
                        ))
                    with gr.Column(scale=6):
                        with gr.Group():
                            with gr.Row():
                                k = gr.Slider(1, MAX_K, value=12, step=1, label="results (k)", elem_id="vfs-k",
                                              min_width=160)
                                unique = gr.Radio(list(UNIQUE_LABELS)[:2], value="no limit", label="at most",
                                                  elem_id="vfs-unique", min_width=160)
                            with gr.Row():
                                only_label = gr.Dropdown([ALL_LABELS], value=ALL_LABELS,
                                                         label="only images labelled",
                                                         elem_id="vfs-only-label", allow_custom_value=True)
                                exclude = gr.Checkbox(True, label="exclude the query image",
                                                      elem_id="vfs-exclude")
                            candidates = gr.Number(
                                0, precision=0, minimum=0, elem_id="vfs-candidates",
                                label="two-stage candidates M (0 = exact search)",
                                info="for caches with a coarse index (python -m vfs index-coarse): approximate, "
                                     "exact scores of the M images the index ranks best")
                        search_button = gr.Button("Search", variant="primary", elem_id="vfs-search")
                        summary = gr.Markdown("", elem_id="vfs-summary", elem_classes="vfs-small")
                        results = gr.Gallery(label="Most similar regions (rank · label · cosine)", columns=4,
                                             height=560, object_fit="contain", elem_id="vfs-results",
                                             format="png")
                with gr.Row(equal_height=False):
                    grid = gr.Image(label="What the model sees: the mask on the feature grid", type="pil",
                                    height=320, elem_id="vfs-grid",
                                    interactive=False, scale=2)
                    plot = gr.Plot(label="Best-window score of every image, by label (dots: the results)",
                                   elem_id="vfs-plot", scale=3)
                with gr.Accordion("Export and share", open=False):
                    with gr.Row():
                        export_button = gr.Button("Export results (JSON + CSV)", elem_id="vfs-export")
                        files = gr.File(label="files", file_count="multiple", elem_id="vfs-files")
                    share = gr.Textbox(label="Share this query (paste it in 'Load a state', or add "
                                       "?state=... to the URL)", elem_id="vfs-share", buttons=["copy"],
                                       lines=2)
                    with gr.Row():
                        state_text = gr.Textbox(label="Load a state", elem_id="vfs-state-text", scale=4)
                        load_button = gr.Button("Load state", elem_id="vfs-load-state", scale=1)
            searched = read_editor(search_button.click).success(
                search, [cache_key, query_value, k, exclude, unique, only_label, picked, candidates],
                [results, summary, grid, plot, share, last, last_query], api_name="search",
            )
            with gr.Tab("Compare", id="compare"):
                left_key, right_key = build_compare_tab(
                    library, cache_choices(), [query_value, k, exclude, unique, only_label, picked], read_editor,
                )
            ctx = AnalysisContext(library=library, cache_key=cache_key, editor=query_value, picked=picked,
                                  query=last_query, results=last, searched=searched)
            with gr.Tab("Why similar", id="why"):
                _analysis_tab(ctx)
        timer = gr.Timer(2.0, active=default_build is not None and not default_build.done)

        # ---- events (the visible editor is only ever an output, with its progress shown elsewhere)
        quiet = {"show_progress_on": [grid]}
        page_outputs = [dataset, page, page_label]
        put_outputs = [editor, picked, grid, picked_label]
        cache_outputs = [cache_info, dataset, page, page_label, only_label, unique]
        cache_key.change(pick_cache, [cache_key, only_label], cache_outputs, api_name="pick_cache")
        refresh.click(lambda key: (library.refresh(), gr.update(choices=cache_choices(), value=key))[1],
                      [cache_key], [cache_key], api_name=False)
        for button, step in ((prev_page, -1), (next_page, 1)):
            turn = functools.partial(turn_page, step=step)
            button.click(turn, [cache_key, page], page_outputs, api_name=False)
        dataset.select(pick_from_page, [cache_key, page], put_outputs, api_name=False, **quiet)
        example_gallery.select(put_example, [cache_key], put_outputs, api_name=False, **quiet)
        random_button.click(pick_random, [cache_key], put_outputs, api_name="random_image", **quiet)
        open_index.click(pick_index, [cache_key, index_box], put_outputs, api_name="open_image", **quiet)
        read_editor(editor.apply).success(preview, [cache_key, query_value], [grid], api_name=False,
                                          show_progress="hidden")
        export_button.click(export, [last], [files], api_name="export")
        state_outputs = [cache_key, editor, picked, k, exclude, unique, only_label, grid, picked_label, candidates]
        load_button.click(load_state, [state_text], state_outputs, api_name="load_state", **quiet)
        timer.tick(tick, [cache_key], [status, cache_key, timer], api_name=False, show_progress="hidden")
        demo.load(on_load, None, [cache_key, left_key, right_key, state_text], api_name=False).then(
            pick_cache, [cache_key, only_label], cache_outputs, api_name=False,
        ).then(
            lambda text: load_state(text) if text else [gr.update()] * len(state_outputs), [state_text],
            state_outputs, api_name=False, **quiet,
        )
    return demo


def _analysis_tab(ctx: AnalysisContext) -> None:
    """Fill the "Why similar" tab from `app.analysis_tab` when it is there; else say why it is empty."""
    try:
        from app.analysis_tab import build_analysis_tab
    except ModuleNotFoundError as error:
        if error.name != "app.analysis_tab":
            raise
        gr.Markdown("The analysis tools (`app/analysis_tab.py`) are not part of this build.")
        return
    build_analysis_tab(ctx)


def _json(spec: dict) -> str:
    import json

    return json.dumps(spec)


def launch(library: CacheLibrary, *, default_build: DefaultBuild | None = None, host: str = "127.0.0.1",
           port: int | None = None, share: bool = False, **kwargs) -> None:
    demo = build(library, default_build=default_build)
    demo.queue(default_concurrency_limit=2)
    demo.launch(server_name=host, server_port=port, share=share, theme=gr.themes.Soft(), css=CSS,
                max_file_size=MAX_UPLOAD, show_error=True, **kwargs)
