"""The coarse index of a cache: every feature vector projected to a few channels, held in RAM.

Two-stage search (`vfs.retrieval.two_stage`) scores every window of every image approximately
from this index, then re-scores the best candidate images exactly from the cache. The index is a
Zarr group `coarse/` inside the cache folder, tied to the cache it was built from:

    coarse/zarr.json   attributes: "vfs_coarse" (`CoarseMeta`) and, once finished, "block_nbytes"
    coarse/basis       (d, C) float32: the top-d eigenvectors of the channels' second moment
                       (uncentred PCA, so dot products keep their mean part), fitted on a sample
    coarse/codes       (N, H, W, d) float16: features @ basis.T; one chunk per block of S images
    coarse/progress    (B,) int64: byte size of each written block of codes (0 = not done)

The window magnitudes stay exact: the index uses the cache's own `sq_norms`. Built with
`python -m vfs index-coarse CACHE`, resumably (a killed build picks up at the first block not
written), and verified on open like the cache (sizes of block files, crc32c of every chunk).
A cache rebuilt, or a different one, refuses an index made for another (`CacheMismatchError`).

Why float16 codes with d = 48 by default: see docs/design.md (two-stage search) and bench/two_stage.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import zarr

from vfs.cache.blocks import BlockReader
from vfs.cache.format import block_count, block_key, compressors, stored_size, timestamp
from vfs.cache.reader import FeatureCache, open_cache
from vfs.errors import CacheError, CacheIncompleteError, CacheMismatchError

SCHEMA = 1
GROUP = "coarse"     # the index's folder (a Zarr group) inside the cache
DIMS = 48            # default projected channels (recall@10 >= 0.99 for every mask at M = 1,000 on 70,000 real maps)
SAMPLE = 4096        # default images the PCA is fitted on (evenly spaced through the cache)

Progress = bool | Callable[[float, str], None]


@dataclass(frozen=True)
class CoarseMeta:
    schema: int                 # layout version (SCHEMA)
    cache: str                  # `cache_fingerprint` of the cache it was built from
    dims: int                   # d, projected channels
    count: int                  # N images (the cache's)
    grid: tuple[int, int]       # (H, W) feature cells (the cache's)
    channels: int               # C of the cache
    shard_size: int             # images per block of codes (the cache's)
    sample: int                 # images the basis was fitted on
    energy: float               # share of the sample's sum of squared norms the basis keeps
    created: str                # ISO time the build started
    finished: str | None        # ISO time the build finished, None while building
    status: str                 # "building" or "complete"

    def to_attrs(self) -> dict[str, Any]:
        return json.loads(json.dumps({f.name: getattr(self, f.name) for f in fields(self)}))

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> CoarseMeta:
        values = {f.name: attrs[f.name] for f in fields(cls)}
        values["grid"] = tuple(values["grid"])
        return cls(**values)

    @property
    def blocks(self) -> int:
        """Number of blocks of `shard_size` images (the cache's blocks)."""
        return block_count(self.count, self.shard_size)

    @property
    def nbytes(self) -> int:
        """Bytes the codes take in RAM (the cache's sq_norms, 4 bytes per cell, come on top)."""
        return self.count * self.grid[0] * self.grid[1] * self.dims * 2  # float16 codes: 2 bytes each


def cache_fingerprint(cache: FeatureCache) -> str:
    """What ties an index to one build of one cache: its identity (but the codec) and its build times.

    A re-encoded copy of the same build (hub_caches push) keeps the fingerprint; a rebuild does not.
    """
    identity = {k: v for k, v in cache.meta.identity().items() if k != "codec"}
    facts = {"identity": identity, "created": cache.meta.created, "finished": cache.meta.finished}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class CoarseIndex:
    """A cache's coarse index in RAM: a search `source` of shape (N, d, H, W) with exact `sq_norms`."""

    meta: CoarseMeta
    basis: np.ndarray       # (d, C) float32, orthonormal rows
    codes: np.ndarray       # (N, H, W, d) float16
    sq_norms: np.ndarray    # (N, H, W) float32, the cache's exact squared norms of the full vectors

    @property
    def shape(self) -> tuple[int, int, int, int]:
        n, height, width, dims = self.codes.shape
        return n, dims, height, width

    def __len__(self) -> int:
        return self.codes.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        """Codes of the selected images as a channels-last view: slice -> (n, d, H, W)."""
        block = self.codes[index]  # (n, H, W, d) or (H, W, d)
        return block.transpose(2, 0, 1) if block.ndim == 3 else block.transpose(0, 3, 1, 2)

    def project(self, query: torch.Tensor) -> torch.Tensor:
        """One image's features (C, H, W) -> (d, H, W) in the index's channels."""
        basis = torch.from_numpy(self.basis)  # (d, C)
        return torch.einsum("dc,chw->dhw", basis, query.float().cpu())  # (d, H, W)


def open_coarse_index(cache: FeatureCache) -> CoarseIndex:
    """The finished coarse index of `cache`, verified and loaded into RAM.

    Raises `CacheError` when the cache has none, `CacheIncompleteError` for an unfinished build and
    `CacheMismatchError` for an index made from another cache (or another build of this one).
    """
    where = f"{cache.where}/{GROUP}"
    try:
        group = zarr.open_group(cache.group.store, path=GROUP, mode="r")
        attrs = _coarse_attrs(group)
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError) as error:
        raise CacheError(f"{cache.where} has no coarse index: build it with "
                         f"`python -m vfs index-coarse {cache.where}`") from error
    if attrs.get("schema") != SCHEMA:
        raise CacheMismatchError(f"{where} has coarse index schema {attrs.get('schema')}, this vfs reads "
                                 f"{SCHEMA}: rebuild it with `python -m vfs index-coarse {cache.where} --overwrite`")
    meta = CoarseMeta.from_attrs(attrs)
    if meta.cache != cache_fingerprint(cache):
        raise CacheMismatchError(f"{where} was built from another cache (or an earlier build of this one): "
                                 f"rebuild it with `python -m vfs index-coarse {cache.where} --overwrite`")
    if meta.status != "complete":
        done = int((np.asarray(_array(group, "progress")[:]) > 0).sum())
        raise CacheIncompleteError(f"{where} is an unfinished coarse index ({done} of {meta.blocks} blocks): "
                                   f"resume it with `python -m vfs index-coarse {cache.where}`")
    nbytes = cast("list[int] | None", group.attrs.get("block_nbytes"))  # (blocks,) as the build wrote them
    codes = BlockReader(_array(group, "codes"), nbytes=nbytes, name="coarse/codes", where=cache.where).read_all()
    basis = np.asarray(_array(group, "basis")[:], dtype=np.float32)  # (d, C), one small chunk with its crc32c
    norms = cache.sq_norms
    norms = norms if isinstance(norms, np.ndarray) else norms.read_all()  # (N, H, W)
    return CoarseIndex(meta=meta, basis=basis, codes=codes, sq_norms=norms)


