"""Re-encode a finished local cache for distribution, and write its manifest.

The copy keeps the cache layer's layout (`vfs/cache/format.py`: one file per block of S images per
array, crc32c on every chunk) so `vfs.open_cache` reads it unchanged. Only the features, nearly all
the bytes, are re-encoded: blosc zstd or lz4 (+ byte shuffle, + crc32c), and inner chunks of about
`CHUNK_BYTES` instead of one image each (zarr's per-chunk cost made a full read of 10,000 one-image
chunks ~10x slower; one image still reads in the same time). The per-block byte sizes the cache
layer checks (`block_nbytes`, `progress`) and the hash that ties each block file to its place
(`block_xxh3`, `digests`) are recomputed for them; a build's lock file is not copied.

    folder/
      cache.zarr/...      the Zarr v3 group
      README.md           dataset card (card.py)
      manifest.json       sha256 and size of every other file, and what the cache holds
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from hub_caches.remote import MANIFEST, MANIFEST_FORMAT, STORE_DIR, sha256_file
from vfs.cache.durable import LOCK
from vfs.cache.format import CacheMeta, block_file, block_key, digest

# blosc settings per codec, measured by bench/hub.py on real efficientnet_lite0 features (10,000 x
# 7x7x80 blocks.3 and 2,000 x 7x7x192 blocks.5; projection outputs, half negative, so dense float16):
# zstd-5 + byte shuffle 1.16-1.17x, encode 37-84 MB/s, decode 750-820 MB/s; zstd-1/3 only 1.08-1.09x;
# zstd-7/9 no smaller than 5 and slower to encode; lz4 found nothing to compress (1.00x).
CHUNK_BYTES = 512 * 1024  # target size of one inner chunk of features (a whole number of images)
CODECS: dict[str, dict[str, Any]] = {
    "zstd": {"cname": "zstd", "clevel": 5, "shuffle": "shuffle"},
    "lz4": {"cname": "lz4", "clevel": 5, "shuffle": "shuffle"},
}


def feature_compressors(codec: str, *, dtype: np.dtype, clevel: int | None = None) -> list[Any]:
    """Bytes-to-bytes codecs for distributed features: blosc (zstd or lz4, byte shuffle), then crc32c."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}: use one of {', '.join(CODECS)}")
    settings = {**CODECS[codec], **({"clevel": clevel} if clevel is not None else {})}
    return [BloscCodec(typesize=np.dtype(dtype).itemsize, **settings), Crc32cCodec()]


def inner_rows(shard_rows: int, row_bytes: int) -> int:
    """Images per inner chunk: the largest divisor of the shard's images that keeps a chunk <= CHUNK_BYTES."""
    fits = max(1, CHUNK_BYTES // max(1, row_bytes))
    return max(d for d in range(1, min(fits, shard_rows) + 1) if shard_rows % d == 0)


def encode_cache(source: str | Path, out: str | Path, *, codec: str = "zstd",
                 clevel: int | None = None) -> Path:
    """Copy the finished cache at `source` to `out/cache.zarr` with its features re-compressed; return it."""
    source, target = Path(source), Path(out) / STORE_DIR
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(LOCK))  # all but the features byte for byte
    group = zarr.open_group(target, mode="r+")
    old = group["features"]
    meta = CacheMeta.from_attrs(group.attrs["vfs_cache"])
    del group["features"]
    with zarr.config.set({"array.write_empty_chunks": True}):  # never leave a chunk to the fill value
        rows = old.shards[0] if old.shards else old.chunks[0]
        new = group.create_array(
            "features", shape=old.shape, dtype=old.dtype, shards=(rows,) + old.shape[1:],
            chunks=(inner_rows(rows, old.dtype.itemsize * int(np.prod(old.shape[1:]))),) + old.shape[1:],
            fill_value=old.fill_value, attributes=dict(old.attrs),
            compressors=feature_compressors(codec, dtype=old.dtype, clevel=clevel))
        source_features = zarr.open_array(source / "features", mode="r")
        for start in range(0, old.shape[0], rows):
            new[start:start + rows] = source_features[start:start + rows]  # (S, H, W, C)
    files = [block_file(group.store, block_key(new, block)) or b"" for block in range(-(-old.shape[0] // rows))]
    sizes, digests = [len(data) for data in files], [digest(data) for data in files]
    column = list(meta.arrays).index("features")
    for table, values in (("progress", sizes), ("digests", digests)):
        if table in group:  # (blocks, arrays); "digests" is absent from caches built before it existed
            rows_of = group[table][:]
            rows_of[:, column] = values
            group[table][:] = rows_of
    nbytes = dict(group.attrs.get("block_nbytes", {}))
    nbytes["features"] = sizes
    update = {"block_nbytes": nbytes, "vfs_cache": {**group.attrs["vfs_cache"], "codec": codec}}
    if "block_xxh3" in group.attrs:
        update["block_xxh3"] = {**group.attrs["block_xxh3"], "features": digests}
    group.attrs.update(update)
    with warnings.catch_warnings():  # zarr notes that v3 has no spec for it yet; zarr itself reads it
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(target)  # opening reads one zarr.json instead of one per array
    return target


def cache_facts(meta: Any, *, codec: str, size_bytes: int) -> dict[str, Any]:
    """What a published cache holds, from its `CacheMeta`: recorded in the manifest and the card."""
    height, width = meta.grid
    return {"model": meta.model, "weights_id": meta.weights_id, "layer": meta.layer, "dataset": meta.dataset,
            "n": meta.count, "grid": [height, width], "channels": meta.channels, "dtype": meta.dtype,
            "shape": [meta.count, meta.channels, height, width],
            "stored_shape": [meta.count, height, width, meta.channels], "input_size": meta.input_size,
            "label_names": list(meta.label_names), "codec": codec, "shard_size": meta.shard_size,
            "size_bytes": size_bytes}


def write_manifest(folder: str | Path, cache: dict[str, Any]) -> Path:
    """Write `folder/manifest.json`: sha256 and size of every file under `folder` (itself excepted)."""
    folder = Path(folder)
    files = {path.relative_to(folder).as_posix(): {"sha256": sha256_file(path), "size": path.stat().st_size}
             for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MANIFEST}
    manifest = {"format": MANIFEST_FORMAT, "cache": cache, "files": files}
    target = folder / MANIFEST
    target.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return target


def folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())

