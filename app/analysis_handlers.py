"""What the "Why similar" tab does, as plain functions (no gradio): overlays, decomposition, NMF,
region re-ranking and transformation sensitivity for the last search.

Every picture shows an image as the model sees it (`model_view`: the centre crop, square), so the
feature grid lies evenly over it and a pixel `(x, y)` falls in cell `(y * h // side, x * w // side)`.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
from collections import OrderedDict
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
from PIL import Image, ImageDraw

from app.handlers import label_name
from app.library import CacheLibrary
from app.state import Outcome
from vfs.errors import SearchError, VFSError
from vfs.source import ZERO_NORM

SIDE = 192  # pixels of each shown image (model view)
POINTED = (255, 221, 0)  # outline of the pointed cell
VEIL = (30, 60, 200)  # the overlays' color over dissimilar cells: reads on dark images as on bright ones
VEIL_OPACITY = 0.75  # of the veil over the least similar cell shown (similar cells stay untouched)
ANGLES = (-45, -30, -15, 0, 15, 30, 45)
SCALES = (0.5, 0.71, 1.0, 1.41, 2.0)
SHOWN_SIDE = 150  # CSS pixels of each figure in the hover overlays (two layers per image)
LAYER_FEATURES_KEPT = 256  # second-layer feature maps kept, one per (model, layer, input size, image)
_layer_features: OrderedDict = OrderedDict()  # (model, layer, crop, image key) -> (C, h, w) float32


@dataclass(frozen=True)
class LayerView:
    """The shown images' features at one more layer of the cache's model."""

    layer: str  # the model's layer name
    features: np.ndarray  # (N, C, h, w) float32, the query first


@dataclass(frozen=True)
class Shown:
    """The query and its first results, as the model sees them, with their features."""

    cache_key: str  # the cache searched
    images: list  # N PIL images, SIDE x SIDE, the model's view of each image
    features: np.ndarray  # (N, C, h, w) float32, the query first
    captions: list  # N strings
    indices: list  # N dataset indices (None for an uploaded query)
    layer: str = ""  # the cache's layer (of `features`)
    second: LayerView | None = None  # the same images at another layer, for synchronised overlays


def _need(outcome: Outcome | None) -> Outcome:
    if outcome is None:
        raise SearchError("nothing to explain yet: paint a region and press Search in the Search tab first")
    return outcome


def model_view(image, preprocess, *, side: int = SIDE) -> Image.Image:
    """The part of `image` ((H, W, 3) array or PIL) the model sees (its centre crop), at side x side."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    top, left, bottom, right = preprocess.crop_box(picture.height, picture.width)
    small = max(picture.size) <= side // 2
    resample = Image.Resampling.NEAREST if small else Image.Resampling.BICUBIC
    return picture.convert("RGB").resize((side, side), resample, box=(left, top, right, bottom))


def shown_images(library: CacheLibrary, outcome: Outcome | None, *, count: int = 5, side: int = SIDE) -> Shown:
    """The query and its first `count` results (model views, features, captions)."""
    outcome = _need(outcome)
    cache = library.open(outcome.query.cache_key)
    preprocess = library.preprocess(cache)
    images = [model_view(outcome.query.image, preprocess, side=side)]
    features = [np.asarray(outcome.features, dtype=np.float32)]
    captions, indices = ["query"], [outcome.query.index]
    for rank, match in enumerate(outcome.matches[:count], start=1):
        images.append(model_view(cache.thumbnail(match.index), preprocess, side=side))
        features.append(np.asarray(cache[match.index : match.index + 1], dtype=np.float32)[0])  # (C, h, w)
        captions.append(f"#{rank} · {match.score:.3f} · {label_name(cache, match.index)} · image {match.index}")
        indices.append(match.index)
    return Shown(outcome.query.cache_key, images, np.stack(features), captions, indices,  # features (N, C, h, w)
                 layer=cache.meta.layer)


def second_layer_choices(library: CacheLibrary, outcome: Outcome | None) -> tuple[list[str], str | None]:
    """Layers of the searched cache's model worth showing beside the cache's own (its suggested layers,
    else every layer), and the default pick; `([], None)` when the model cannot be loaded here."""
    from vfs.models.features import list_layers

    outcome = _need(outcome)
    meta = library.open(outcome.query.cache_key).meta
    try:
        model = library.model(meta.model)
    except (VFSError, OSError, ImportError):  # an unknown or custom model: the overlays show one layer
        return [], None
    choices = [layer for layer in (model.layers or list_layers(model.module)) if layer != meta.layer]
    return choices, (choices[0] if choices else None)


