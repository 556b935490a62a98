"""`open_cache`: a finished feature cache, verified as it is read, as a search `source`.

    cache = vfs.open_cache("caches/fmnist", model="efficientnet_lite0", layer="blocks.5")
    cache.shape                   # (N, C, H, W)
    cache[10:20]                  # (10, C, H, W) view of channels-last storage
    matches = vfs.search(query, weights, cache)

Everything is read through zarr's store API, so any zarr `Store` works (a local folder, or a
read-through store that fetches chunks from elsewhere). Every block (S images) of every array is
checked before use: its file must exist with the byte size recorded at build time, and every chunk
must pass its crc32c. Damage raises `CacheCorruptError` naming the array and file, never zeros.

A cache that fits comfortably in RAM is loaded once (`in_memory=None` decides by size), so
repeated queries cost in-memory time; otherwise reads go a whole block (shard) at a time.
"""

from __future__ import annotations

import json
import threading
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from PIL import Image
from zarr.abc.store import Store
from zarr.storage import LocalStore, MemoryStore

from vfs.cache.format import SCHEMA, CacheMeta, block_key, stored_size, thumbnail_size
from vfs.cache.shard_file import local_layout, read_shard
from vfs.errors import CacheCorruptError, CacheError, CacheIncompleteError, CacheMismatchError, VFSError

if TYPE_CHECKING:
    from vfs.models.loading import LoadedModel

RAM_FRACTION = 0.5  # load in memory when features + sq_norms take less than this share of free RAM


def open_cache(path: str | Path | Store, *, model: LoadedModel | str | None = None, layer: str | None = None,
               in_memory: bool | None = None) -> FeatureCache:
    """Open a finished cache at a folder (or zarr store); check it matches `model` and `layer` if given.

    `model` is a model name or a `LoadedModel` (then its weights must match too). `in_memory`:
    True loads everything now, False streams from the store, None (the default everywhere, `hub_caches.open`
    too) loads a local cache that fits in free RAM and streams the rest, and every remote store.
    """
    where = str(path)
    if isinstance(path, (str, Path)):
        folder = Path(path).expanduser()
        if not (folder / "zarr.json").is_file():
            raise CacheError(f"no feature cache at {folder}: build one with `python -m vfs index "
                             f"--model NAME --layer LAYER --dataset SPEC --out {folder}`")
        store: Store = LocalStore(folder, read_only=True)
    else:
        store = path
    group = zarr.open_group(store, mode="r")
    attrs = group.attrs.get("vfs_cache")
    if attrs is None:
        raise CacheMismatchError(f"{where} is a zarr group but not a feature cache (no 'vfs_cache' attributes)")
    if attrs.get("schema") != SCHEMA:
        raise CacheMismatchError(f"{where} has cache schema {attrs.get('schema')}, this vfs reads schema "
                                 f"{SCHEMA}: rebuild it with this version (python -m vfs index ...)")
    meta = CacheMeta.from_attrs(attrs)
    if meta.status != "complete":
        done = _images_done(group, meta)
        raise CacheIncompleteError(f"{where} is an unfinished cache: {done} of {meta.count} images done; "
                                   f"resume with: {meta.resume_command(where)} (same command)")
    _check_model(meta, where, model=model, layer=layer)
    cache = FeatureCache(group, meta, where=where)
    if in_memory or (in_memory is None and _local(store) and cache.nbytes < RAM_FRACTION * _available_memory()):
        cache.load()
    return cache