def has_coarse_index(cache: FeatureCache) -> bool:
    """True when `cache` holds a finished coarse index made from it (not verified: that is on open)."""
    try:
        attrs = _coarse_attrs(zarr.open_group(cache.group.store, path=GROUP, mode="r"))
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
        return False
    return attrs.get("status") == "complete" and attrs.get("cache") == cache_fingerprint(cache)


def build_coarse_index(path: str | Path, *, dims: int | None = None, sample: int = SAMPLE, progress: Progress = True,
                       overwrite: bool = False) -> Path:
    """Build (or resume) the coarse index of the finished cache at folder `path`; return the index's folder.

    `dims` channels are kept (default `DIMS`, or all of a narrower cache's), by a PCA fitted on `sample`
    images evenly spaced through the cache.
    An unfinished index built the same way is resumed; one for another cache, or with other settings,
    raises `CacheMismatchError` unless `overwrite`. `progress`: True for a bar, False, or `callable(fraction, message)`.
    """
    cache = open_cache(path, in_memory=False)
    count, channels, height, width = cache.shape
    dims = min(DIMS, channels) if dims is None else dims
    if not 1 <= dims <= channels:
        raise ValueError(f"dims must be between 1 and the cache's {channels} channels, got {dims}: "
                         f"the default is {DIMS}")
    if sample < 1:
        raise ValueError(f"sample must be at least 1 image, got {sample}")
    folder = Path(path).expanduser() / GROUP
    sample = min(sample, count)
    group = _open_or_create(folder, cache, dims=dims, sample=sample, overwrite=overwrite)
    meta = CoarseMeta.from_attrs(_coarse_attrs(group))
    if meta.status == "complete":
        return folder
    basis = np.asarray(_array(group, "basis")[:], dtype=np.float32)  # (d, C)
    done = np.asarray(_array(group, "progress")[:])  # (blocks,)
    todo = [block for block in range(meta.blocks) if not done[block]]
    report = _reporter(progress, name=Path(path).name)
    rows = meta.shard_size
    projection = torch.from_numpy(basis.T.copy())  # (C, d)
    started, finished_blocks = time.monotonic(), meta.blocks - len(todo)
    for block in todo:
        values = torch.from_numpy(cache[block * rows:(block + 1) * rows]).permute(0, 2, 3, 1)  # (n, H, W, C)
        codes = (values.float() @ projection).to(torch.float16).numpy()  # (n, H, W, d)
        _array(group, "codes")[block * rows:block * rows + len(codes)] = codes
        _array(group, "progress")[block] = stored_size(group.store, block_key(_array(group, "codes"), block)) or 0
        finished_blocks += 1
        elapsed = time.monotonic() - started
        report(finished_blocks / meta.blocks, f"{finished_blocks}/{meta.blocks} blocks ({elapsed:.0f} s)")
    nbytes = np.asarray(_array(group, "progress")[:])  # (blocks,)
    if not nbytes.all():
        raise RuntimeError(f"internal: coarse blocks {np.flatnonzero(nbytes == 0).tolist()} are not written")
    finished = replace(meta, status="complete", finished=timestamp())
    group.attrs.update({"vfs_coarse": finished.to_attrs(), "block_nbytes": nbytes.tolist()})
    return folder


