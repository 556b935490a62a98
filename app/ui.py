"""The Gradio page: pick a cache, paint a region, see the most similar regions; compare two caches.

The page (this module) holds the cache list, the build status and the tabs: `app.search_tab` (with
its callbacks in `app.search_actions`), `app.compare_tab` and `app.analysis_tab`; these and
`app.wiring` are the only modules of the app that import gradio. Handlers (`app.handlers`,
`app.exports`, `app.compare`, `app.explore`) are plain functions; `app.wiring.readable` is the one
place where their errors become `gr.Error` messages.
"""

from __future__ import annotations

import logging
import os

import gradio as gr

from app import editor as editor_module
from app import files, handlers, upload_guard
from app.compare import default_pair
from app.compare_tab import build_compare_tab
from app.library import CacheLibrary, DefaultBuild, default_key
from app.search_actions import PER_PAGE, SearchActions
from app.search_tab import SHARE_LINK, build_search_tab, read_editor
from app.wiring import ALL_LABELS, UNIQUE_LABELS, AnalysisContext, readable

log = logging.getLogger(__name__)
MAX_UPLOAD = f"{editor_module.MAX_UPLOAD_MB}mb"  # gradio refuses bigger uploads before they reach a handler
CONCURRENCY = 2  # events of one kind (e.g. searches) run at once; see `concurrency` and bench/load.py
TICK_SECONDS = 2.0  # how often the page asks how the default build is doing, while it runs

CSS = """
#vfs-results .caption-label, #vfs-results-a .caption-label, #vfs-results-b .caption-label {
  font-size: 0.8rem; white-space: normal; overflow: visible; text-overflow: clip; max-width: none;
  line-height: 1.15; }
#vfs-summary, #vfs-status {min-height: 1.5em;}
#vfs-message {min-height: 0;}
.vfs-small {font-size: 0.85rem; color: var(--body-text-color-subdued);}
#vfs-plot {overflow-x: auto;}
"""


