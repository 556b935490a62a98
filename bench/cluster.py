"""Search and build on a 2-worker Dask cluster vs one process, ratios measured in the same run.

    flock -x /tmp/vfs-heavy.lock python bench/cluster.py [--n 40000] [--repeats 5] [--build 256]

1. Writes a cache of N x 512x7x7 float16 random post-ReLU-like features (lz4, shards of 1024).
2. One process: `open_cache(in_memory=True)`, then `vfs.search` per mask shape (median of repeats).
3. A LocalCluster of 2 worker processes (1 thread each) on this machine: `open_cluster_cache`, the
   same searches (answers checked equal to the one-process ones), the scheduler round trip alone
   (one no-op task per worker, submitted and gathered), and one query during which a worker is killed.
4. Cache build of `--build` Fashion-MNIST images (efficientnet_lite0 blocks.5, 128 px): one process
   with 2 torch threads vs the 2 workers.
5. On paper: query time and memory per worker for 1,281,167 images on 8 and 32 such workers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench/search.py: spinning OpenMP threads skew a shared box

import numpy as np  # noqa: E402
import torch  # noqa: E402
import zarr  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vfs  # noqa: E402
from bench.timing import median  # noqa: E402
from vfs.cache.build import _finish, _open_or_create, _versions, _write_block  # noqa: E402
from vfs.cache.format import SCHEMA, CacheMeta  # noqa: E402
from vfs.datasets import ImageItem  # noqa: E402

CHANNELS, GRID, SHARD = 512, 7, 1024
IMAGENET_TRAIN = 1_281_167


def masks() -> dict[str, np.ndarray]:
    out = {name: np.zeros((GRID, GRID), np.float32) for name in ("3x3", "2x2", "one cell", "L-shaped")}
    out = {"full 7x7": np.ones((GRID, GRID), np.float32), **out}
    out["3x3"][2:5, 2:5] = 1
    out["2x2"][3:5, 3:5] = 1
    out["one cell"][3, 3] = 1
    out["L-shaped"][1:5, 1] = 1
    out["L-shaped"][4, 1:4] = 1
    return out


def write_cache(out: Path, count: int) -> float:
    """A finished cache of seeded random features; returns seconds."""
    started = time.perf_counter()
    meta = CacheMeta(schema=SCHEMA, model="bench", weights_id="none", layer="random", preprocess={
        "size": 8, "crop": 8, "mean": [0.5] * 3, "std": [0.25] * 3}, input_size=8, grid=(GRID, GRID),
        channels=CHANNELS, dtype="float16", count=count, shard_size=SHARD, batch_size=32, codec="lz4",
        checksum=True, thumbnail=8, dataset="random", dataset_fingerprint="random", label_names=("x",),
        arrays=("features", "thumbnails", "sq_norms", "labels", "image_sizes", "ids"), versions=_versions(),
        created="", finished=None, status="building")
    generator = torch.Generator().manual_seed(0)
    picture = Image.new("RGB", (8, 8))
    with zarr.config.set({"array.write_empty_chunks": True}):
        group, meta = _open_or_create(out, meta, overwrite=True)
        for block in range(meta.blocks):
            n = min(SHARD, count - block * SHARD)
            features = torch.randn(n, GRID, GRID, CHANNELS, generator=generator).clamp_(min=0).half()  # (n, H, W, C)
            items = [ImageItem(picture, 0, str(block * SHARD + i)) for i in range(n)]
            _write_block(group, meta, block, items, features, np.zeros((n, 8, 8, 3), np.uint8))
        _finish(group, meta)
    return time.perf_counter() - started


def build_rate(images: int, work: Path, *, scheduler=None) -> float:
    out = work / ("build-cluster" if scheduler else "build-local")
    shutil.rmtree(out, ignore_errors=True)
    options = {"layer": "blocks.5", "dataset": f"fashion-mnist:test[:{images}]", "input_size": 128,
               "shard_size": 64, "batch_size": 32, "progress": False}
    warm = work / ("warm-cluster" if scheduler else "warm-local")  # its own folder: a finished one builds nothing
    shutil.rmtree(warm, ignore_errors=True)
    vfs.build_cache("efficientnet_lite0", out=warm, scheduler=scheduler,
                    **options)  # every worker: model loaded, dataset opened (same spec), pages touched
    started = time.perf_counter()
    vfs.build_cache("efficientnet_lite0", out=out, scheduler=scheduler, **options)
    return images / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--build", type=int, default=256, help="images for the build comparison (0: skip)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/vfs-bench-cluster"))
    args = parser.parse_args()
    from distributed import Client, LocalCluster

    args.work.mkdir(parents=True, exist_ok=True)
    if args.n == 0:  # the build comparison alone
        return build_comparison(args.build, args.work)
    path = args.work / "cache"
    seconds = write_cache(path, args.n)
    gigabytes = args.n * GRID * GRID * (CHANNELS * 2 + 4) / 1e9
    print(f"cache: {args.n:,} x {CHANNELS}x{GRID}x{GRID} float16 ({gigabytes:.2f} GB in RAM) written in {seconds:.0f} s")
    rng = np.random.default_rng(1)
    query = np.maximum(rng.standard_normal((CHANNELS, GRID, GRID)), 0).astype(np.float32)

    torch.set_num_threads(2)
    local = vfs.open_cache(path, in_memory=True)
    one = {name: median(lambda w=weights, s=local: vfs.search(query, w, s, k=20), args.repeats)
           for name, weights in masks().items()}
    del local

    rows = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        started = time.perf_counter()
        remote = vfs.open_cluster_cache(path, scheduler=client)
        load = time.perf_counter() - started
        memory = client.run(lambda: __import__("psutil").Process().memory_info().rss)
        for name, weights in masks().items():
            seconds, found = median(lambda w=weights: vfs.search(query, w, remote, k=20), args.repeats)
            rows.append((name, one[name][0], seconds, found == one[name][1]))
        workers = sorted(client.ncores())
        trip, _ = median(lambda: client.gather([client.submit(int, i, workers=[w], pure=False)
                                                for i, w in enumerate(workers)]), 20)
        weights = masks()["3x3"]
        pid = client.run(os.getpid)[workers[0]]
        gather = remote.client.gather

        def kill_then_gather(futures, *a, **kw):
            os.kill(pid, signal.SIGKILL)
            return gather(futures, *a, **kw)

        remote.client.gather = kill_then_gather
        started = time.perf_counter()
        found = vfs.search(query, weights, remote, k=20)
        killed = time.perf_counter() - started
        remote.client.gather = gather
        exact_after_kill = found == one["3x3"][1]
        remote.close()

    print(f"\ncluster: 2 worker processes x 1 thread on this 2-core machine; shards loaded in {load:.1f} s; "
          f"worker RSS {', '.join(f'{v / 1e9:.2f} GB' for v in memory.values())}")
    print(f"{'mask':<12} {'one process':>12} {'2 workers':>10} {'ratio':>6}  same top 20")
    for name, here, there, same in rows:
        print(f"{name:<12} {here * 1e3:>9.0f} ms {there * 1e3:>7.0f} ms {there / here:>6.2f}  {same}")
    print(f"scheduler round trip alone (one no-op task per worker): {trip * 1e3:.1f} ms")
    print(f"query with a worker SIGKILLed mid-query: {killed:.1f} s (vs {dict((r[0], r[2]) for r in rows)['3x3']:.2f} s), "
          f"exact: {exact_after_kill}")

    per_image = statistics.median((there - trip) * 2 / args.n for _, _, there, _ in rows)  # s per image per worker
    worst = max((there - trip) * 2 / args.n for _, _, there, _ in rows)
    bytes_per_image = GRID * GRID * (CHANNELS * 2 + 4)
    print(f"\non paper, {IMAGENET_TRAIN:,} images (ResNet50 layer4 512x7x7 float16 + norms, "
          f"{IMAGENET_TRAIN * bytes_per_image / 1e9:.1f} GB), workers like these (1 core each):")
    for count in (8, 32):
        share = IMAGENET_TRAIN / count
        print(f"  {count:>2} workers: {share * bytes_per_image / 1e9:.2f} GB per worker, query "
              f"{share * per_image + trip:.2f} s median mask ({share * worst + trip:.2f} s slowest)")

    if args.build:
        build_comparison(args.build, args.work)
    shutil.rmtree(args.work, ignore_errors=True)
    return 0


def build_comparison(images: int, work: Path) -> int:
    from distributed import Client, LocalCluster

    here = build_rate(images, work)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        there = build_rate(images, work, scheduler=client)
    print(f"\nbuild {images} Fashion-MNIST images (efficientnet_lite0 blocks.5, 128 px, shards of 64; timed after "
          f"a warm-up build of the same images): one process (2 threads) {here:.1f} images/s, 2 workers x 1 thread "
          f"{there:.1f} images/s, ratio {there / here:.2f}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
