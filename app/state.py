"""What one search asks, what it found, and the shareable string that reproduces a query.

Plain data: no gradio here, so handlers, tests and the analysis tab share these types.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from app.editor import MAX_SIDE
from vfs.errors import DatasetError, SearchError

UNIQUE_CHOICES = ("none", "label", "domain")  # at most one result per ... ("none": no limit)
MAX_K = 48  # the most results one search shows (the app's k slider runs 1..MAX_K)
MAX_LABEL_CHARS = 200  # longer than any label name of a real dataset
STATE_VERSION = 1
# A share string is a few hundred bytes to a few kB; these bounds keep a hostile one as cheap to refuse:
MAX_STATE_CHARS = 256_000  # the pasted string, base64 text
MAX_STATE_JSON = 512_000  # its inflated JSON (the mask field is the bulk: 1024x1024 random bits ~ 180 kB)
MAX_MASK_SIDE = MAX_SIDE  # a query is never larger than this on either side (uploads are downscaled to it)


@dataclass(frozen=True)
class SearchOptions:
    k: int = 12  # how many results to show, 1..MAX_K
    exclude_query: bool = True  # leave the query image itself out of the results
    unique: str = "none"  # "none", "label" or "domain": at most one result per label/domain
    only_label: str | None = None  # keep only images with this label name; None keeps all
    candidates: int = 0  # two-stage search (approximate): images re-scored exactly; 0 = exact search

    def __post_init__(self):
        """Refuse what no control of the app can send (the API and share strings can): SearchError."""
        k = self.k
        if isinstance(k, float) and k.is_integer():  # a slider may send 12.0
            k = int(k)
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= MAX_K:
            raise SearchError(f"k={self.k!r} is not a number of results: use a whole number from 1 to {MAX_K}")
        object.__setattr__(self, "k", int(k))
        if not isinstance(self.exclude_query, bool | np.bool_):
            raise SearchError(f"exclude_query={self.exclude_query!r} must be true or false")
        object.__setattr__(self, "exclude_query", bool(self.exclude_query))
        if self.unique not in UNIQUE_CHOICES:
            raise SearchError(f"unique={self.unique!r} is not an option; valid: {', '.join(UNIQUE_CHOICES)}")
        candidates = self.candidates
        if isinstance(candidates, float) and candidates.is_integer():  # a number box may send 300.0
            candidates = int(candidates)
        if isinstance(candidates, bool) or not isinstance(candidates, int | np.integer) or candidates < 0:
            raise SearchError(f"candidates={self.candidates!r} must be 0 (exact search) or a whole number of "
                              "images to re-score exactly (two-stage search)")
        object.__setattr__(self, "candidates", int(candidates))
        label = self.only_label
        if label is not None and (not isinstance(label, str) or len(label) > MAX_LABEL_CHARS):
            raise SearchError(
                f"only_label must be a label name (text of at most {MAX_LABEL_CHARS} characters), not "
                f"{type(label).__name__} {str(label)[:40]!r}: pick one of the cache's labels"
            )


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
    """Inverse of `encode_state`; a damaged, foreign or oversized string raises `DatasetError` saying so.

    Bounded: a string of n characters costs O(n + MAX_STATE_JSON) bytes and never more than a
    MAX_MASK_SIDE x MAX_MASK_SIDE mask, whatever it declares or however well it compresses.
    """
    if not isinstance(text, str | None):
        raise DatasetError("a state string is text: paste a string made with 'Share this query'")
    if len(text or "") > MAX_STATE_CHARS:  # before any copy of it
        raise DatasetError(
            f"this state string is {len(text):,} characters; one made with 'Share this query' is at most "
            f"{MAX_STATE_CHARS:,}: copy the string again (only it, whole)"
        )
    text = (text or "").strip()
    if not text:
        raise DatasetError("the state box is empty: paste a string made with 'Share this query'")
    raw = _inflate(_unbase64(text, "the string"), MAX_STATE_JSON, "the string")
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _damaged("it is not the JSON a share string holds") from None
    if not isinstance(payload, dict):
        raise _damaged("it holds no query")
    version = payload.get("v")
    if version != STATE_VERSION:
        raise DatasetError(
            f"state string version {version!r} is not supported; this app reads version {STATE_VERSION}: "
            "make the string again with 'Share this query'"
        )
    height, width = _size(payload.get("mask_shape"), "mask_shape")
    packed = _inflate(_unbase64(_field(payload, "mask", str, "text"), "the mask"), -(-height * width // 8), "the mask")
    if len(packed) != -(-height * width // 8):
        raise _damaged(f"its mask holds {len(packed) * 8} bits, not the {height}x{width} it declares")
    mask = np.unpackbits(np.frombuffer(packed, np.uint8), count=height * width)  # (H*W,) uint8
    options = payload.get("options", {})
    if not isinstance(options, dict) or not set(options) <= {f.name for f in fields(SearchOptions)}:
        raise _damaged(f"its options are not {', '.join(f.name for f in fields(SearchOptions))}")
    try:
        options = SearchOptions(**options)
    except SearchError as error:
        raise DatasetError(f"this state string asks for options the app does not have: {error}") from None
    index = payload.get("index")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int) or index < 0):
        raise _damaged(f"its image index {repr(index)[:20]} is not a whole number >= 0")
    upload = _field(payload, "upload", str | None, "text or null") if "upload" in payload else None
    if upload is not None and len(upload) > 128:
        raise _damaged("its upload digest is too long")
    if (index is None) == (upload is None):
        raise DatasetError("this state string names neither a dataset image nor an upload (or both): "
                           "make it again with 'Share this query'")
    return SharedState(
        cache_key=_field(payload, "cache", str, "text"),
        revision=_field(payload, "rev", str | None, "text or null"),
        index=index,
        upload=upload,
        image_id=_field(payload, "id", str | None, "text or null"),
        image_size=_size(payload.get("size"), "size"),
        mask=mask.astype(bool).reshape(height, width),  # (H, W)
        options=options,
    )


def _damaged(what: str) -> DatasetError:
    return DatasetError(
        f"could not read this state string: {what}. Copy the whole string from 'Share this query' and paste it again"
    )


def _unbase64(text: str, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise _damaged(f"{what} is not URL-safe base64") from None


def _inflate(data: bytes, limit: int, what: str) -> bytes:
    """zlib-decompress at most `limit` bytes: data that inflates further is refused, not inflated."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, limit)
    except zlib.error:
        raise _damaged(f"{what} is not zlib-compressed") from None
    if inflater.unconsumed_tail or not inflater.eof:
        raise _damaged(f"{what} inflates to more than {limit:,} bytes or is cut short")
    return out


def _field(payload: dict, name: str, kind, kind_name: str):
    value = payload.get(name)
    if not isinstance(value, kind):
        raise _damaged(f"its field {name!r} is missing or not {kind_name}")
    return value


def _size(value, name: str) -> tuple[int, int]:
    """A (height, width) pair of whole numbers in 1..MAX_MASK_SIDE, or a readable DatasetError."""
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(side, int) and not isinstance(side, bool) for side in value)
    ):
        raise _damaged(f"its {name} is not a [height, width] pair")
    if not all(1 <= side <= MAX_MASK_SIDE for side in value):
        raise DatasetError(
            f"this state string declares a {value[0]}x{value[1]} image; a query is at most "
            f"{MAX_MASK_SIDE}x{MAX_MASK_SIDE}: make the string again with 'Share this query'"
        )
    return int(value[0]), int(value[1])