class FeatureCache:
    """A finished cache: `shape == (N, C, H, W)`, sliceable along images, with labels and thumbnails."""

    def __init__(self, group: zarr.Group, meta: CacheMeta, *, where: str):
        self.meta, self.where = meta, where
        nbytes = group.attrs.get("block_nbytes", {})
        self._arrays = {name: BlockReader(group[name], nbytes=nbytes.get(name), name=name, where=where)
                        for name in meta.arrays}
        self._features: np.ndarray | BlockReader = self._arrays["features"]
        self._sq_norms: np.ndarray | BlockReader = self._arrays["sq_norms"]
        height, width = meta.grid
        self.shape = (meta.count, meta.channels, height, width)
        self.dtype = np.dtype(meta.dtype)
        self.label_names = list(meta.label_names)

    def __len__(self) -> int:
        return self.meta.count

    def __repr__(self) -> str:
        place = "in memory" if self.in_memory else "streamed"
        return (f"<FeatureCache {self.where}: {self.meta.count} images of {self.meta.model} {self.meta.layer} "
                f"{self.shape[1:]} {self.meta.dtype}, {place}>")

    @property
    def nbytes(self) -> int:
        """Bytes of features plus sq_norms once decoded."""
        n, c, h, w = self.shape
        return n * h * w * (c * self.dtype.itemsize + 4)

    @property
    def in_memory(self) -> bool:
        return isinstance(self._features, np.ndarray)

    @property
    def sq_norms(self) -> np.ndarray | BlockReader:
        """(N, H, W) float32: squared L2 norm of each stored feature vector."""
        return self._sq_norms

    def __getitem__(self, index: Any) -> np.ndarray:
        """Features of the selected images: int -> (C, H, W); slice or indices -> (n, C, H, W) view."""
        block = self._features[index]  # (n, H, W, C) or (H, W, C)
        return block.transpose(2, 0, 1) if block.ndim == 3 else block.transpose(0, 3, 1, 2)

    def load(self) -> FeatureCache:
        """Read features and sq_norms into RAM once (verified); later reads cost memory time."""
        if not self.in_memory:
            self._features = self._arrays["features"].read_all()  # (N, H, W, C)
            self._sq_norms = self._arrays["sq_norms"].read_all()  # (N, H, W)
        return self

    @cached_property
    def labels(self) -> np.ndarray:
        """(N,) int64 label index per image, -1 where unknown."""
        return self._arrays["labels"].read_all()

    @cached_property
    def ids(self) -> list[str]:
        return [str(v) for v in self._arrays["ids"].read_all()]

    @cached_property
    def domains(self) -> list[str] | None:
        return [str(v) for v in self._arrays["domains"].read_all()] if "domains" in self._arrays else None

    @cached_property
    def boxes(self) -> list[np.ndarray] | None:
        """Per image (k, 4) float32 (top, left, bottom, right) in original pixels, or None."""
        if "boxes" not in self._arrays:
            return None
        return [np.asarray(json.loads(str(v)) if str(v) else [], dtype=np.float32).reshape(-1, 4)
                for v in self._arrays["boxes"].read_all()]

    @cached_property
    def image_sizes(self) -> np.ndarray:
        """(N, 2) int32 original (height, width)."""
        return self._arrays["image_sizes"].read_all()

    def thumbnail(self, index: int) -> Image.Image:
        """The stored thumbnail of image `index` (at most `meta.thumbnail` pixels a side)."""
        height, width = thumbnail_size(*(int(v) for v in self.image_sizes[index]), self.meta.thumbnail)
        return Image.fromarray(self._arrays["thumbnails"][index][:height, :width])

    def verify(self) -> int:
        """Read every block of every array, checking presence, sizes and checksums; return blocks read."""
        for reader in self._arrays.values():
            for block in range(reader.blocks):
                reader.block(block, keep=False)
        return sum(reader.blocks for reader in self._arrays.values())


