"""The on-disk layout of a feature cache: one Zarr v3 group, its arrays, codecs and attributes.

    zarr.json                 attributes: "vfs_cache" (what was built, `CacheMeta`) and "build" (status)
    features     (N, H, W, C) float16|float32, channels-last; chunk = 1 image, shard = S images
    thumbnails   (N, T, T, 3) uint8, each image scaled to fit T x T, top-left aligned; same sharding
    sq_norms     (N, H, W)    float32, squared L2 norm of each stored feature vector; chunk = S images
    labels       (N,)         int64, -1 where unknown; chunk = S images
    image_sizes  (N, 2)       int32, original (height, width); chunk = S images
    ids          (N,)         str, path or id of each image; chunk = S images
    domains      (N,)         str, only when the dataset has domains
    boxes        (N,)         str, JSON list of (top, left, bottom, right) per image, only with boxes
    digests      (B, A)       int64, 63-bit xxh3 hash of each array's block file, written with its progress row
                              (-1 = unknown: blocks written before digests existed)
    progress     (B, A)       int64, one chunk per block of S images: the byte size of each array's
                              block, written only after every array's block is written (0 = not done)
    .vfs-build.lock           held by the build writing the folder (vfs/cache/durable.py)

Every chunk carries a crc32c checksum (Zarr's `crc32c` codec, and the shard index has its own), so
flipped bits and truncation fail to decode. A missing or emptied file would silently read as the fill
value, so the byte size of every block is recorded too and checked before the block is used. A block
file copied over another block of the same array passes both (same sizes, valid chunks): a hash of
each whole block file, recorded per position at build time (attribute "block_xxh3"), ties every
file to the place it belongs, and is checked the first time a block is read. (Not crc32c: a file
ending in its own crc32c, as every chunk and shard index here does, has a crc32c that depends on
its length only, so same-size files would all agree.)
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import xxhash
import zarr
from zarr.abc.store import Store
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec
from zarr.core.buffer.core import default_buffer_prototype
from zarr.core.sync import sync

from vfs.errors import OptionError

if TYPE_CHECKING:
    from vfs.models.preprocess import Preprocess

SCHEMA = 1
THUMBNAIL = 96          # thumbnail side in pixels (images are never scaled up)
SHARD = 1024            # images per shard (per block of every array)
CODEC = "lz4"           # default compressor of features: see bench/cache.py for the figures
CODECS = ("none", "lz4", "zstd")
SHARDED = ("features", "thumbnails")  # arrays with one chunk per image inside each shard
ARRAYS = ("features", "thumbnails", "sq_norms", "labels", "image_sizes", "ids", "domains", "boxes")


def compressors(codec: str, *, dtype: np.dtype, checksum: bool = True) -> list[Any]:
    """Bytes-to-bytes codecs of an array: an optional compressor, then crc32c."""
    chosen: list[Any]
    if codec != "none" and np.dtype(dtype).kind in "OTU":  # strings: blosc needs a fixed item size
        chosen = [ZstdCodec(level=3)]
    elif codec == "none":
        chosen = []
    elif codec in ("lz4", "zstd"):
        cname = cast("Literal['lz4', 'zstd']", codec)  # mypy does not narrow a str by `in` a tuple of literals
        chosen = [BloscCodec(cname=cname, clevel=5 if codec == "lz4" else 1, shuffle="shuffle",
                             typesize=np.dtype(dtype).itemsize)]
    else:
        raise OptionError(f"unknown codec {codec!r}: use none, lz4 or zstd")
    return chosen + ([Crc32cCodec()] if checksum else [])


def timestamp() -> str:
    """Now, as the metadata records times (`created`, `finished`): ISO 8601 in UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def block_count(count: int, shard_size: int) -> int:
    """How many blocks of `shard_size` images hold `count` images (the last block may be short)."""
    return -(-count // shard_size)


@dataclass(frozen=True)
class CacheMeta:
    schema: int                    # layout version (SCHEMA)
    model: str                     # model name given to load_model
    weights_id: str                # identity of the model weights (sha256 or "random")
    layer: str                     # layer name, as in model.named_modules()
    preprocess: dict[str, Any]     # the Preprocess fields the images went through (size, crop, mean...)
    input_size: int                # side of the square the model saw
    grid: tuple[int, int]          # (H, W) feature cells
    channels: int                  # C
    dtype: str                     # "float16" or "float32"
    count: int                     # N images
    shard_size: int                # images per shard / block
    batch_size: int                # images per forward pass (batches never straddle a block)
    codec: str                     # compressor of the features ("none", "lz4", "zstd")
    checksum: bool                 # crc32c on every chunk
    thumbnail: int                 # thumbnail side in pixels
    dataset: str                   # dataset name or spec
    dataset_fingerprint: str       # hash of the dataset's file list / content
    label_names: tuple[str, ...]   # label index -> name
    arrays: tuple[str, ...]        # arrays this cache holds
    versions: dict[str, str]       # library versions at creation
    created: str                   # ISO time the build started
    finished: str | None           # ISO time the build finished, None while building
    status: str                    # "building" or "complete"
    model_args: tuple[str, ...] = ()  # `python -m vfs` options that load the model again; () = `--model NAME`

    @property
    def blocks(self) -> int:
        """Number of blocks of `shard_size` images (the last may be short)."""
        return block_count(self.count, self.shard_size)

    def span(self, block: int) -> tuple[int, int]:
        """(start, stop): the images of block `block`, `stop` exclusive (the last block may be short)."""
        start = block * self.shard_size
        return start, min(self.count, start + self.shard_size)

    def images_in(self, blocks: Iterable[int]) -> int:
        """How many images the blocks `blocks` hold together."""
        return sum(stop - start for start, stop in map(self.span, blocks))

    def identity(self) -> dict[str, Any]:
        """What must match for two builds to be the same cache (everything but times and versions)."""
        skip = ("versions", "created", "finished", "status", "batch_size", "model_args")
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name not in skip}

    def to_attrs(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> CacheMeta:
        values = dict(attrs)
        values["grid"] = tuple(values["grid"])
        values["label_names"] = tuple(values["label_names"])
        values["arrays"] = tuple(values["arrays"])
        values.setdefault("batch_size", 32)  # caches written before the field existed used the default
        values["model_args"] = tuple(values.get("model_args", ()))  # () in caches written before it existed
        return cls(**{f.name: values[f.name] for f in fields(cls)})

    def make_preprocess(self) -> Preprocess:
        """The `Preprocess` to apply to a query so its features match this cache's."""
        from vfs.models.preprocess import Preprocess

        known = {f.name for f in fields(Preprocess)}
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in self.preprocess.items() if k in known}
        values.setdefault("mean", (0.0, 0.0, 0.0))  # caches written from features (`write_cache`) have no pixels:
        values.setdefault("std", (1.0, 1.0, 1.0))   # their 1x1 "images" need no normalisation
        return Preprocess(**values)

    def resume_command(self, out: str | Path) -> str:
        """The `python -m vfs index` command that builds (or resumes) this cache at `out`, shell-quoted."""
        model = list(self.model_args) or ["--model", self.model] + (["--weights", "random"]
                                                                     if self.weights_id == "random" else [])
        options = [*model, "--layer", self.layer, "--dataset", self.dataset, "--out", str(out),
                   "--dtype", self.dtype, "--input-size", str(self.input_size),
                   "--resize", str(self.preprocess["size"]), "--batch-size", str(self.batch_size)]
        if self.codec != CODEC:
            options += ["--codec", self.codec]
        if self.shard_size != SHARD:
            options += ["--shard-size", str(self.shard_size)]
        if self.thumbnail != THUMBNAIL:
            options += ["--thumbnail", str(self.thumbnail)]
        if not self.checksum:
            options += ["--no-checksum"]
        return "python -m vfs index " + " ".join(map(shlex.quote, options))


