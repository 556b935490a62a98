"""The ImageEditor's value as plain arrays: the image painted on, the painted mask, and back.

`gr.ImageEditor(type="numpy", image_mode="RGBA", layers=False)` gives a dict
`{"background", "layers", "composite"}` of (H, W, 4) uint8 arrays; the mask is the OR over layers
of alpha > 0. No gradio here.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from app import drawing
from vfs.errors import DatasetError

MAX_SIDE = 1024  # an upload with a longer side than this is downscaled to it first
MAX_PIXELS = 40_000_000  # an upload with more pixels than this is refused
MAX_UPLOAD_MB = 30  # gradio refuses a bigger file before any handler sees it (`launch(max_file_size=...)`)
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")  # what an upload may be (PIL names)


def editor_image(value: dict | np.ndarray | None) -> np.ndarray | None:
    """The background the user painted on as (H, W, 3) uint8 (transparent pixels over white); None if none."""
    if isinstance(value, dict):
        value = value.get("background") if value.get("background") is not None else value.get("composite")
    if value is None:
        return None
    return to_rgb(np.asarray(value))


def to_rgb(pixels: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) -> (H, W, 3) uint8, alpha composited over white."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]  # (H, W, 1)
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4) or min(pixels.shape[:2]) < 1:
        raise DatasetError(
            f"cannot read an image of shape {pixels.shape}: use a PNG or JPEG photo (RGB or grey)"
        )
    if pixels.dtype != np.uint8:
        pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    if pixels.shape[2] == 1:
        return np.repeat(pixels, 3, axis=2)  # (H, W, 3)
    if pixels.shape[2] == 4:
        alpha = pixels[..., 3:4].astype(np.float32) / 255  # (H, W, 1)
        blended = pixels[..., :3] * alpha + 255 * (1 - alpha)  # (H, W, 3)
        return np.round(blended).astype(np.uint8)
    return pixels


def editor_mask(value: dict | None, *, shape: tuple[int, int] | None = None) -> np.ndarray | None:
    """The painted region (H, W) bool: the OR over layers of alpha > 0.

    A layer of another size is resized (nearest) to the background's; with no layers, pixels where
    the composite differs from the background count as painted. None when there is no image.
    """
    if not isinstance(value, dict):
        return None
    background = value.get("background")
    composite = value.get("composite")
    reference = background if background is not None else composite
    if shape is None:
        if reference is None:
            return None
        shape = np.asarray(reference).shape[:2]
    mask = np.zeros(shape, dtype=bool)  # (H, W)
    layers = [layer for layer in (value.get("layers") or []) if layer is not None]
    for layer in layers:
        layer = np.asarray(layer)
        if layer.ndim != 3 or layer.shape[2] != 4:
            continue  # a layer without alpha carries no stroke we can tell apart
        painted = layer[..., 3] > 0  # (h, w)
        if painted.shape != tuple(shape):
            painted = np.asarray(Image.fromarray(painted).resize(shape[::-1], Image.Resampling.NEAREST))
        mask |= painted
    if not layers and background is not None and composite is not None:
        background, composite = np.asarray(background), np.asarray(composite)
        if background.shape == composite.shape and background.shape[:2] == tuple(shape):
            mask |= (
                np.any(background != composite, axis=-1) if background.ndim == 3 else background != composite
            )
    return mask


def fit_image(
    image: np.ndarray, mask: np.ndarray | None = None, *, max_side: int = MAX_SIDE
) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    """Downscale an over-large query (and its mask, nearest) to `max_side`; refuse a huge one.

    Returns (image, mask, note) where note says what was done, or None.
    """
    height, width = image.shape[:2]
    if height * width > MAX_PIXELS:
        raise DatasetError(
            f"the image is {width}x{height} ({height * width:,} pixels); the limit is {MAX_PIXELS:,} pixels: "
            f"downscale it (about {max_side} px on the longer side is plenty) and upload again"
        )
    if max(height, width) <= max_side:
        return image, mask, None
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))
    if mask is not None:
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
    return small, mask, f"the image was {width}x{height}; it was downscaled to {size[0]}x{size[1]}"


def open_upload(source: str | Path | bytes, *, mask_layer: bool = False, max_side: int = MAX_SIDE) -> np.ndarray:
    """An uploaded image file as (H, W, 4) uint8 RGBA, at most `max_side` on its longer side.

    The header is read first (PIL opens lazily): a file that is not an image of `FORMATS`, or one
    with more than MAX_PIXELS pixels, is refused before any pixel is decoded; a larger one is decoded
    already shrunk (JPEG's DCT scaling via `draft`, then an integer box `reduce`) and resized, so an
    8000x6000 photo costs well under a second. `mask_layer` resizes with nearest neighbours, so a
    painted layer's alpha (the mask) stays exactly 0 or what was painted. Messages never name the
    server's file.
    """
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else source)
    except Image.DecompressionBombError:
        raise DatasetError(
            f"the image has more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels; the limit is {MAX_PIXELS:,}: "
            f"downscale it (about {max_side} px on the longer side is plenty) and upload again"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise DatasetError(
            f"this file is not an image this app can read (it reads {', '.join(FORMATS)}); a PDF or "
            "a document renamed to .png is not an image: export a PNG or JPEG and upload that"
        ) from None
    with image:
        width, height = image.size
        if image.format not in FORMATS:
            raise DatasetError(
                f"this file is a {image.format} image; this app reads {', '.join(FORMATS)}: "
                "save it as PNG or JPEG and upload again"
            )
        if width * height > MAX_PIXELS:
            raise DatasetError(
                f"the image is {width}x{height} ({width * height:,} pixels); the limit is {MAX_PIXELS:,} "
                f"pixels: downscale it (about {max_side} px on the longer side is plenty) and upload again"
            )
        try:
            if max(width, height) > max_side:
                scale = max_side / max(width, height)
                size = (max(1, round(width * scale)), max(1, round(height * scale)))
                if not mask_layer:
                    image.draft("RGB", size)  # JPEG: decode at 1/2, 1/4 or 1/8 scale; others: no-op
                if image.mode not in ("RGB", "RGBA", "L", "LA"):  # palette, 16-bit, CMYK: resize in RGBA
                    image = image.convert("RGBA")
                resample = Image.Resampling.NEAREST if mask_layer else Image.Resampling.BICUBIC
                image = image.resize(size, resample, reducing_gap=None if mask_layer else 2.0)
            return np.asarray(image.convert("RGBA"))  # (H, W, 4)
        except (OSError, ValueError, SyntaxError):  # truncated or damaged pixel data
            raise DatasetError(
                f"this {image.format} file is damaged (its pixels cannot be decoded): export it again and upload"
            ) from None


def editor_value(image: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """An ImageEditor value showing `image` (H, W, 3) with `mask` (H, W) as a painted layer."""
    layers = []
    composite = image
    if mask is not None and mask.any():
        layer = np.zeros((*mask.shape, 4), dtype=np.uint8)  # (H, W, 4)
        layer[mask] = (*drawing.SHADE, 255)
        layers = [layer]
        composite = image.copy()
        composite[mask] = drawing.SHADE
    return {"background": image, "layers": layers, "composite": composite}