class BlockReader:
    """One zarr array read and verified a block (S images, one file) at a time; slices along dim 0."""

    def __init__(self, array: zarr.Array, *, nbytes: list[int] | None, name: str, where: str):
        self.array, self.nbytes, self.name, self.where = array, nbytes, name, where
        self.shape, self.dtype = array.shape, array.dtype
        self.rows = array.shards[0] if array.shards else array.chunks[0]
        self.blocks = -(-self.shape[0] // self.rows)
        self._checked: set[int] = set()
        self._kept: tuple[int, np.ndarray] | None = None
        self._lock = threading.Lock()
        self._local = local_layout(array)  # (folder, blosc?, crc32c?) to read whole local shards, else None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            row = int(index) + (self.shape[0] if index < 0 else 0)
            if not 0 <= row < self.shape[0]:
                raise IndexError(f"image {index} is out of range ({self.shape[0]} images)")
            return self._rows(row, row + 1)[0]
        if isinstance(index, slice) and index.step in (None, 1):
            start, stop, _ = index.indices(self.shape[0])
            return self._rows(start, max(start, stop))
        rows = np.arange(self.shape[0])[index]  # any other selection: gather rows
        out = np.empty((len(rows),) + self.shape[1:], dtype=self._numpy_dtype())
        for i, row in enumerate(rows):
            out[i] = self._rows(int(row), int(row) + 1)[0]
        return out

    def read_all(self) -> np.ndarray:
        out = np.empty(self.shape, dtype=self._numpy_dtype())
        for block in range(self.blocks):
            out[block * self.rows:(block + 1) * self.rows] = self.block(block, keep=False)
        return out

    def block(self, block: int, *, keep: bool = True) -> np.ndarray:
        """All rows of block `block`, decoded and verified (the last one read is kept)."""
        with self._lock:
            if self._kept is not None and self._kept[0] == block:
                return self._kept[1]
        values = self._read(block * self.rows, min(self.shape[0], (block + 1) * self.rows))
        if keep:
            with self._lock:
                self._kept = (block, values)
        return values

    def _rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop): whole blocks decoded (and kept) when most of a block is wanted."""
        first, last = start // self.rows, (stop - 1) // self.rows if stop > start else start // self.rows
        if stop - start <= 1 and not (self._kept and self._kept[0] == first):
            return self._read(start, stop)  # one image: read only its chunk
        parts = [self.block(b)[max(start - b * self.rows, 0):stop - b * self.rows] for b in range(first, last + 1)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of one block, after checking its file; errors name the file."""
        block = start // self.rows
        key = block_key(self.array, block)
        if block not in self._checked:
            size = stored_size(self.array.store, key)
            expected = self.nbytes[block] if self.nbytes else None
            if size is None or size == 0:
                raise self._corrupt(key, "is missing" if size is None else "is empty")
            if expected is not None and size != expected:
                raise self._corrupt(key, f"has {size} bytes, the build wrote {expected} (truncated or altered)")
            self._checked.add(block)
        try:
            if self._local is not None and start == block * self.rows and stop - start > 1:
                folder, compressed, checksum = self._local
                return read_shard((folder / key).read_bytes(), rows=stop - start, per_shard=self.rows,
                                  row_shape=self.shape[1:], dtype=self.dtype, compressed=compressed,
                                  checksum=checksum)
            values = self.array[start:stop]
        except VFSError:  # the store's own errors (a remote store offline, rate limited...) say what happened
            raise
        except Exception as error:  # zarr raises ValueError for checksum mismatches, others for garbage
            raise self._corrupt(key, f"failed to decode ({type(error).__name__}: {error})") from error
        return np.asarray(values, dtype=object) if self.dtype.kind == "T" else values

    def _numpy_dtype(self) -> np.dtype:
        return np.dtype(object) if self.dtype.kind == "T" else self.dtype

    def _corrupt(self, key: str, what: str) -> CacheCorruptError:
        return CacheCorruptError(f"{self.where}: array '{self.name}' block file '{key}' {what}; the cache is "
                                 "damaged: rebuild it (python -m vfs index ..., same command, into a new folder) "
                                 "or download it again")


def _images_done(group: zarr.Group, meta: CacheMeta) -> int:
    done = group["progress"][:].any(axis=1)  # (blocks,)
    return sum(min(meta.count, (b + 1) * meta.shard_size) - b * meta.shard_size for b in np.flatnonzero(done))


def _check_model(meta: CacheMeta, where: str, *, model: Any, layer: str | None) -> None:
    name = getattr(model, "name", model)
    problems = []
    if name is not None and name != meta.model:
        problems.append(f"model {meta.model!r} (asked for {name!r})")
    weights = getattr(model, "weights_id", None)
    if weights is not None and weights != meta.weights_id:
        problems.append(f"weights {meta.weights_id!r} (the loaded model has {weights!r})")
    if layer is not None and layer != meta.layer:
        problems.append(f"layer {meta.layer!r} (asked for {layer!r})")
    if problems:
        raise CacheMismatchError(f"{where} was built with {', '.join(problems)}: open it with its own model and "
                                 "layer, or build a cache for yours with python -m vfs index")


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def verify_command(argv: list[str]) -> int:
    """`python -m vfs verify PATH [PATH ...]`: read every block of each cache, checking sizes and checksums."""
    import argparse
    import time

    parser = argparse.ArgumentParser(prog="python -m vfs verify", description=verify_command.__doc__)
    parser.add_argument("paths", nargs="+", type=Path, help="cache folders (as built by `python -m vfs index`)")
    args = parser.parse_args(argv)
    for path in args.paths:
        started = time.perf_counter()
        cache = open_cache(path, in_memory=False)  # an unfinished cache is refused here, with its resume command
        blocks = cache.verify()
        meta = cache.meta
        print(f"ok: {path}: {meta.count:,} images of {meta.dataset}, {meta.model} {meta.layer!r}, "
              f"{blocks} blocks read and checked in {time.perf_counter() - started:.1f} s")
    return 0


def _local(store: Store) -> bool:
    """Whether reading the whole store is only a disk or memory read (no download)."""
    return isinstance(store, (LocalStore, MemoryStore))
