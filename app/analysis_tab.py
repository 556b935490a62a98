"""The "Why similar" tab: similarity overlays on hover (and on click), the similarity decomposition of
a result, region re-ranking, NMF of activations and rotation/scale sensitivity of the last search.

`app/ui.py` calls `build_analysis_tab(ctx)` inside the tab; the work is in `app.analysis_handlers`.
The hover overlays are drawn in the browser: the `gr.HTML` below holds the images and every
precomputed overlay (as data attributes) and its `js_on_load` recolors canvases on mousemove.
"""

from __future__ import annotations

import json

import gradio as gr
from gradio.components.plot import PlotData

from app import analysis_handlers as analysis
from app.wiring import AnalysisContext, readable

# Runs once in the browser when the HTML component mounts; `element` is its root. Listeners sit on the
# root, so they survive re-renders of the value; the payload is re-read whenever it changes.
# the veil's color and opacity, the same as the server's click overlays draw (`analysis._shade`)
VEIL_JS = f"const VEIL = '{','.join(map(str, analysis.VEIL))}', VEIL_OPACITY = {analysis.VEIL_OPACITY};\n"
OVERLAY_JS = r"""
const memo = { text: null, data: null, bytes: null, started: null };
function payload() {
  const root = element.querySelector('.vfs-overlays');
  if (!root) return null;
  const text = root.dataset.payload;
  if (memo.text !== text) {
    const data = JSON.parse(text);
    const bytes = data.layers.map((layer) => {
      const raw = atob(layer.grids);
      const out = new Uint8Array(raw.length);
      for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
      return out;
    });
    Object.assign(memo, { text, data, bytes });
  }
  return memo;
}
// shade every image of layer k for pointing at cell (row, col) of its image `image`
function shade(m, k, image, row, col) {
  const { h, w } = m.data.layers[k];
  const n = m.data.n, cells = h * w, bytes = m.bytes[k];
  const pointed = image * cells + row * w + col;
  // the veil is stretched from the lowest cosine shown (VEIL at VEIL_OPACITY) to 1 (untouched)
  let low = 255;
  for (let q = pointed * n * cells; q < (pointed + 1) * n * cells; q++) low = Math.min(low, bytes[q]);
  const floor = Math.min(low / 127.5 - 1, 0.99);
  element.querySelectorAll('.vfs-ov-fig[data-layer="' + k + '"]').forEach((fig) => {
    const j = Number(fig.dataset.index);
    const canvas = fig.querySelector('canvas');
    const ctx = canvas.getContext('2d');
    const cw = canvas.width / w, ch = canvas.height / h;
    const base = (pointed * n + j) * cells;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    for (let r = 0; r < h; r++) {
      for (let c = 0; c < w; c++) {
        const cosine = bytes[base + r * w + c] / 127.5 - 1;
        const veiled = Math.min(Math.max((1 - cosine) / (1 - floor), 0), 1) * VEIL_OPACITY;
        ctx.fillStyle = 'rgba(' + VEIL + ',' + veiled.toFixed(3) + ')';
        const x = Math.round(c * cw), y = Math.round(r * ch);  // cells abut: no overlap draws seams
        ctx.fillRect(x, y, Math.round((c + 1) * cw) - x, Math.round((r + 1) * ch) - y);
      }
    }
    fig.dataset.cell = j === image ? row + ',' + col : '';
    fig.dataset.pointed = image + ',' + row + ',' + col;
    if (j === image) {
      ctx.strokeStyle = '#ffdd00';
      ctx.lineWidth = 2;
      ctx.strokeRect(col * cw + 1, row * ch + 1, cw - 2, ch - 2);
    }
  });
  return floor;
}
// point at cell (row, col) of image `image` in layer `layer`; every other layer follows through `to`
function paint(layer, image, row, col) {
  const m = payload();
  if (!m) return;
  const source = m.data.layers[layer];
  const q = row * source.w + col;
  const parts = m.data.layers.map((target, k) => {
    const p = source.to[k][q];
    const r = Math.floor(p / target.w), c = p % target.w;
    const floor = shade(m, k, image, r, c);
    return target.name + ' (' + r + ', ' + c + '), black = ' + floor.toFixed(2);
  });
  const status = element.querySelector('.vfs-ov-status');
  if (status) status.textContent = 'pointing at image ' + image + ': ' + parts.join('; ') +
    ' (the lowest cosine shown; untouched = 1)';
  element.dataset.pointed = layer + ',' + image + ',' + row + ',' + col;
}
function point(event) {
  const fig = event.target.closest && event.target.closest('.vfs-ov-fig');
  const m = payload();
  if (!fig || !m) return;
  const layer = m.data.layers[Number(fig.dataset.layer)];
  const rect = fig.querySelector('img').getBoundingClientRect();
  const x = event.clientX - rect.left, y = event.clientY - rect.top;
  if (x < 0 || y < 0 || x >= rect.width || y >= rect.height) return;
  const row = Math.min(layer.h - 1, Math.floor(y / rect.height * layer.h));
  const col = Math.min(layer.w - 1, Math.floor(x / rect.width * layer.w));
  paint(Number(fig.dataset.layer), Number(fig.dataset.index), row, col);
}
function start() {
  // paint the centre of the query once per new content (painting itself mutates the status text)
  const root = element.querySelector('.vfs-overlays');
  if (!root || root === memo.started) return;
  memo.started = root;
  const m = payload();
  if (m) paint(0, 0, Math.floor(m.data.layers[0].h / 2), Math.floor(m.data.layers[0].w / 2));
}
element.addEventListener('mousemove', point);
element.addEventListener('click', point);
new MutationObserver(start).observe(element, { childList: true, subtree: true, attributes: false });
start();
"""


