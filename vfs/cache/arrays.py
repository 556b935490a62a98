"""`write_cache`: a feature cache of features computed elsewhere (or synthetic), in the usual layout.

    write_cache(blocks, "caches/mine", count=N, grid=(7, 7), channels=512)   # blocks of (n, H, W, C)

The result opens with `vfs.open_cache` and searches like a model-built cache; it names model and
layer as given (default "external"), has black 1x1 thumbnails unless given, and labels -1 unless
given. Used for benchmarks at a scale no model run here could reach, and for tests that plant features.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import cast

import numpy as np
import zarr

from vfs.cache.build import _array, _finish, _open_or_create, _versions
from vfs.cache.format import SCHEMA, SHARD, SHARDED, CacheMeta, block_key, stored_size, timestamp
from vfs.cache.shard_file import write_shard


def write_cache(blocks: Iterable[np.ndarray], out: str | Path, *, count: int, grid: tuple[int, int],
                channels: int, dtype: str = "float16", shard_size: int = SHARD, codec: str = "lz4",
                labels: np.ndarray | None = None, name: str = "external", overwrite: bool = False) -> Path:
    """Write blocks of features (n, H, W, C), `count` images in all, as a finished cache at `out`.

    Every block but the last must hold exactly `shard_size` images. `labels` (count,) int64, or -1.
    """
    now = timestamp()
    meta = CacheMeta(
        schema=SCHEMA, model=name, weights_id=name, layer=name,
        preprocess={"size": 1, "crop": 1, "mean": [0.0] * 3, "std": [1.0] * 3},  # no pixels: each image is 1x1
        input_size=1, grid=cast("tuple[int, int]", tuple(grid)), channels=channels, dtype=dtype, count=count, shard_size=shard_size,
        batch_size=shard_size, codec=codec, checksum=True, thumbnail=1, dataset=name, dataset_fingerprint=name,
        label_names=(), arrays=("features", "thumbnails", "sq_norms", "labels", "image_sizes", "ids"),
        versions=_versions(), created=now, finished=None, status="building")
    out = Path(out).expanduser()
    labels = np.full(count, -1, np.int64) if labels is None else np.asarray(labels, np.int64)
    with zarr.config.set({"array.write_empty_chunks": True}):
        group, meta = _open_or_create(out, meta, overwrite=overwrite)
        start = 0
        for block, features in enumerate(blocks):
            features = np.ascontiguousarray(features, dtype=dtype)  # (n, H, W, C)
            n = len(features)
            if features.shape[1:] != (*grid, channels) or (n != shard_size and start + n != count):
                raise ValueError(f"block {block} has shape {features.shape}: expected ({shard_size}, "
                                 f"{grid[0]}, {grid[1]}, {channels}) (the last block may be shorter)")
            values = {
                "features": features,
                "sq_norms": np.square(features, dtype=np.float32).sum(-1, dtype=np.float32),  # (n, H, W)
                "thumbnails": np.zeros((n, 1, 1, 3), np.uint8),
                "labels": labels[start:start + n],
                "image_sizes": np.ones((n, 2), np.int32),
                "ids": np.array([f"{i:08d}" for i in range(start, start + n)], dtype=object),
            }
            for array in meta.arrays:
                if array not in SHARDED or not write_shard(_array(group, array), block, values[array]):
                    _array(group, array)[start:start + n] = values[array]
            sizes = [stored_size(group.store, block_key(_array(group, array), block)) or 0 for array in meta.arrays]
            _array(group, "progress")[block] = np.array(sizes, dtype=np.int64)
            start += n
        if start != count:
            raise ValueError(f"the blocks held {start} images, count says {count}")
        _finish(group, meta)
    return out
