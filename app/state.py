"""What one search asks, what it found, and the shareable string that reproduces a query.

Plain data: no gradio here, so handlers, tests and the analysis tab share these types.
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np

from vfs.errors import DatasetError

UNIQUE_CHOICES = ("none", "label", "domain")  # at most one result per ... ("none": no limit)
STATE_VERSION = 1


@dataclass(frozen=True)
class SearchOptions:
    k: int = 12  # how many results to show
    exclude_query: bool = True  # leave the query image itself out of the results
    unique: str = "none"  # "none", "label" or "domain": at most one result per label/domain
    only_label: str | None = None  # keep only images with this label name; None keeps all


@dataclass(frozen=True)
class Query:
    cache_key: str  # library key of the cache searched
    image: np.ndarray = field(repr=False)  # (H, W, 3) uint8: the pixels painted on, as displayed
    mask: np.ndarray = field(repr=False)  # (H, W) bool: the painted region, same size as `image`
    index: int | None = None  # dataset index of the image; None for an upload or example
    image_id: str | None = None  # the cache's id of that image (stable across caches of one dataset)


@dataclass(frozen=True)
class Outcome:
    query: Query  # what was asked
    options: SearchOptions  # how it was asked
    matches: list  # list[vfs.Match], best first, after the options
    best: object  # vfs.BestWindows: every scored image's best window and score
    weights: np.ndarray = field(repr=False)  # (h, w) float32: the mask on the feature grid
    features: np.ndarray = field(repr=False)  # (C, h, w) float32: the query's features
    seconds: float = 0.0  # server-side time of the search itself


@dataclass(frozen=True)
class SharedState:
    cache_key: str  # library key of the cache
    revision: str | None  # Hub revision of the cache, None for a local one
    index: int | None  # dataset index of the query image; None for an upload
    image_id: str | None  # its id (checked on load, so a re-ordered cache is caught)
    image_size: tuple[int, int]  # (height, width) of the displayed image the mask was painted on
    mask: np.ndarray = field(repr=False)  # (H, W) bool
    options: SearchOptions = SearchOptions()
    upload: str | None = None  # an upload's digest (`app.uploads`), kept by the server that made the string


def encode_state(state: SharedState) -> str:
    """A compact URL-safe string: JSON of the query with the mask as zlib-packed bits, base64."""
    bits = np.packbits(np.asarray(state.mask, dtype=bool).ravel())
    payload = {
        "v": STATE_VERSION,
        "cache": state.cache_key,
        "rev": state.revision,
        "index": None if state.index is None else int(state.index),
        "upload": state.upload,
        "id": state.image_id,
        "size": [int(s) for s in state.image_size],
        "mask_shape": [int(s) for s in state.mask.shape],
        "mask": base64.urlsafe_b64encode(zlib.compress(bits.tobytes(), 9)).decode("ascii"),
        "options": asdict(state.options),
    }
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode("ascii").rstrip("=")


def decode_state(text: str) -> SharedState:
    """Inverse of `encode_state`; a damaged or foreign string raises `DatasetError` saying so."""
    text = (text or "").strip()
    if not text:
        raise DatasetError("the state box is empty: paste a string made with 'Share this query'")
    try:
        raw = zlib.decompress(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        payload = json.loads(raw)
        height, width = payload["mask_shape"]
        packed = np.frombuffer(zlib.decompress(base64.urlsafe_b64decode(payload["mask"])), dtype=np.uint8)
        mask = np.unpackbits(packed, count=height * width).astype(bool).reshape(height, width)
        options = SearchOptions(**payload.get("options", {}))
        version = payload.get("v")
        state = SharedState(
            cache_key=str(payload["cache"]),
            revision=payload.get("rev"),
            index=None if payload["index"] is None else int(payload["index"]),
            upload=None if payload.get("upload") is None else str(payload["upload"]),
            image_id=payload.get("id"),
            image_size=(int(payload["size"][0]), int(payload["size"][1])),
            mask=mask,
            options=options,
        )
    except Exception as error:  # noqa: BLE001 -- any damage to the string reads the same to the user
        raise DatasetError(
            f"could not read this state string ({type(error).__name__}): copy the whole string "
            "from 'Share this query' and paste it again"
        ) from None
    if version != STATE_VERSION:
        raise DatasetError(
            f"state string version {version!r} is not supported; this app reads version {STATE_VERSION}"
        )
    if (state.index is None) == (state.upload is None):
        raise DatasetError("this state string names neither a dataset image nor an upload (or both): "
                           "make it again with 'Share this query'")
    if options.unique not in UNIQUE_CHOICES:
        raise DatasetError(f"state string asks unique={options.unique!r}; valid: {', '.join(UNIQUE_CHOICES)}")
    return state