def _plot(spec: dict) -> PlotData:
    return PlotData(type="altair", plot=json.dumps(spec))


def build_analysis_tab(ctx: AnalysisContext) -> None:
    """Lay out the tab and wire it to the last search (`ctx.results`, refreshed after each search)."""

    library = ctx.library
    shown = gr.State(None)
    cell = gr.State((0, 0))
    gr.Markdown("Why the model finds these regions similar, for the last search: the query and its first "
                "results, each shown as the model sees it (its centre crop).")
    message = gr.Markdown("", elem_id="vfs-why-message")  # where every event of the tab shows its progress
    # and its error, once (not an "Error" badge on each of its outputs); the next action clears it
    with gr.Accordion("Similarity overlays: hover over any image", open=True):
        gr.Markdown("Every cell is shaded by the cosine similarity of its features to the cell under the "
                    "pointer (yellow): lighter means more similar, black is the least similar cell shown "
                    "(Fong et al., Interactive Similarity Overlays). Each image is shown at the cache's layer "
                    "and at a second layer of the same model; pointing at either layer points at the cell "
                    "holding the same image position in the other.")
        second = gr.Dropdown([], value=None, label="second layer (none: the cache's layer only)",
                             elem_id="vfs-ov-layer2", interactive=True)
        overlays = gr.HTML(analysis.overlay_html(None), js_on_load=VEIL_JS + OVERLAY_JS, elem_id="vfs-overlays")
    with gr.Accordion("Overlays by clicking (without the page script)", open=False), gr.Row():
        query_view = gr.Image(label="click a cell of the query", type="pil", interactive=False,
                              elem_id="vfs-ov-query", height=260)
        clicked = gr.Gallery(label="similarity to the clicked cell", columns=3, height=420,
                             elem_id="vfs-ov-clicked", format="png")
    with gr.Accordion("Why this result? Similarity decomposition of pooled embeddings", open=False):
        with gr.Row():
            rank = gr.Slider(1, 5, value=1, step=1, label="result #", elem_id="vfs-why-rank")
            pooling = gr.Radio(["avg", "max"], value="avg", label="pooling", elem_id="vfs-why-pooling")
            why_button = gr.Button("Explain", elem_id="vfs-why")
        with gr.Row():
            why_query = gr.Image(label="query: where it meets the result", type="pil", height=260,
                                 interactive=False, elem_id="vfs-why-query")
            why_result = gr.Image(label="result: where it meets the query", type="pil", height=260,
                                  interactive=False, elem_id="vfs-why-result")
        why_text = gr.Markdown(elem_id="vfs-why-text")
    with gr.Accordion("Re-rank the dataset by the painted region (decomposition summed inside it)", open=False):
        with gr.Row():
            rerank_pooling = gr.Radio(["avg", "max"], value="avg", label="pooling")
            rerank_button = gr.Button("Re-rank", elem_id="vfs-rerank")
        reranked = gr.Gallery(label="ranked by the region's share of the pooled similarity", columns=4,
                              height=420, elem_id="vfs-reranked", format="png")
    with gr.Accordion("Non-negative matrix factorization of the shown activations", open=False):
        with gr.Row():
            components = gr.Slider(2, 6, value=4, step=1, label="components")
            negatives = gr.Radio(["clip", "shift"], value="clip", label="negative activations")
            nmf_button = gr.Button("Factorize", elem_id="vfs-nmf")
        factors = gr.Gallery(label="one color per component", columns=3, height=420, elem_id="vfs-nmf-out",
                             format="png")
        factors_text = gr.Markdown()
    with gr.Accordion("Sensitivity of the clicked query cell to rotation and scale", open=False):
        with gr.Row():
            kind = gr.Radio(["rotate", "scale"], value="rotate", label="transformation")
            sensitivity_button = gr.Button("Chart", elem_id="vfs-sensitivity")
        sensitivity_plot = gr.Plot(show_label=False, elem_id="vfs-sensitivity-plot")
        sensitivity_text = gr.Markdown()

    @readable
    def refresh(outcome):
        if outcome is None:
            return None, analysis.overlay_html(None), None, [], (0, 0), gr.update(choices=[], value=None)
        choices, layer = analysis.second_layer_choices(library, outcome)
        current = analysis.with_second_layer(library, outcome, analysis.shown_images(library, outcome), layer)
        h, w = current.features.shape[-2:]
        centre = (h // 2, w // 2)
        return (current, analysis.overlay_html(current), current.images[0],
                analysis.overlay_images(current, 0, *centre), centre, gr.update(choices=choices, value=layer))

    @readable
    def relayer(outcome, current, layer, pointed):
        if current is None:
            raise gr.Error("nothing to show yet: run a search first")
        current = analysis.with_second_layer(library, outcome, current, layer or None)
        return current, analysis.overlay_html(current), analysis.overlay_images(current, 0, *pointed)

    @readable
    def click(current, event: gr.SelectData):
        if current is None:
            raise gr.Error("nothing to explain yet: run a search first")
        x, y = event.index
        row, col = analysis.cell_at(x, y, tuple(current.features.shape[-2:]), side=current.images[0].width)
        return analysis.overlay_images(current, 0, row, col), (row, col)

    @readable
    def explain(outcome, current, result_rank, how):
        current = analysis.shown_for(library, outcome, current)  # the last search's, even mid-refresh
        return analysis.why_images(current, int(result_rank), pooling=how)

    @readable
    def factorize_shown(outcome, current, k, how):
        current = analysis.shown_for(library, outcome, current)
        return analysis.factor_images(current, k=int(k), negatives=how)

    @readable
    def rerank(outcome, how):
        return analysis.rerank_items(library, outcome, pooling=how)

    @readable
    def chart(outcome, pointed, how):
        spec, text = analysis.sensitivity_spec(library, outcome, *pointed, kind=how)
        return _plot(spec), text

    refresh_outputs = [shown, overlays, query_view, clicked, cell, second]
    on_message = {"show_progress_on": [message]}
    for searched in ctx.searched:
        searched.then(refresh, [ctx.results], refresh_outputs, api_name=False, show_progress="hidden", **on_message)
    second.input(relayer, [ctx.results, shown, second, cell], [shown, overlays, clicked], api_name=False,
                 **on_message)
    query_view.select(click, [shown], [clicked, cell], api_name=False, **on_message)
    why_button.click(explain, [ctx.results, shown, rank, pooling], [why_query, why_result, why_text], api_name="why", **on_message)
    nmf_button.click(factorize_shown, [ctx.results, shown, components, negatives], [factors, factors_text], api_name=False,
                     **on_message)
    rerank_button.click(rerank, [ctx.results, rerank_pooling], [reranked], api_name="rerank_region", **on_message)
    sensitivity_button.click(chart, [ctx.results, cell, kind], [sensitivity_plot, sensitivity_text], api_name=False,
                             **on_message)