def _plain(value: Any) -> Any:
    """JSON-friendly form (tuples -> lists) so attributes compare equal after a round trip."""
    return json.loads(json.dumps(value))


def thumbnail_size(height: int, width: int, side: int) -> tuple[int, int]:
    """(height, width) of an image scaled down to fit side x side; never scaled up."""
    scale = min(1.0, side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def block_key(array: zarr.Array[Any], block: int) -> str:
    """Store key of the file holding block `block` (S images) of `array`."""
    coords = (block,) + (0,) * (array.ndim - 1)
    key = array.metadata.encode_chunk_key(coords)
    return f"{array.path}/{key}" if array.path else key


def block_file(store: Store, key: str) -> bytes | None:
    """The whole file `key` of `store`, or None when it is missing."""
    value = sync(store.get(key, prototype=default_buffer_prototype()))
    return None if value is None else value.to_bytes()


def digest(data: bytes) -> int:
    """63-bit xxh3 hash of a whole block file (never -1, "unknown"): at its position in the "block_xxh3"
    table, it binds the file to its place."""
    return xxhash.xxh3_64_intdigest(data) & (2**63 - 1)  # 63 bits: a non-negative int64 in the table


def stored_size(store: Store, key: str) -> int | None:
    """Byte size of `key` in `store`, or None when it is missing."""
    try:
        return sync(store.getsize(key))
    except FileNotFoundError:
        return None