def fit_basis(cache: FeatureCache, *, dims: int, sample: int) -> tuple[np.ndarray, float]:
    """(d, C) top eigenvectors of the second moment of `sample` evenly spaced images' vectors, and the share kept."""
    count, channels = cache.shape[:2]
    indices = np.unique(np.linspace(0, count - 1, sample).round().astype(np.int64))
    moment = torch.zeros(channels, channels, dtype=torch.float64)  # (C, C)
    for start in range(0, len(indices), 256):
        part = torch.from_numpy(np.ascontiguousarray(cache.take(indices[start:start + 256]).transpose(0, 2, 3, 1)))
        vectors = part.reshape(-1, channels).double()  # (n*H*W, C)
        moment += vectors.T @ vectors  # (C, C)
    values, vectors = torch.linalg.eigh(moment)  # ascending
    basis = vectors[:, -dims:].flip(1).T.contiguous()  # (d, C), largest first
    total = float(values.clamp(min=0).sum())
    kept = float(values[-dims:].clamp(min=0).sum()) / total if total > 0 else 1.0
    return basis.float().numpy(), kept


def _open_or_create(folder: Path, cache: FeatureCache, *, dims: int, sample: int, overwrite: bool) -> zarr.Group:
    """The index group at `folder`, resumed when built the same way from this cache, else created."""
    fingerprint = cache_fingerprint(cache)
    if (folder / "zarr.json").exists():
        group = zarr.open_group(folder, mode="r+")
        attrs = cast("dict[str, Any] | None", group.attrs.get("vfs_coarse"))  # the JSON CoarseMeta.to_attrs wrote
        if attrs is not None and not overwrite:
            found = CoarseMeta.from_attrs(attrs)
            if found.cache != fingerprint:
                raise CacheMismatchError(f"{folder} was built from another cache (or an earlier build of this "
                                         "one): pass --overwrite (overwrite=True) to rebuild it")
            if (found.dims, found.sample, found.schema) != (dims, sample, SCHEMA):
                raise CacheMismatchError(f"{folder} holds an index with dims={found.dims}, sample={found.sample}"
                                         f" (asked for dims={dims}, sample={sample}): ask for those to resume "
                                         "it, or pass --overwrite (overwrite=True) to rebuild it")
            return group
    if folder.exists():
        shutil.rmtree(folder)
    count, channels, height, width = cache.shape
    basis, energy = fit_basis(cache, dims=dims, sample=sample)
    meta = CoarseMeta(schema=SCHEMA, cache=fingerprint, dims=dims, count=count, grid=(height, width),
                      channels=channels, shard_size=cache.meta.shard_size, sample=sample, energy=energy,
                      created=timestamp(), finished=None, status="building")
    group = zarr.open_group(folder, mode="w")
    group.create_array("basis", data=basis, chunks=basis.shape, compressors=compressors("none", dtype=basis.dtype))
    rows = meta.shard_size
    group.create_array("codes", shape=(count, height, width, dims), dtype="float16", chunks=(rows, height, width, dims),
                       compressors=compressors("none", dtype=np.dtype("float16")))
    group.create_array("progress", shape=(meta.blocks,), chunks=(meta.blocks,), dtype="int64", fill_value=0,
                       compressors=compressors("none", dtype=np.dtype("int64")))
    group.attrs.update({"vfs_coarse": meta.to_attrs()})  # last: a group without it is started afresh
    return group


