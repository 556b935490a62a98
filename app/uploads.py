"""Uploaded query images kept by content hash while the server runs, so an upload can be shared.

A share string (`app.state`) names a dataset image by index and id; an upload has neither, so the
server keeps its pixels under a hash of them and the string names the hash. The images live in
this process's memory: a link to an upload works until the server restarts (or until `KEPT` newer
uploads have pushed it out), and says so when it no longer does. No gradio here.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np

from vfs.errors import DatasetError

KEPT = 64  # uploads kept (the oldest is dropped first); at most ~0.8 MB each at 512 px a side


class KeptImages:
    """Private read-only copies of images (H, W, 3) uint8 by name, the `size` last kept or asked for."""

    def __init__(self, size: int):
        self.size = size
        self._images: OrderedDict[str, np.ndarray] = OrderedDict()  # name -> image, oldest first
        self._lock = threading.Lock()

    def keep(self, name: str, image: np.ndarray) -> None:
        with self._lock:
            if name not in self._images:
                kept = np.array(image, dtype=np.uint8)  # a private copy
                kept.flags.writeable = False
                self._images[name] = kept
            self._images.move_to_end(name)
            while len(self._images) > self.size:
                self._images.popitem(last=False)

    def get(self, name: str) -> np.ndarray | None:
        with self._lock:
            return self._images.get(name)


_images = KeptImages(KEPT)  # digest -> the upload


def digest(image: np.ndarray) -> str:
    """The name of `image` (H, W, 3) uint8: 16 hex digits of the SHA-256 of its shape and pixels."""
    pixels = np.ascontiguousarray(image, dtype=np.uint8)
    return hashlib.sha256(str(pixels.shape).encode() + pixels.tobytes()).hexdigest()[:16]


def remember(image: np.ndarray) -> str:
    """Keep `image` (H, W, 3) uint8 for later links; return its digest."""
    name = digest(image)
    _images.keep(name, image)
    return name


def recall(name: str) -> np.ndarray:
    """The image kept as `name`; `DatasetError` when this server no longer holds it."""
    image = _images.get(str(name))
    if image is None:
        raise DatasetError(
            f"the uploaded image of this link ({name}) is not on this server any more: uploads are kept "
            f"in memory only while the server runs (the last {KEPT}); upload the image again and make a new link"
        )
    return image