def _image_key(outcome: Outcome, index: int | None) -> tuple:
    if index is not None:
        return outcome.query.cache_key, int(index)
    return ("query", hashlib.sha1(np.ascontiguousarray(outcome.query.image).tobytes()).hexdigest())


def shown_for(library: CacheLibrary, outcome: Outcome | None, shown: Shown | None) -> Shown:
    """`shown` when it shows `outcome` (the last search), else that search's images made now.

    The tab's `shown` is refreshed after each search finishes, which takes a moment (a second layer's
    features); an action taken in that moment still answers for the search just run, never for an
    older one, and never says "run a search first" after one.
    """
    outcome = _need(outcome)
    if shown is not None and _shows(shown, outcome):
        return shown
    return shown_images(library, outcome)


def _shows(shown: Shown, outcome: Outcome) -> bool:
    results = [match.index for match in outcome.matches[: len(shown.indices) - 1]]
    return (shown.cache_key == outcome.query.cache_key and shown.indices == [outcome.query.index, *results]
            and np.array_equal(shown.features[0], np.asarray(outcome.features, dtype=np.float32)))


def with_second_layer(library: CacheLibrary, outcome: Outcome | None, shown: Shown, layer: str | None) -> Shown:
    """`shown` with its images' features at `layer` of the cache's model too (`None` drops the second
    layer). Dataset images are read as the library has them (originals, else thumbnails); each image's
    features are extracted once per (model, layer, input size) and kept."""
    if not layer:
        return replace(shown, second=None)
    outcome = _need(outcome)
    cache = library.open(shown.cache_key)
    preprocess = library.preprocess(cache)
    extractor = library.extractor(cache.meta.model, layer, preprocess=preprocess)
    keys = [(cache.meta.model, layer, preprocess.crop, _image_key(outcome, index)) for index in shown.indices]
    missing = [i for i, key in enumerate(keys) if key not in _layer_features]
    if missing:
        pictures = [library.picture(shown.cache_key, shown.indices[i]) if shown.indices[i] is not None
                    else Image.fromarray(np.asarray(outcome.query.image)) for i in missing]
        extracted = extractor([picture.convert("RGB") for picture in pictures]).numpy()  # (M, C, h, w)
        for i, features in zip(missing, extracted):
            _layer_features[keys[i]] = features  # (C, h, w)
    for key in keys:
        _layer_features.move_to_end(key)
    while len(_layer_features) > LAYER_FEATURES_KEPT:
        _layer_features.popitem(last=False)
    features = np.stack([_layer_features[key] for key in keys])  # (N, C, h, w)
    return replace(shown, second=LayerView(layer, features))


def _layers(shown: Shown) -> list[LayerView]:
    """Every layer shown: the cache's first, then the second when there is one."""
    return [LayerView(shown.layer, shown.features)] + ([shown.second] if shown.second is not None else [])


