"""`open_cache`: a finished feature cache, verified as it is read, as a search `source`.

    cache = vfs.open_cache("caches/fmnist", model="efficientnet_lite0", layer="blocks.5")
    cache.shape                   # (N, C, H, W)
    cache[10:20]                  # (10, C, H, W) view of channels-last storage
    matches = vfs.search(query, weights, cache)

Everything is read through zarr's store API, so any zarr `Store` works (a local folder, or a
read-through store that fetches chunks from elsewhere). Every block (S images) of every array is
checked before use: its file must exist with the byte size and the hash recorded at build time for
that position (so a block file copied over another is caught too), and every chunk must pass its own
crc32c. Damage raises `CacheCorruptError` naming the array and file, never zeros; so does damaged
metadata (`zarr.json`). Caches built before block digests existed are checked by size and chunk
checksums only (`FeatureCache.positions_bound` is False; `python -m vfs verify` says so).

A cache that fits comfortably in RAM is loaded once (`in_memory=None` decides by size), so
repeated queries cost in-memory time; otherwise reads go a whole block (shard) at a time.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import zarr
from PIL import Image
from zarr.abc.store import Store
from zarr.storage import LocalStore, MemoryStore

from vfs.cache.blocks import BlockReader
from vfs.cache.durable import build_owner
from vfs.cache.format import SCHEMA, CacheMeta, thumbnail_size
from vfs.errors import CacheCorruptError, CacheError, CacheIncompleteError, CacheMismatchError

METADATA_ERRORS = (ValueError, KeyError, TypeError)  # JSONDecodeError, zarr's NodeNotFound/MetadataValidation...

if TYPE_CHECKING:
    from vfs.models.loading import LoadedModel

ASSUMED_MEMORY = 4 << 30  # bytes of free RAM assumed where /proc/meminfo cannot be read
RAM_FRACTION = 0.5  # load in memory when features + sq_norms take less than this share of free RAM


def open_cache(path: str | Path | Store, *, model: LoadedModel | str | None = None, layer: str | None = None,
               in_memory: bool | None = None) -> FeatureCache:
    """Open a finished cache at a folder, an fsspec URL or a zarr store; check it matches `model` and `layer` if given.

    `model` is a model name or a `LoadedModel` (then its weights must match too). `in_memory`:
    True loads everything now, False streams from the store, None (the default everywhere, `hub_caches.open`
    too) loads a local cache that fits in free RAM and streams the rest, and every remote store.
    """
    where = str(path)
    folder = None
    if isinstance(path, str) and path.startswith("file://"):
        path = path[len("file://"):]  # a local folder: read through the fast local path
    if isinstance(path, str) and "://" in path:  # an fsspec URL (s3://, gs://, memory://...)
        from zarr.storage import FsspecStore

        path = FsspecStore.from_url(path, read_only=True)
    if isinstance(path, (str, Path)):
        folder = Path(path).expanduser()
        if not (folder / "zarr.json").is_file():
            raise CacheError(f"no feature cache at {folder}: build one with `python -m vfs index "
                             f"--model NAME --layer LAYER --dataset SPEC --out {folder}`")
        store: Store = LocalStore(folder, read_only=True)
    else:
        store = path
    try:
        group = zarr.open_group(store, mode="r")
        attrs = cast("dict[str, Any] | None", group.attrs.get("vfs_cache"))  # the build's JSON, as CacheMeta writes it
        meta = None if attrs is None or attrs.get("schema") != SCHEMA else CacheMeta.from_attrs(attrs)
    except METADATA_ERRORS as error:
        raise _bad_metadata(where, "zarr.json", error, meta=None) from error
    if attrs is None:
        raise CacheMismatchError(f"{where} is a zarr group but not a feature cache (no 'vfs_cache' attributes); "
                                 "if a build was killed as it started, run it again with the same --out")
    if meta is None:
        raise CacheMismatchError(f"{where} has cache schema {attrs.get('schema')}, this vfs reads schema "
                                 f"{SCHEMA}: rebuild it with this version (python -m vfs index ...)")
    if meta.status != "complete":
        owner = build_owner(folder) if folder is not None else None
        done = _images_done(group, meta)
        if owner is not None:
            raise CacheIncompleteError(f"{where} is being built right now by {owner}: {done} of {meta.count} "
                                       "images done; open it when that build finishes")
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
        self.meta, self.where, self.group = meta, where, group
        # array name -> per block: byte size / xxh3 of its file (-1: not recorded), as the build wrote them (JSON)
        nbytes = cast("dict[str, list[int]]", group.attrs.get("block_nbytes", {}))
        digests = cast("dict[str, list[int]]", group.attrs.get("block_xxh3", {}))
        self.positions_bound = all(digests.get(name) is not None and min(digests[name], default=0) >= 0
                                   for name in meta.arrays)  # every block file tied to its place
        self._arrays = {name: BlockReader(_array(group, name, where, meta), nbytes=nbytes.get(name),
                                          digests=digests.get(name), name=name, where=where)
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

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Features (n, C, H, W), a channels-last view, of sorted unique `indices`.

        A streamed cache reads only those images' chunks (one positioned read each, verified).
        """
        indices = np.asarray(indices, dtype=np.int64)
        if isinstance(self._features, np.ndarray):
            features = self._features[indices]  # (n, H, W, C)
        else:
            features = self._arrays["features"].take(indices)  # (n, H, W, C)
        return features.transpose(0, 3, 1, 2)

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
        size = self.image_sizes[index]  # (2,) original (height, width)
        height, width = thumbnail_size(int(size[0]), int(size[1]), self.meta.thumbnail)
        return Image.fromarray(self._arrays["thumbnails"][index][:height, :width])

    def verify(self) -> int:
        """Read every block of every array, checking presence, sizes and checksums; return blocks read."""
        for reader in self._arrays.values():
            for block in range(reader.blocks):
                reader.block(block, keep=False)
        return sum(reader.blocks for reader in self._arrays.values())