def _array(group: zarr.Group, name: str) -> zarr.Array[Any]:
    return cast("zarr.Array[Any]", group[name])  # basis, codes and progress: arrays _open_or_create made


def _coarse_attrs(group: zarr.Group) -> dict[str, Any]:
    return cast("dict[str, Any]", group.attrs["vfs_coarse"])  # the JSON CoarseMeta.to_attrs wrote


def _reporter(progress: Progress, *, name: str) -> Callable[[float, str], None]:
    if callable(progress):
        return progress
    if not progress:
        return lambda fraction, message: None
    def show(fraction: float, message: str) -> None:
        print(f"\rcoarse index of {name}: {fraction:6.1%} {message}", end="\n" if fraction >= 1 else "", flush=True)
    return show




def index_coarse_command(argv: list[str]) -> int:
    """`python -m vfs index-coarse CACHE [--dims 48]`: build (or resume) a cache's coarse index for two-stage search."""
    parser = argparse.ArgumentParser(prog="python -m vfs index-coarse", description=index_coarse_command.__doc__)
    parser.add_argument("cache", type=Path, help="folder of a finished cache (python -m vfs index --out PATH)")
    parser.add_argument("--dims", type=int, help=f"channels kept (default {DIMS}, or all of a narrower cache's)")
    parser.add_argument("--sample", type=int, default=SAMPLE,
                        help=f"images the projection is fitted on (default {SAMPLE})")
    parser.add_argument("--overwrite", action="store_true", help="rebuild an index made otherwise or for another cache")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    folder = build_coarse_index(args.cache, dims=args.dims, sample=args.sample, overwrite=args.overwrite)
    meta = CoarseMeta.from_attrs(_coarse_attrs(zarr.open_group(folder, mode="r")))
    print(f"coarse index ready: {folder} ({meta.count:,} images x {meta.grid[0]}x{meta.grid[1]} x {meta.dims} "
          f"channels, {meta.nbytes / 2**30:.2f} GiB in RAM, keeps {meta.energy:.1%} of the squared norm; "
          f"{time.perf_counter() - started:.0f} s)")
    return 0
