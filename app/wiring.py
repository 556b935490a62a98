"""What the page (`app.ui`) and its tabs (`app.compare_tab`, `app.analysis_tab`) share: the one
place where handler errors become `gr.Error` messages (`readable`), the search options read from
the controls, and the context the "Why similar" tab is built with. Imports no other gradio module
of the app, so the arrows run one way: `ui -> tabs -> wiring`.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import gradio as gr
from gradio.data_classes import FileData

from app.editor import open_upload
from app.library import CacheLibrary
from app.state import SearchOptions
from vfs.errors import VFSError

log = logging.getLogger(__name__)

UNIQUE_LABELS = {"no limit": "none", "one per label": "label", "one per domain": "domain"}
ALL_LABELS = "all labels"

# Runs in the page: copies the painted editor's value into the hidden `query_value` editor that the
# server events read. Gradio's page re-reads (re-exports and re-uploads: 0.1-0.3 s alone on software
# WebGL, ~1 s when a dozen pile up) every component that was ever an input or progress target of a
# server event, on every status message of any event; so the visible editor is never one: it is read
# once per click, here (docs/design.md, "App").
COPY_EDITOR = "(value) => value"

@dataclass(frozen=True)
class AnalysisContext:
    """What the "Why similar" tab gets: `app.analysis_tab.build_analysis_tab(ctx)`, called inside its Tab.

    Components are for wiring events (`inputs=[ctx.cache_key, ctx.results]`); values are what
    the handlers see when such an event runs.
    """

    library: CacheLibrary    # .open(key) -> FeatureCache in RAM; .model(name) -> LoadedModel;
                             # .extractor(model, layer) -> FeatureExtractor; .preprocess(cache) -> Preprocess
    cache_key: gr.Dropdown   # value: str, library key of the selected cache ("" or None when none)
    editor: gr.ImageEditor   # value: the editor dict as painted at the last Search/Compare click (a hidden
                             # copy: never the visible editor, see COPY_EDITOR);
                             # `handlers.read_query(library, key, value, picked)` -> (app.state.Query, notes)
                             # reads it (raises MaskError on an empty mask)
    picked: gr.State         # value: app.handlers.Picked | None, the dataset image last put in the editor
    query: gr.State          # value: app.state.Query | None, the query of the last search
    results: gr.State        # value: app.state.Outcome | None, the last search: .matches (list[vfs.Match]),
                             # .best (vfs.BestWindows), .weights (h, w), .features (C, h, w), .options
    searched: tuple          # every event that runs a search (gradio Dependencies: the Search button, a
                             # result explored, the history, a shared link): `for event in ctx.searched:
                             # event.then(fn, ...)` runs after each search



def read_uploads_header_first(component: gr.ImageEditor) -> gr.ImageEditor:
    """Make `component` (the hidden editor the server reads) read each image with `app.editor.open_upload`.

    Gradio's own preprocessing decodes every upload whole before a handler runs (30 s and 1.8 GB for
    an 8000x6000 photo here, a raw PIL error naming a server path for a PDF). With this the header
    is read first: a file that is not an image, or too large, is refused with a message, and a large
    one arrives already downscaled. Gradio reads the background and composite with
    `flatten_on_white=True` and painted layers without: layers are resized with nearest neighbours.
    (An instance attribute, not a subclass: gradio writes a .pyi file beside any module that
    defines a component class.)
    """

    def convert_and_format_image(file, flatten_on_white: bool = False):
        if file is None:
            return None
        source = file.path if isinstance(file, FileData) else bytes(file)
        try:
            return open_upload(source, mask_layer=not flatten_on_white)  # (H, W, 4) uint8
        except VFSError as error:
            raise gr.Error(str(error), title=type(error).__name__) from None

    component.convert_and_format_image = convert_and_format_image
    return component


def readable(fn):
    """Run a handler; a library error becomes its message in a `gr.Error`, anything else a short one."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except VFSError as error:
            raise gr.Error(str(error), title=type(error).__name__) from None
        except MemoryError:
            raise gr.Error("out of memory: try a smaller image or a smaller cache") from None
        except Exception as error:
            log.exception("handler %s failed", fn.__name__)
            raise gr.Error(f"something went wrong ({type(error).__name__}: {error}); the details are in the "
                           "server log") from None

    return wrapper


def options_from(k, exclude, unique, only_label, candidates=0) -> SearchOptions:
    return SearchOptions(k=k, exclude_query=exclude, unique=UNIQUE_LABELS.get(unique, unique),
                         only_label=None if only_label in (None, "", ALL_LABELS) else only_label,
                         candidates=candidates or 0)


