"""The Search tab: the query column (editor, where its image comes from, the search options and
button), the results column (gallery, a result seen large, the history), the dataset pages and
example photos, the score plot, and export and share.

Layout and wiring only; the callbacks are `app.search_actions.SearchActions`. The visible editor is
only ever an output of server events (docs/design.md, "App"): each click that needs its value copies
it first, in the page, into the hidden `query_value` (`read_editor`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import gradio as gr

from app.search_actions import PICK_HINT, SearchActions
from app.state import MAX_K
from app.wiring import ALL_LABELS, COPY_EDITOR, UNIQUE_LABELS, read_uploads_header_first

MIN_COLUMN = 420  # px: below two of these side by side (a window under ~880 px), the results go under the
# query column, so the Search button stays right under the editor and the gallery keeps its 4 columns
# Runs in the page after a search: the share string as a link to this page that runs the query on open.
SHARE_LINK = "(text) => text ? location.origin + location.pathname + '?state=' + text : ''"


@dataclass(frozen=True)
class SearchTab:
    """The components other parts of the page read or write, and the search events."""

    editor: gr.ImageEditor       # the painted editor: an output only
    query_value: gr.ImageEditor  # hidden copy of the editor made at each click: what server events read
    picked: gr.State             # app.handlers.Picked | None: the dataset image in the editor
    options: list                # [k, exclude, unique, only_label]
    unique: gr.Radio
    only_label: gr.Dropdown
    dataset: gr.Gallery          # the dataset's current page of thumbnails
    page: gr.State               # its page number (0-based)
    page_label: gr.Markdown
    link: gr.Textbox             # the share link (filled in the page from the share string)
    message: gr.Markdown         # where every event of the tab shows its progress and its error, once
    last: gr.State               # app.state.Outcome | None of the last search
    last_query: gr.State         # app.state.Query | None of the last search
    cleared: list                # outputs that a cache switch empties (results, summary, plot, share, detail)
    searches: list               # every event that runs a search (a cache switch cancels them)
    load_state: object           # the callback that loads a share string (returns `state_outputs`' values)
    state_outputs: list          # what loading a share string fills
    loaded: gr.State             # True once a share string was loaded (the search then runs at once)
    search_inputs: list          # [cache_key, query_value, *options, picked, history]
    search_outputs: list


def read_editor(trigger, editor, query_value):
    """`trigger` copies the painted editor into `query_value` in the page; chain the server event on it."""
    return trigger(None, [editor], [query_value], js=COPY_EDITOR, api_name=False, queue=False)


def build_search_tab(actions: SearchActions, cache_key: gr.Dropdown) -> SearchTab:
    """Lay out the tab (inside its `gr.Tab`) and wire its events."""
    picked, page, last, last_query, position = gr.State(None), gr.State(0), gr.State(None), gr.State(None), gr.State(0)
    history, loaded, shown = gr.State([]), gr.State(False), gr.State(None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=MIN_COLUMN):
            editor = gr.ImageEditor(
                label="Query: paint the region to search for", type="numpy", image_mode="RGBA", layers=False,
                transforms=(), sources=("upload", "clipboard"), height=420, elem_id="vfs-editor", format="png",
                brush=gr.Brush(default_size=24, colors=["#ff7800"], default_color="#ff7800", color_mode="fixed"),
                eraser=gr.Eraser(default_size=24), canvas_size=(400, 400),
            )
            picked_label = gr.Markdown(PICK_HINT, elem_id="vfs-picked", elem_classes="vfs-small")
            with gr.Row(equal_height=True):
                random_button = gr.Button("Random image", size="sm", elem_id="vfs-random")
                index_box = gr.Number(show_label=False, placeholder="image #", precision=0, minimum=0,
                                      elem_id="vfs-index", min_width=90, container=False)
                open_index = gr.Button("Open #", size="sm", elem_id="vfs-open-index")
            search_button = gr.Button("Search", variant="primary", elem_id="vfs-search")
            with gr.Group():
                with gr.Row():
                    k = gr.Slider(1, MAX_K, value=12, step=1, label="results (k)", elem_id="vfs-k", min_width=160)
                    unique = gr.Radio(list(UNIQUE_LABELS)[:2], value="no limit", label="at most",
                                      elem_id="vfs-unique", min_width=160)
                with gr.Row():
                    only_label = gr.Dropdown([ALL_LABELS], value=ALL_LABELS, label="only images labelled",
                                             elem_id="vfs-only-label", allow_custom_value=True)
                    exclude = gr.Checkbox(True, label="exclude the query image", elem_id="vfs-exclude")
                candidates = gr.Number(
                    0, precision=0, minimum=0, elem_id="vfs-candidates",
                    label="two-stage candidates M (0 = exact search)",
                    info="for caches with a coarse index (python -m vfs index-coarse): approximate, "
                         "exact scores of the M images the index ranks best")
            grid = gr.Image(label="What the model sees: crop, grid, painted cells", type="pil", height=240,
                            elem_id="vfs-grid", interactive=False)  # a longer label covers the picture
            query_value = read_uploads_header_first(gr.ImageEditor(  # what the server reads: a copy made
                type="numpy", image_mode="RGBA", layers=False, transforms=(), format="png", visible=False,
                label="query (painted image)",  # at each click
            ))
        with gr.Column(scale=6, min_width=MIN_COLUMN):
            message = gr.Markdown("", elem_id="vfs-message")
            summary = gr.Markdown("", elem_id="vfs-summary", elem_classes="vfs-small")
            results = gr.Gallery(label="Most similar regions (rank · cosine · label): click one to see it large",
                                 columns=4, height=520, object_fit="contain", elem_id="vfs-results", format="png",
                                 allow_preview=False)
            with gr.Group(visible=False, elem_id="vfs-detail") as detail:
                with gr.Row(equal_height=False):
                    detail_image = gr.Image(type="pil", height=300, show_label=False, interactive=False,
                                            elem_id="vfs-detail-image", scale=3)
                    with gr.Column(scale=2, min_width=200):
                        detail_text = gr.Markdown("", elem_id="vfs-detail-text")
                        explore_button = gr.Button("Search from this result (its window painted)",
                                                   variant="primary", size="sm", elem_id="vfs-explore")
                        close_button = gr.Button("Close", size="sm", elem_id="vfs-detail-close")
            history_list = gr.Dropdown([], value=None, label="Go back to an earlier query (this page's history)",
                                       elem_id="vfs-history", interactive=True)
    with gr.Row(equal_height=False):
        with gr.Column(scale=6, min_width=340):
            with gr.Accordion("Browse the dataset", open=True):
                dataset = gr.Gallery(columns=6, height=250, allow_preview=False, object_fit="contain",
                                     elem_id="vfs-dataset", format="png", show_label=False)
                with gr.Row(equal_height=True):
                    prev_page = gr.Button("◀ previous", size="sm", elem_id="vfs-prev")
                    page_label = gr.Markdown("page 1 of 1", elem_id="vfs-page")
                    next_page = gr.Button("next ▶", size="sm", elem_id="vfs-next")
        with gr.Column(scale=4, min_width=340):
            example_gallery = gr.Gallery(actions.examples, label="Example photos (uploaded queries)", columns=4,
                                         height=140, allow_preview=False, object_fit="cover", elem_id="vfs-examples")
    gr.Markdown("**Best-window score of every image, by label** (boxes: quartiles; dots: the results shown)",
                elem_classes="vfs-small")
    plot = gr.Plot(show_label=False, elem_id="vfs-plot")
    with gr.Accordion("Export and share", open=True):
        link = gr.Textbox(label="Link that opens this page and runs this query (copy it)", elem_id="vfs-link",
                          buttons=["copy"], lines=1, max_lines=2, interactive=False)
        with gr.Row():
            export_button = gr.Button("Export results (JSON + CSV)", elem_id="vfs-export")
            files = gr.File(label="files", file_count="multiple", elem_id="vfs-files", height=100)
        share = gr.Textbox(label="Share string (paste it in 'Load a state', or add ?state=... to the URL)",
                           elem_id="vfs-share", buttons=["copy"], lines=1, max_lines=2)
        with gr.Row():
            state_text = gr.Textbox(label="Load a state", elem_id="vfs-state-text", scale=4)
            load_button = gr.Button("Load state", elem_id="vfs-load-state", scale=1)

    # ---- events: every server event shows its progress and its error on `message` only
    on_message = {"show_progress_on": [message]}
    put_outputs = [editor, query_value, picked, grid, picked_label, shown]
    search_inputs = [cache_key, query_value, k, exclude, unique, only_label, picked, history, candidates]
    search_outputs = [results, summary, grid, plot, share, last, last_query, k, history, history_list, detail]

    def then_search(event):
        searched = event.success(actions.search, search_inputs, search_outputs, api_name=False, **on_message)
        searched.then(None, [share], [link], js=SHARE_LINK, api_name=False, queue=False)
        return searched

    button_search = read_editor(search_button.click, editor, query_value).success(
        actions.search, search_inputs, search_outputs, api_name="search", **on_message)
    button_search.then(None, [share], [link], js=SHARE_LINK, api_name=False, queue=False)
    for button, step in ((prev_page, -1), (next_page, 1)):
        button.click(functools.partial(actions.turn_page, step=step), [cache_key, page], [dataset, page, page_label],
                     api_name=False, **on_message)
    dataset.select(actions.pick_from_page, [cache_key, page], put_outputs, api_name=False, **on_message)
    example_gallery.select(actions.put_example, [cache_key], put_outputs, api_name=False, **on_message)
    random_button.click(actions.pick_random, [cache_key], put_outputs, api_name="random_image", **on_message)
    open_index.click(actions.pick_index, [cache_key, index_box], put_outputs, api_name="open_image", **on_message)
    read_editor(editor.upload, editor, query_value).success(
        actions.put_upload, [cache_key, query_value, shown], put_outputs, api_name=False, **on_message)
    read_editor(cache_key.input, editor, query_value).success(  # the dimmed outside follows the cache's crop
        actions.reveil, [cache_key, query_value, shown], [editor, query_value, grid, shown], api_name=False,
        **on_message)
    editor.clear(actions.cleared, None, [query_value, picked, grid, picked_label, shown], api_name=False, **on_message)
    read_editor(editor.apply, editor, query_value).success(
        actions.preview, [cache_key, query_value], [grid], api_name=False, **on_message)
    results.select(actions.show_detail, [last], [detail, detail_image, detail_text, position], api_name=False,
                   **on_message)
    close_button.click(lambda: gr.update(visible=False), None, [detail], api_name=False, queue=False)
    explored = then_search(explore_button.click(
        actions.explore, [last, position], [cache_key, *put_outputs], api_name=False, **on_message))
    went_back = then_search(history_list.input(
        actions.go_back, [history, history_list], [cache_key, *put_outputs], api_name=False, **on_message))
    export_button.click(actions.export, [last], [files], api_name="export", **on_message)
    state_outputs = [cache_key, *put_outputs, k, exclude, unique, only_label, candidates, loaded]
    loaded_search = then_search(load_button.click(actions.load_state, [state_text], state_outputs,
                                                  api_name="load_state", **on_message))
    return SearchTab(
        editor=editor, query_value=query_value, picked=picked, options=[k, exclude, unique, only_label],
        unique=unique, only_label=only_label, dataset=dataset, page=page, page_label=page_label, link=link, message=message,
        last=last, last_query=last_query, cleared=[results, summary, plot, share, link, detail],
        searches=[button_search, explored, went_back, loaded_search], load_state=actions.load_state,
        state_outputs=state_outputs, loaded=loaded, search_inputs=search_inputs, search_outputs=search_outputs,
    )
