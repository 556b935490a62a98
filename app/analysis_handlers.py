"""What the "Why similar" tab does, as plain functions (no gradio): overlays, decomposition, NMF,
region re-ranking and transformation sensitivity for the last search.

Every picture shows an image as the model sees it (`model_view`: the centre crop, square), so the
feature grid lies evenly over it and a pixel `(x, y)` falls in cell `(y * h // side, x * w // side)`.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from app.library import CacheLibrary
from app.state import Outcome
from vfs.errors import SearchError

SIDE = 192  # pixels of each shown image (model view)
POINTED = (255, 221, 0)  # outline of the pointed cell
ANGLES = (-45, -30, -15, 0, 15, 30, 45)
SCALES = (0.5, 0.71, 1.0, 1.41, 2.0)


@dataclass(frozen=True)
class Shown:
    """The query and its first results, as the model sees them, with their features."""

    cache_key: str  # the cache searched
    images: list  # N PIL images, SIDE x SIDE, the model's view of each image
    features: np.ndarray  # (N, C, h, w) float32, the query first
    captions: list  # N strings
    indices: list  # N dataset indices (None for an uploaded query)


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
        captions.append(f"#{rank} · image {match.index} · {match.score:.3f}")
        indices.append(match.index)
    return Shown(outcome.query.cache_key, images, np.stack(features), captions, indices)  # features (N, C, h, w)


def _data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def cell_at(x: float, y: float, grid: tuple[int, int], *, side: int = SIDE) -> tuple[int, int]:
    """The feature cell `(row, col)` under pixel `(x, y)` of a side x side model view."""
    h, w = grid
    return min(max(int(y * h // side), 0), h - 1), min(max(int(x * w // side), 0), w - 1)


def overlay_payload(shown: Shown) -> dict:
    """Every overlay at once, for the page's script: grids[p][n][r][c] for pointing at cell p of image i
    (p = i * h * w + row * w + col), cosine mapped to a byte (0 = -1, 255 = +1), base64."""
    from vfs.overlays import all_similarity_grids

    n, _, h, w = shown.features.shape
    grids = np.stack([all_similarity_grids(shown.features, i) for i in range(n)])  # (N, h*w, N, h, w)
    encoded = np.round((grids + 1.0) * 127.5).astype(np.uint8)  # (N, h*w, N, h, w)
    return {"n": n, "h": h, "w": w, "grids": base64.b64encode(encoded.tobytes()).decode("ascii")}


def overlay_html(shown: Shown | None) -> str:
    """The images with a canvas over each and every overlay in data attributes; the tab's script
    recolours the canvases as the mouse moves (lighter = more similar to the pointed cell)."""
    if shown is None:
        return "<p>Run a search, then come back: the query and its results appear here.</p>"
    payload = json.dumps(overlay_payload(shown))
    figures = "".join(
        f'<figure class="vfs-ov-fig" data-index="{i}" style="margin:4px;display:inline-block;position:relative">'
        f'<img src="{_data_uri(image)}" width="{SIDE}" height="{SIDE}" style="display:block" draggable="false">'
        f'<canvas width="{SIDE}" height="{SIDE}" style="position:absolute;left:0;top:0;pointer-events:none">'
        f'</canvas><figcaption style="font-size:12px">{html.escape(caption)}</figcaption></figure>'
        for i, (image, caption) in enumerate(zip(shown.images, shown.captions))
    )
    return (f'<div class="vfs-overlays" data-payload="{html.escape(payload, quote=True)}">{figures}'
            '<p class="vfs-ov-status" style="font-size:12px">Hover over any image.</p></div>')


def _shade(image: Image.Image, grid: np.ndarray, cell: tuple[int, int] | None, *, floor: float) -> Image.Image:
    """`image` darkened where `grid` (h, w) cosine is low: 1 keeps it bright, `floor` (the lowest cosine
    shown) is nearly black, as the page script draws it. The pointed cell is outlined."""
    h, w = grid.shape
    floor = min(floor, 0.99)
    dark = np.clip((1.0 - grid) / (1.0 - floor), 0.0, 1.0) * 0.9  # (h, w) opacity of black
    alpha = Image.fromarray((dark * 255).astype(np.uint8)).resize(image.size, Image.Resampling.NEAREST)
    black = Image.new("RGBA", image.size, (0, 0, 0, 0))
    black.putalpha(alpha)
    out = Image.alpha_composite(image.convert("RGBA"), black).convert("RGB")
    if cell is not None:
        side_y, side_x = image.height / h, image.width / w
        top, left = cell[0] * side_y, cell[1] * side_x
        ImageDraw.Draw(out).rectangle([left, top, left + side_x - 1, top + side_y - 1], outline=POINTED, width=2)
    return out


def overlay_images(shown: Shown, image_index: int, row: int, col: int) -> list[tuple[Image.Image, str]]:
    """The click version of the hover overlays: each image shaded for pointing at `(row, col)` of
    image `image_index`."""
    from vfs.overlays import similarity_grids

    grids = similarity_grids(shown.features, image_index, row, col)  # (N, h, w)
    floor = float(grids.min())
    return [(_shade(image, grids[i], (row, col) if i == image_index else None, floor=floor), caption)
            for i, (image, caption) in enumerate(zip(shown.images, shown.captions))]


def _heat(image: Image.Image, values: np.ndarray, scale: float) -> Image.Image:
    """`image` under a diverging heatmap of `values` (h, w): red positive, blue negative, bilinear."""
    _h, _w = values.shape
    scaled = np.clip(values / max(scale, 1e-12), -1.0, 1.0)  # (h, w)
    small = Image.fromarray(((scaled + 1.0) * 127.5).astype(np.uint8))
    big = np.asarray(small.resize(image.size, Image.Resampling.BILINEAR), np.float32) / 127.5 - 1.0  # (S, S)
    colour = np.zeros((*big.shape, 4), np.uint8)  # (S, S, 4)
    colour[..., 0] = np.where(big > 0, 230, 30)
    colour[..., 2] = np.where(big > 0, 30, 230)
    colour[..., 3] = (np.abs(big) * 170).astype(np.uint8)
    return Image.alpha_composite(image.convert("RGBA"), Image.fromarray(colour, "RGBA")).convert("RGB")


def why_images(shown: Shown, rank: int, *, pooling: str = "avg") -> tuple[Image.Image, Image.Image, str]:
    """Stylianou et al.'s decomposition of query vs result `rank` (1 = best): where each image's pooled
    embedding meets the other's. Both maps sum to the cosine of the pooled embeddings."""
    from vfs.decompose import decompose

    if not 1 <= rank < len(shown.images):
        raise SearchError(f"result #{rank} is not shown: pick 1..{len(shown.images) - 1}")
    map_q, map_r, score = decompose(shown.features[0], shown.features[rank], pooling=pooling)
    scale = max(np.abs(map_q).max(), np.abs(map_r).max())
    text = (f"{pooling} pooling: cosine of the pooled embeddings {score:.3f} = sum of the query map "
            f"{map_q.sum():.3f} = sum of the result map {map_r.sum():.3f}. Red cells add to the "
            "similarity, blue cells take from it (one colour scale for both).")
    return _heat(shown.images[0], map_q, scale), _heat(shown.images[rank], map_r, scale), text