def _array(group: zarr.Group, name: str, where: str, meta: CacheMeta) -> zarr.Array[Any]:
    """The array `name` of a cache, or a `CacheCorruptError` naming its metadata file."""
    try:
        return cast("zarr.Array[Any]", group[name])  # every name in meta.arrays is an array the build made
    except METADATA_ERRORS as error:
        raise _bad_metadata(where, f"{name}/zarr.json", error, meta=meta) from error


def _bad_metadata(where: str, file: str, error: Exception, *, meta: CacheMeta | None) -> CacheCorruptError:
    """The error for a metadata file that is missing or unreadable, with how to recover."""
    why = "is missing" if isinstance(error, (KeyError, FileNotFoundError)) else \
        f"cannot be read ({type(error).__name__}: {error})"
    rebuild = (f"rebuild it into a new folder ({meta.resume_command('NEW_FOLDER')})" if meta is not None
               else "rebuild it into a new folder (python -m vfs index ... --out NEW_FOLDER)")
    return CacheCorruptError(f"{where}: metadata file '{file}' {why}; the cache's data cannot be read without "
                             f"it: restore that file from a copy of the cache, download the cache again, or "
                             f"{rebuild}")


def _images_done(group: zarr.Group, meta: CacheMeta) -> int:
    if "progress" not in group:  # killed before its arrays were all created: nothing done
        return 0
    progress = cast("zarr.Array[Any]", group["progress"])  # (blocks, arrays) bytes written, 0 where not yet
    done = np.asarray(progress[:]).any(axis=1)  # (blocks,)
    return meta.images_in(np.flatnonzero(done).tolist())


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
                    return int(line.split()[1]) * 1024  # the file counts kB
    except OSError:
        pass
    return ASSUMED_MEMORY


def _local(store: Store) -> bool:
    """Whether reading the whole store is only a disk or memory read (no download)."""
    return isinstance(store, (LocalStore, MemoryStore))