def build(library: CacheLibrary, *, default_build: DefaultBuild | None = None) -> gr.Blocks:
    """The whole page over `library` (and the progress of `default_build` while it runs)."""
    actions = SearchActions(library)

    def cache_choices():
        return [(entry.title, entry.key) for entry in library.entries]

    @readable
    def pick_cache(key, label):
        """Outputs: cache_info, dataset, page, page_label, only_label, unique."""
        if not key:
            return ("No cache selected (or none built yet).", [], 0, "page 1 of 1", gr.update(choices=[ALL_LABELS]),
                    gr.update())
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

    def on_load(request: gr.Request):
        library.refresh()
        choices = cache_choices()
        key = default_key(library)
        left, right = default_pair(library)
        state_text = (request.query_params.get("state") if request is not None else None) or ""
        return (gr.update(choices=choices, value=key), gr.update(choices=choices, value=left),
                gr.update(choices=choices, value=right), state_text)

    def tick(seen, left, right, key=None):
        """Outputs: status, cache_key, left, right, seen, timer. A list's value is sent only to fill an empty
        list (the cache, a Compare side): a tick answered after the user picked a cache would otherwise put
        the old pick back."""
        status, ready, running = default_build.page_status() if default_build else ("", 0, False)
        if ready == seen:
            return status, gr.update(), gr.update(), gr.update(), seen, gr.Timer(active=running)
        library.refresh()
        choices = cache_choices()
        pair = default_pair(library) if not (left and right) else (None, None)
        sides = [gr.update(choices=choices, value=value) if value else gr.update(choices=choices) for value in pair]
        first = gr.update(choices=choices, value=default_key(library)) if not key else gr.update(choices=choices)
        return status, first, *sides, ready, gr.Timer(active=running)

    first_key = default_key(library)
    with gr.Blocks(title="Visual Feature Search") as demo:
        gr.Markdown("# Visual Feature Search\nPaint a region on an image and find the dataset regions that a "
                    "vision model's layer finds most similar (cosine over the masked feature window).")
        status = gr.Markdown("", elem_id="vfs-status")
        seen = gr.State(0)  # default caches the page has listed
        state_text = gr.Textbox(visible=False)  # ?state=... of the page's URL
        with gr.Row():
            cache_key = gr.Dropdown(label="Cache (model · layer · dataset)", choices=cache_choices(),
                                    value=first_key, elem_id="vfs-cache", scale=3, interactive=True,
                                    allow_custom_value=True)  # caches built after launch are valid too
            refresh = gr.Button("↻ Refresh list", elem_id="vfs-refresh", scale=0, size="sm")
        cache_info = gr.Markdown("", elem_id="vfs-cache-info")
        with gr.Tabs():
            with gr.Tab("Search", id="search"):
                tab = build_search_tab(actions, cache_key)
            with gr.Tab("Compare", id="compare"):
                left_key, right_key = build_compare_tab(
                    library, cache_choices(), [tab.query_value, *tab.options, tab.picked],
                    lambda trigger: read_editor(trigger, tab.editor, tab.query_value),
                )
            ctx = AnalysisContext(library=library, cache_key=cache_key, editor=tab.query_value, picked=tab.picked,
                                  query=tab.last_query, results=tab.last, searched=tuple(tab.searches))
            with gr.Tab("Why similar", id="why"):
                _analysis_tab(ctx)
        timer = gr.Timer(TICK_SECONDS, active=default_build is not None and not default_build.done)

        # ---- page events: a cache picked by hand empties the results and cancels a search still running
        on_message = {"show_progress_on": [tab.message]}
        cache_outputs = [cache_info, tab.dataset, tab.page, tab.page_label, tab.only_label, tab.unique]
        cache_key.change(pick_cache, [cache_key, tab.only_label], cache_outputs, api_name="pick_cache", **on_message)
        cache_key.input(lambda: [gr.update(value=None)] * 5 + [gr.update(visible=False)], None, tab.cleared,
                        cancels=tab.searches, api_name=False, queue=False)
        refresh.click(lambda key: (library.refresh(), gr.update(choices=cache_choices(), value=key))[1],
                      [cache_key], [cache_key], api_name=False)
        timer.tick(tick, [seen, left_key, right_key, cache_key], [status, cache_key, left_key, right_key, seen, timer], api_name=False,
                   show_progress="hidden")
        demo.load(on_load, None, [cache_key, left_key, right_key, state_text], api_name=False).then(
            pick_cache, [cache_key, tab.only_label], cache_outputs, api_name=False, **on_message,
        ).then(
            tab.load_state, [state_text], tab.state_outputs, api_name=False, **on_message,
        ).success(  # a shared link runs its query at once
            actions.search_if, [tab.loaded, *tab.search_inputs], tab.search_outputs, api_name=False, **on_message,
        ).then(None, [tab.search_outputs[4]], [tab.link], js=SHARE_LINK, api_name=False, queue=False)
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


def concurrency() -> int | None:
    """How many events of one kind run at once: `GRADIO_DEFAULT_CONCURRENCY_LIMIT` (gradio's own variable:
    a number, or "none" for no limit) or `CONCURRENCY`."""
    value = os.environ.get("GRADIO_DEFAULT_CONCURRENCY_LIMIT", "").strip()
    if not value:
        return CONCURRENCY
    return None if value.lower() == "none" else int(value)


def launch(library: CacheLibrary, *, default_build: DefaultBuild | None = None, host: str = "127.0.0.1",
           port: int | None = None, share: bool = False, **kwargs) -> None:
    demo = build(library, default_build=default_build)
    # The result pictures are written once and never changed (`app.files`): served from where they are,
    # gradio neither hashes nor copies each one into its cache on every search (py-spy: that and its
    # path checks took more server time under 16 users than the search itself).
    files.FOLDER.mkdir(parents=True, exist_ok=True)
    gr.set_static_paths([files.FOLDER])
    demo.queue(default_concurrency_limit=concurrency())
    demo.launch(server_name=host, server_port=port, share=share, theme=gr.themes.Soft(), css=CSS,
                max_file_size=MAX_UPLOAD, show_error=True, head=upload_guard.head(), **kwargs)