def factor_images(shown: Shown, *, k: int = 4, negatives: str = "clip") -> tuple[list, str]:
    """NMF of the shown images' activations: each component one colour, blended over the images."""
    from vfs.overlays import PALETTE, factorize, render_factors

    factors = factorize(shown.features, k=k, negatives=negatives)
    colours = render_factors(factors.maps)  # (N, h, w, 3)
    items = []
    for image, colour, caption in zip(shown.images, colours, shown.captions):
        layer = Image.fromarray(colour).resize(image.size, Image.Resampling.NEAREST)
        items.append((Image.blend(image.convert("RGB"), layer, 0.6), caption))
    names = ", ".join(f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}" for r, g, b in PALETTE[:k])
    return items, (f"{k} components ({names}); negatives: {negatives}; "
                   f"reconstruction error {factors.reconstruction_error:.3g}")


def rerank_items(library: CacheLibrary, outcome: Outcome | None, *, pooling: str = "avg", k: int = 8) -> list:
    """The cache ranked by how much the painted region explains each image's pooled similarity."""
    from vfs.decompose import rerank_region

    outcome = _need(outcome)
    cache = library.open(outcome.query.cache_key)
    exclude = [outcome.query.index] if outcome.query.index is not None else None
    matches = rerank_region(outcome.features, outcome.weights, cache, pooling=pooling, k=k, exclude=exclude)
    preprocess = library.preprocess(cache)
    return [(model_view(cache.thumbnail(m.index), preprocess),
             f"image {m.index} · region {m.score:.3f} · whole {m.similarity:.3f}") for m in matches]


def sensitivity_spec(library: CacheLibrary, outcome: Outcome | None, row: int, col: int, *,
                     kind: str = "rotate") -> tuple[dict, str]:
    """Similarity of the query's cell `(row, col)` to its corresponding cell in rotated or rescaled
    copies of the query, as a Vega-Lite line chart."""
    from vfs.sensitivity import transform_sensitivity

    outcome = _need(outcome)
    cache = library.open(outcome.query.cache_key)
    preprocess = library.preprocess(cache)
    extractor = library.extractor(cache.meta.model, cache.meta.layer, preprocess=preprocess)
    pixels = preprocess(Image.fromarray(np.asarray(outcome.query.image)))[0]  # (3, S, S)
    steps = {"rotate": {"angles": ANGLES}, "scale": {"scales": SCALES}}
    if kind not in steps:
        raise SearchError(f"kind={kind!r} is not known: use 'rotate' or 'scale'")
    result = transform_sensitivity(pixels, extractor, row, col, **steps[kind])
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
