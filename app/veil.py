"""The part of a query image the model cannot see, dimmed on the editor itself (where one paints).

A model sees only its centre crop of an image (resize the shorter side, crop the centre square), so a
stroke outside it is lost. The editor shows the image with the outside of the crop dimmed: the
"veiled" image. Its pixels go to the browser and come back unchanged with every click (the editor
returns its background as it got it), so the server swaps a veiled image back for the original it
kept (`unveil`) before reading features from it: dimming never changes what is searched. No gradio here.
"""

from __future__ import annotations

import numpy as np

from app import drawing
from app.editor import editor_image, editor_mask, editor_value
from app.uploads import KeptImages, digest

KEPT = 64  # veiled images remembered (the oldest is dropped first); ~0.6 MB each at 512 px a side
_originals = KeptImages(KEPT)  # digest of a veiled image -> its original (H, W, 3)


def crop_cuts(image_shape: tuple[int, ...], preprocess) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) in whole pixels of the crop the model sees, or None when it sees it all."""
    height, width = image_shape[:2]
    top, left, bottom, right = preprocess.crop_box(height, width)
    box = (max(0, round(top)), max(0, round(left)), min(height, round(bottom)), min(width, round(right)))
    return None if box == (0, 0, height, width) else box


def veil(image: np.ndarray, preprocess) -> np.ndarray:
    """(H, W, 3) uint8 `image` with the outside of the model's crop dimmed (to `drawing.DIM`), remembered
    for `unveil`; `image` itself when the crop keeps all of it."""
    box = crop_cuts(image.shape, preprocess)
    if box is None:
        return image
    top, left, bottom, right = box
    veiled = np.round(image.astype(np.float32) * drawing.DIM).astype(np.uint8)  # (H, W, 3)
    veiled[top:bottom, left:right] = image[top:bottom, left:right]
    _originals.keep(digest(veiled), image)
    return veiled


def unveil(image: np.ndarray) -> np.ndarray:
    """The original of a veiled `image` (H, W, 3); any other image as it is.

    A veiled image this server no longer remembers (restarted, or `KEPT` newer ones since) stays as it
    is: the model's crop ignores the dimmed part except for the resize filter's few pixels at its edge.
    """
    original = _originals.get(digest(image))
    return image if original is None else original


def veil_value(value: dict, preprocess) -> dict:
    """An editor value (as `app.editor.editor_value` makes them) showing its image veiled, mask kept."""
    image = editor_image(value)
    if image is None:
        return value
    original = unveil(image)
    veiled = veil(original, preprocess)
    if veiled is image:
        return value
    return editor_value(veiled, editor_mask(value, shape=image.shape[:2]))
