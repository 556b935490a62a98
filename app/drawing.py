"""Pictures the app shows: the mask on the feature grid, matched windows on thumbnails, the box plot.

Pure PIL and numpy (and a Vega-Lite spec as a dict); no gradio.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

SHADE = (255, 120, 0)  # cells the mask covers
WINDOW = (255, 40, 40)  # matched window outline
GRID_LINE = (255, 255, 255, 110)
DIM = 0.45  # brightness kept outside the region the model sees
RESULT_SIDE = 192  # results are shown at this longer side (pixels)
QUERY_SIDE = 384  # dataset images are shown for painting at this longer side


def upscale(image: Image.Image, *, side: int) -> Image.Image:
    """`image` in RGB with its longer side `side`: nearest for small images (crisp pixels), else bicubic."""
    image = image.convert("RGB")
    height, width = image.height, image.width
    scale = side / max(height, width)
    if abs(scale - 1) < 1e-6:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = max(height, width) <= side // 4
    return image.resize(size, Image.Resampling.NEAREST if small else Image.Resampling.BICUBIC)


def cell_boxes(grid: tuple[int, int], image_size: tuple[int, int], *, preprocess) -> np.ndarray:
    """(h, w, 4) boxes (top, left, bottom, right) in pixels of `image_size` (height, width), one per cell."""
    from vfs import window_to_box

    rows, cols = grid
    boxes = np.zeros((rows, cols, 4), dtype=np.float64)  # (h, w, 4)
    for row in range(rows):
        for col in range(cols):
            boxes[row, col] = window_to_box(row, col, 1, 1, grid, image_size, preprocess=preprocess)
    return boxes


def grid_overlay(image: np.ndarray, weights: np.ndarray, *, preprocess) -> Image.Image:
    """The query as the model sees it: outside the crop dimmed, each cell shaded by its weight, grid lines.

    `image` is (H, W, 3) uint8; `weights` is (h, w) in [0, 1] on the feature grid.
    """
    height, width = image.shape[:2]
    base = Image.fromarray(image).convert("RGB")
    top, left, bottom, right = preprocess.crop_box(height, width)
    dim = Image.eval(base, lambda value: int(value * DIM))
    inside = Image.new("L", base.size, 0)
    ImageDraw.Draw(inside).rectangle([left, top, right - 1, bottom - 1], fill=255)
    base = Image.composite(base, dim, inside).convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    boxes = cell_boxes(weights.shape, (height, width), preprocess=preprocess)
    for (row, col), weight in np.ndenumerate(weights):
        b_top, b_left, b_bottom, b_right = boxes[row, col]
        box = [b_left, b_top, b_right - 1, b_bottom - 1]
        if weight > 0:
            draw.rectangle(box, fill=(*SHADE, int(40 + 150 * float(weight))))
        draw.rectangle(box, outline=GRID_LINE, width=1)
    return Image.alpha_composite(base, layer).convert("RGB")


def mask_overlay(image: np.ndarray, mask: np.ndarray) -> Image.Image:
    """`image` (H, W, 3) with the painted pixels `mask` (H, W) tinted."""
    base = Image.fromarray(image).convert("RGBA")
    tint = Image.new("RGBA", base.size, (*SHADE, 0))
    alpha = Image.fromarray((np.asarray(mask, dtype=bool) * 90).astype(np.uint8))
    tint.putalpha(alpha)
    return Image.alpha_composite(base, tint).convert("RGB")


def outline_window(thumbnail: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    """`thumbnail` (already at display size) with `box` (top, left, bottom, right) outlined."""
    image = thumbnail.convert("RGB").copy()
    top, left, bottom, right = box
    line = max(2, round(max(image.size) / 90))
    ImageDraw.Draw(image).rectangle(
        [left, top, max(left, right - 1), max(top, bottom - 1)], outline=WINDOW, width=line
    )
    return image


def box_stats(scores: np.ndarray) -> dict[str, float]:
    """Tukey box: quartiles and whiskers at the last points within 1.5 IQR."""
    q1, median, q3 = np.percentile(scores, [25, 50, 75])
    spread = 1.5 * (q3 - q1)
    low = min(float(scores[scores >= q1 - spread].min()), float(q1))  # a tiny group can have its last
    high = max(float(scores[scores <= q3 + spread].max()), float(q3))  # point inside the box
    return {"q1": float(q1), "median": float(median), "q3": float(q3), "low": low, "high": high}


def score_boxplot_spec(scores: np.ndarray, labels: list[str], *, marks: list[dict] | None = None) -> dict:
    """A Vega-Lite spec: one box per label of the best-window scores, the shown results as points.

    `scores` (M,) and `labels` (M,) name per scored image; `marks` are the results
    ({"label", "score", "rank"}) drawn on top. The boxes are summarised here, so the browser gets
    one row per label instead of one per image.
    """
    labels_array = np.asarray(labels)
    rows = []
    for name in sorted(set(labels), key=lambda name: -float(np.median(scores[labels_array == name]))):
        group = scores[labels_array == name]
        rows.append({"label": name, "n": int(group.size), **box_stats(group)})
    order = [row["label"] for row in rows]
    x = {"field": "label", "type": "nominal", "sort": order, "title": None, "axis": {"labelAngle": -35}}
    y_scale = {"zero": False, "padding": 10}  # 10 px above the best score: points near 1.0 stay whole
    layers = [
        {
            "mark": {"type": "rule", "color": "#888"},
            "encoding": {
                "x": x,
                "y": {
                    "field": "low",
                    "type": "quantitative",
                    "scale": y_scale,
                    "title": "best-window cosine",
                },
                "y2": {"field": "high"},
            },
        },
        {
            "mark": {"type": "bar", "size": 18, "color": "#9ab8e0", "stroke": "#4a6fa5"},
            "encoding": {
                "x": x,
                "y": {"field": "q1", "type": "quantitative"},
                "y2": {"field": "q3"},
                "tooltip": [
                    {"field": "label"},
                    {"field": "n"},
                    {"field": "median", "format": ".3f"},
                    {"field": "q1", "format": ".3f"},
                    {"field": "q3", "format": ".3f"},
                ],
            },
        },
        {
            "mark": {"type": "tick", "color": "#1d3557", "size": 18, "thickness": 2},
            "encoding": {"x": x, "y": {"field": "median", "type": "quantitative"}},
        },
    ]
    spec = {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "width": max(320, 56 * len(rows)),
        "height": 240,
        "padding": {"top": 12, "left": 5, "right": 5, "bottom": 5},
        "datasets": {"boxes": rows, "marks": marks or []},
        "data": {"name": "boxes"},
        "layer": layers,
    }
    if marks:
        spec["layer"].append(
            {
                "data": {"name": "marks"},
                "mark": {"type": "point", "filled": True, "color": WINDOW_HEX, "size": 40},
                "encoding": {
                    "x": {**x},
                    "y": {"field": "score", "type": "quantitative"},
                    "tooltip": [{"field": "rank"}, {"field": "label"}, {"field": "score", "format": ".3f"}],
                },
            }
        )
    return spec


WINDOW_HEX = "#ff2828"