def _data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def cell_at(x: float, y: float, grid: tuple[int, int], *, side: int = SIDE) -> tuple[int, int]:
    """The feature cell `(row, col)` under pixel `(x, y)` of a side x side model view."""
    h, w = grid
    return min(max(int(y * h // side), 0), h - 1), min(max(int(x * w // side), 0), w - 1)


def overlay_payload(shown: Shown) -> dict:
    """Every overlay at once, for the page's script, per layer: grids[p][n][r][c] for pointing at cell p
    of image i (p = i * h * w + row * w + col), cosine mapped to a byte (0 = -1, 255 = +1), base64; and
    `to[k][q]`: the cell (row * w_k + col) of layer k that holds cell q of this layer (`map_cell`)."""
    from vfs.analysis.overlays import all_similarity_grids, map_cell

    layers = _layers(shown)
    n = shown.features.shape[0]
    payload = {"n": n, "layers": []}
    for view in layers:
        h, w = view.features.shape[-2:]
        grids = np.stack([all_similarity_grids(view.features, i) for i in range(n)])  # (N, h*w, N, h, w)
        encoded = np.round((grids + 1.0) * 127.5).astype(np.uint8)  # (N, h*w, N, h, w)
        to = []
        for other in layers:
            h2, w2 = other.features.shape[-2:]
            to.append([r * w2 + c for r, c in (map_cell(q // w, q % w, (h, w), (h2, w2)) for q in range(h * w))])
        payload["layers"].append({"name": view.layer, "h": h, "w": w, "to": to,
                                  "grids": base64.b64encode(encoded.tobytes()).decode("ascii")})
    return payload


def overlay_html(shown: Shown | None) -> str:
    """The images with a canvas over each and every overlay in data attributes; the tab's script
    recolors the canvases as the mouse moves (lighter = more similar to the pointed cell)."""
    if shown is None:
        return "<p>Run a search, then come back: the query and its results appear here.</p>"
    payload = json.dumps(overlay_payload(shown))
    layers = _layers(shown)
    box = f"width:{SHOWN_SIDE}px;height:{SHOWN_SIDE}px"
    pairs = []
    for i, (image, caption) in enumerate(zip(shown.images, shown.captions)):
        uri = _data_uri(image)
        figures = "".join(
            f'<figure class="vfs-ov-fig" id="vfs-ov-{k}-{i}" data-layer="{k}" data-index="{i}" data-cell="" '
            f'style="margin:2px;position:relative">'
            f'<img src="{uri}" style="display:block;{box}" draggable="false">'
            f'<canvas width="{SIDE}" height="{SIDE}" style="position:absolute;left:0;top:0;{box};'
            f'pointer-events:none"></canvas><figcaption style="font-size:11px">'
            f'{html.escape(view.layer)} · {view.features.shape[-2]}x{view.features.shape[-1]}</figcaption></figure>'
            for k, view in enumerate(layers))
        pairs.append(f'<div class="vfs-ov-pair" style="display:inline-block;margin:4px;vertical-align:top">'
                     f'<div style="display:flex">{figures}</div>'
                     f'<div style="font-size:12px">{html.escape(caption)}</div></div>')
    return (f'<div class="vfs-overlays" data-layers="{len(layers)}" data-payload="{html.escape(payload, quote=True)}">'
            f'{"".join(pairs)}<p class="vfs-ov-status" style="font-size:12px">Hover over any image.</p></div>')


def _shade(image: Image.Image, grid: np.ndarray, cell: tuple[int, int] | None, *, floor: float) -> Image.Image:
    """`image` veiled in `VEIL` where `grid` (h, w) cosine is low: 1 leaves it untouched, `floor` (the lowest
    cosine shown) gets `VEIL_OPACITY`, as the page script draws it. A colored veil, not black, so the
    overlay reads on dark images (Fashion-MNIST's black backgrounds) too. The pointed cell is outlined."""
    h, w = grid.shape
    floor = min(floor, 0.99)  # a grid of equal cosines (floor 1) would divide by zero
    veiled = np.clip((1.0 - grid) / (1.0 - floor), 0.0, 1.0) * VEIL_OPACITY  # (h, w) opacity of the veil
    alpha = Image.fromarray((veiled * 255).astype(np.uint8)).resize(image.size, Image.Resampling.NEAREST)
    veil = Image.new("RGBA", image.size, (*VEIL, 0))
    veil.putalpha(alpha)
    out = Image.alpha_composite(image.convert("RGBA"), veil).convert("RGB")
    if cell is not None:
        side_y, side_x = image.height / h, image.width / w
        top, left = cell[0] * side_y, cell[1] * side_x
        ImageDraw.Draw(out).rectangle([left, top, left + side_x - 1, top + side_y - 1], outline=POINTED, width=2)
    return out


def overlay_images(shown: Shown, image_index: int, row: int, col: int) -> list[tuple[Image.Image, str]]:
    """The click version of the hover overlays: each image shaded for pointing at `(row, col)` (a cell
    of the cache's layer) of image `image_index`, at every shown layer (the cell mapped by `map_cell`)."""
    from vfs.analysis.overlays import layer_similarity_grids, map_cell

    layers = _layers(shown)
    grid = tuple(shown.features.shape[-2:])
    grids = layer_similarity_grids({view.layer: view.features for view in layers}, image_index, row, col,
                                   grid=grid)  # layer -> (N, h_l, w_l)
    items = []
    for view in layers:
        cell = map_cell(row, col, grid, tuple(view.features.shape[-2:]))
        floor = float(grids[view.layer].min())
        items += [(_shade(image, grids[view.layer][i], cell if i == image_index else None, floor=floor),
                   f"{view.layer} · {caption}" if len(layers) > 1 else caption)
                  for i, (image, caption) in enumerate(zip(shown.images, shown.captions))]
    return items


def _heat(image: Image.Image, values: np.ndarray, scale: float) -> Image.Image:
    """`image` under a diverging heatmap of `values` (h, w): red positive, blue negative, bilinear."""
    _h, _w = values.shape
    scaled = np.clip(values / max(scale, ZERO_NORM), -1.0, 1.0)  # (h, w); an all-zero map stays 0
    small = Image.fromarray(((scaled + 1.0) * 127.5).astype(np.uint8))
    big = np.asarray(small.resize(image.size, Image.Resampling.BILINEAR), np.float32) / 127.5 - 1.0  # (S, S)
    color = np.zeros((*big.shape, 4), np.uint8)  # (S, S, 4)
    color[..., 0] = np.where(big > 0, 230, 30)
    color[..., 2] = np.where(big > 0, 30, 230)
    color[..., 3] = (np.abs(big) * 170).astype(np.uint8)
    return Image.alpha_composite(image.convert("RGBA"), Image.fromarray(color, "RGBA")).convert("RGB")


def why_images(shown: Shown, rank: int, *, pooling: str = "avg") -> tuple[Image.Image, Image.Image, str]:
    """Stylianou et al.'s decomposition of query vs result `rank` (1 = best): where each image's pooled
    embedding meets the other's. Both maps sum to the cosine of the pooled embeddings."""
    from vfs.analysis.decompose import decompose

    if not 1 <= rank < len(shown.images):
        raise SearchError(f"result #{rank} is not shown: pick 1..{len(shown.images) - 1}")
    map_q, map_r, score = decompose(shown.features[0], shown.features[rank], pooling=pooling)
    scale = max(np.abs(map_q).max(), np.abs(map_r).max())
    text = (f"{pooling} pooling: cosine of the pooled embeddings {score:.3f} = sum of the query map "
            f"{map_q.sum():.3f} = sum of the result map {map_r.sum():.3f}. Red cells add to the "
            "similarity, blue cells take from it (one color scale for both).")
    return _heat(shown.images[0], map_q, scale), _heat(shown.images[rank], map_r, scale), text


def factor_images(shown: Shown, *, k: int = 4, negatives: str = "clip") -> tuple[list, str]:
    """NMF of the shown images' activations: each component one color, blended over the images."""
    from vfs.analysis.overlays import PALETTE, factorize, render_factors

    factors = factorize(shown.features, k=k, negatives=negatives)
    colors = render_factors(factors.maps)  # (N, h, w, 3)
    items = []
    for image, color, caption in zip(shown.images, colors, shown.captions):
        layer = Image.fromarray(color).resize(image.size, Image.Resampling.NEAREST)
        items.append((Image.blend(image.convert("RGB"), layer, 0.6), caption))
    names = ", ".join(f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}" for r, g, b in PALETTE[:k])
    return items, (f"{k} components ({names}); negatives: {negatives}; "
                   f"reconstruction error {factors.reconstruction_error:.3g}")


def rerank_items(library: CacheLibrary, outcome: Outcome | None, *, pooling: str = "avg", k: int = 8) -> list:
    """The cache ranked by how much the painted region explains each image's pooled similarity."""
    from vfs.analysis.decompose import rerank_region

    outcome = _need(outcome)
    cache = library.open(outcome.query.cache_key)
    exclude = [outcome.query.index] if outcome.query.index is not None else None
    matches = rerank_region(outcome.features, outcome.weights, cache, pooling=pooling, k=k, exclude=exclude)
    preprocess = library.preprocess(cache)
    return [(model_view(cache.thumbnail(m.index), preprocess),
             f"image {m.index} · {label_name(cache, m.index)} · region {m.score:.3f} · whole {m.similarity:.3f}")
            for m in matches]


def sensitivity_spec(library: CacheLibrary, outcome: Outcome | None, row: int, col: int, *,
                     kind: str = "rotate") -> tuple[dict, str]:
    """Similarity of the query's cell `(row, col)` to its corresponding cell in rotated or rescaled
    copies of the query, as a Vega-Lite line chart."""
    from vfs.analysis.sensitivity import transform_sensitivity

    outcome = _need(outcome)
    cache = library.open(outcome.query.cache_key)
    preprocess = library.preprocess(cache)
    extractor = library.extractor(cache.meta.model, cache.meta.layer, preprocess=preprocess)
    pixels = preprocess(Image.fromarray(np.asarray(outcome.query.image)))[0]  # (3, S, S)
    steps = {"rotate": {"angles": ANGLES}, "scale": {"scales": SCALES}}
    if kind not in steps:
        raise SearchError(f"kind={kind!r} is not known: use 'rotate' or 'scale'")
    result = transform_sensitivity(pixels, partial(extractor, preprocessed=True), row, col, **steps[kind])
    rows = [{"step": float(s), "cosine": None if np.isnan(v) else float(v)}
            for s, v in zip(result.steps, result.similarities)]
    title = "rotation (degrees, counter-clockwise)" if kind == "rotate" else "scale (zoom factor)"
    spec = {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "width": 480, "height": 220,
            "data": {"values": rows},
            "mark": {"type": "line", "point": True},
            "encoding": {"x": {"field": "step", "type": "quantitative", "title": title},
                         "y": {"field": "cosine", "type": "quantitative", "title": "cosine to the original cell"}}}
    outside = int(np.isnan(result.similarities).sum())
    text = f"cell ({row}, {col}) of the query" + (f"; {outside} copies moved it out of view" if outside else "")
    return spec, text
