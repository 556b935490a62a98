"""The Compare tab: the query painted in the Search tab, searched in two caches side by side.

`app/ui.py` calls `build_compare_tab(...)` inside the tab; the work is in `app.compare`.
"""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr

from app import compare as compare_
from app import handlers
from app.library import CacheLibrary
from app.wiring import options_from, readable


def build_compare_tab(library: CacheLibrary, choices: list[tuple[str, str]], query_inputs: list,
                      read_editor: Callable) -> tuple[gr.Dropdown, gr.Dropdown]:
    """Lay out the tab and wire its button; returns the two cache lists (filled when the page loads).

    `query_inputs` are the Search tab's [query_value, k, exclude, unique, only_label, picked];
    `read_editor(trigger)` copies the painted editor into query_value before the server event runs.
    """
    @readable
    def run_compare(left, right, value, k, exclude, unique, only_label, picked,
                    progress=gr.Progress()):  # noqa: B008
        if not left or not right:
            raise gr.Error("pick two caches to compare (left and right)")
        comparison, notes = compare_.compare(library, left, right, value, picked,
                                             options_from(k, exclude, unique, only_label),
                                             progress=lambda fraction, text: progress(fraction, desc=text))
        for note in notes:
            gr.Warning(note)
        left_items, right_items = comparison.items(library)
        grids = [handlers.grid_preview(library, key, value) for key in (left, right)]
        return comparison.summary(library), *grids, left_items, right_items

    gr.Markdown("The query painted in the Search tab, searched in two caches of the same dataset "
                "(two models, or two layers of one model), with the same options.")
    with gr.Row():
        left_key = gr.Dropdown(label="left cache", choices=choices, elem_id="vfs-cache-a",
                               allow_custom_value=True)
        right_key = gr.Dropdown(label="right cache", choices=choices, elem_id="vfs-cache-b",
                                allow_custom_value=True)
    compare_button = gr.Button("Compare", variant="primary", elem_id="vfs-compare")
    summary = gr.Markdown("", elem_id="vfs-compare-summary")
    with gr.Row():
        left_grid = gr.Image(label="what the left model sees", type="pil", height=220,
                             interactive=False, elem_id="vfs-grid-a")
        right_grid = gr.Image(label="what the right model sees", type="pil", height=220,
                              interactive=False, elem_id="vfs-grid-b")
    with gr.Row():
        left_results = gr.Gallery(label="left", columns=3, height=520, elem_id="vfs-results-a",
                                  object_fit="contain", format="png")
        right_results = gr.Gallery(label="right", columns=3, height=520, elem_id="vfs-results-b",
                                   object_fit="contain", format="png")
    read_editor(compare_button.click).success(
        run_compare, [left_key, right_key, *query_inputs],
        [summary, left_grid, right_grid, left_results, right_results], api_name="compare",
        show_progress_on=[summary],  # progress and an error show once, on the summary (not on five panels)
    )
    return left_key, right_key
