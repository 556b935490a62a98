"""Two-stage search: recall against exact search on real features, and speed at scale from disk.

    # recall@10 / @100 vs M on a real cache (e.g. Fashion-MNIST train + test through efficientnet_lite0)
    flock -x /tmp/vfs-heavy.lock python bench/two_stage.py recall --cache CACHE [--cache CACHE2] \
        [--queries 200] [--dims 16,32,48] [--candidates 100,300,1000,3000]

    # index size, build time and query time per mask on >= 400,000 synthetic 512x7x7 images on disk
    flock -x /tmp/vfs-heavy.lock python bench/two_stage.py scale --out /tmp/x/synthetic --images 400000 \
        --like CACHE [--queries 5]

recall: every design is scored the same way. For each query (a random image, a random placement of
each mask shape) the exact best window of every image is computed (`vfs.best_windows` over the
cache in RAM), and so is the design's approximate one; two-stage with M candidates returns the top k
by exact score among the M best approximate images, which is what `vfs.search_two_stage` returns
(tests/test_two_stage.py checks that equality). recall@k = |two-stage top k ∩ exact top k| / k,
the query image excluded, averaged over queries. Designs: float16 PCA codes with d channels
(what `python -m vfs index-coarse --dims d` builds), and int8 codes with a per-position scale (only
simulated here, for the comparison). Several --cache are concatenated (train + test).

scale: the synthetic features are the real ones of --like (C' channels) mapped to 512 channels by a
fixed random matrix, tiled over --images, plus Gaussian noise (--noise of their std; slices of a
pool of 4 blocks of noise, so writing 20 GB is not bound by the random generator); written as a cache on disk (lz4, the
default), then indexed with the default settings. Each query evicts the cache's files from the page
cache first (posix_fadvise DONTNEED on this cache's files only), so stage 2 reads from the disk cold;
`--fresh` also opens the cache afresh per query (shard indices read again). `--full-scale` times stage 1
over the index tiled to 1,281,167 images in RAM, beside the former stage 1 (`vfs.best_windows` over the
index) in the same run, and prints the ratio.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench/search.py
import torch  # noqa: E402
import zarr  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vfs  # noqa: E402
from vfs.cache.arrays import write_cache  # noqa: E402
from vfs.cache.build import _finish, _open_or_create  # noqa: E402
from vfs.cache.coarse import CoarseIndex, CoarseMeta, build_coarse_index, fit_basis, open_coarse_index  # noqa: E402
from vfs.cache.format import CacheMeta as CacheMeta_  # noqa: E402
from vfs.cache.format import block_key  # noqa: E402
from vfs.retrieval.two_stage import coarse_scores, search_two_stage, top_indices  # noqa: E402
from vfs.retrieval.window import best_windows  # noqa: E402

MASKS = ("full", "3x3", "2x2", "one cell", "L-shaped")
FULL_SCALE = 1_281_167  # ImageNet train


def make_weights(name: str, grid: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A mask of shape `name` at a random place on the grid: (H, W) float32."""
    height, width = grid
    weights = np.zeros(grid, np.float32)
    if name == "full":
        weights[:] = 1
        return weights
    box = {"3x3": (3, 3), "2x2": (2, 2), "one cell": (1, 1), "L-shaped": (3, 3)}[name]
    top, left = rng.integers(0, height - box[0] + 1), rng.integers(0, width - box[1] + 1)
    if name == "L-shaped":  # left column and bottom row of a 3x3 box: 5 cells
        weights[top:top + 3, left] = 1
        weights[top + 2, left:left + 3] = 1
    else:
        weights[top:top + box[0], left:left + box[1]] = 1
    return weights


class Concatenated:
    """Several caches in RAM as one source (N, C, H, W) with sq_norms."""

    def __init__(self, caches):
        self.features = np.concatenate([cache._features for cache in caches])  # (N, H, W, C)
        self.sq_norms = np.concatenate([cache.sq_norms for cache in caches])  # (N, H, W)
        n, height, width, channels = self.features.shape
        self.shape = (n, channels, height, width)

    def __getitem__(self, index):
        block = self.features[index]
        return block.transpose(2, 0, 1) if block.ndim == 3 else block.transpose(0, 3, 1, 2)

    def take(self, indices):
        return self[indices]

    def __len__(self) -> int:
        return self.shape[0]


def coarse_design(source, *, dims: int, int8: bool, sample: int = 4096) -> CoarseIndex:
    """A coarse index in RAM: float16 PCA codes, or int8 codes with a per-position scale (dequantised)."""
    basis, energy = fit_basis(source, dims=dims, sample=sample)
    projection = torch.from_numpy(basis.T.copy())  # (C, d)
    n, channels, height, width = source.shape
    codes = np.empty((n, height, width, dims), np.float16)
    for start in range(0, n, 4096):
        block = torch.from_numpy(source.features[start:start + 4096]).float() @ projection  # (b, H, W, d)
        if int8:
            scale = block.abs().amax(dim=3, keepdim=True).clamp(min=1e-12) / 127  # (b, H, W, 1)
            block = (block / scale).round().clamp(-127, 127) * scale  # (b, H, W, d)
        codes[start:start + len(block)] = block.to(torch.float16).numpy()
    meta = CoarseMeta(schema=1, cache="", dims=dims, count=n, grid=(height, width), channels=channels,
                      shard_size=n, sample=sample, energy=energy, created="", finished=None, status="complete")
    return CoarseIndex(meta=meta, basis=basis, codes=codes, sq_norms=source.sq_norms)


def recall(args) -> None:
    caches = [vfs.open_cache(path, in_memory=True) for path in args.cache]
    source = Concatenated(caches)
    n, channels, height, width = source.shape
    print(f"{n:,} images of {caches[0].meta.model} {caches[0].meta.layer} ({channels}x{height}x{width}, "
          f"{caches[0].meta.dtype}) from {', '.join(map(str, args.cache))}; {args.queries} queries per mask")
    designs = {f"fp16 d={d}": dict(dims=d, int8=False) for d in args.dims}
    designs.update({f"int8 d={d}": dict(dims=d, int8=True) for d in args.int8_dims})
    indexes = {}
    for name, settings in designs.items():
        started = time.perf_counter()
        indexes[name] = coarse_design(source, **settings)
        print(f"  {name}: keeps {indexes[name].meta.energy:.2%} of the squared norm, "
              f"built in {time.perf_counter() - started:.1f} s")
    ks, ms = (10, 100), args.candidates
    hits = {(name, mask, k, m): [] for name in designs for mask in MASKS for k in ks for m in ms}
    times = {(name, mask): [] for name in [*designs, "exact"] for mask in MASKS}
    rng = np.random.default_rng(args.seed)
    for mask in MASKS:
        for _ in range(args.queries):
            image = int(rng.integers(n))
            query = torch.from_numpy(source[image].astype(np.float32))  # (C, H, W)
            weights = torch.from_numpy(make_weights(mask, (height, width), rng))
            started = time.perf_counter()
            exact = best_windows(query, weights, source).scores.copy()  # (N,)
            times["exact", mask].append(time.perf_counter() - started)
            exact[image] = -np.inf
            truth = {k: set(top_indices(exact, k).tolist()) for k in ks}
            for name, index in indexes.items():
                started = time.perf_counter()
                _, approximate = coarse_scores(index.project(query), weights, index)  # (N,)
                times[name, mask].append(time.perf_counter() - started)
                approximate[image] = -np.inf
                for m in ms:
                    picked = top_indices(approximate, m)
                    for k in ks:
                        found = picked[top_indices(exact[picked], k)]
                        hits[name, mask, k, m].append(len(truth[k] & set(found.tolist())) / k)
    print(f"\nrecall@10 / recall@100 (mean over {args.queries} queries; M = candidates re-scored exactly)")
    header = f"{'design':<12} {'mask':<9} " + " ".join(f"{'M=' + str(m):>13}" for m in ms)
    print(header)
    for name in designs:
        for mask in MASKS:
            cells = " ".join(f"{np.mean(hits[name, mask, 10, m]):6.3f}/{np.mean(hits[name, mask, 100, m]):6.3f}"
                             for m in ms)
            print(f"{name:<12} {mask:<9} {cells}")
        worst = " ".join(f"{min(np.mean(hits[name, mask, 10, m]) for mask in MASKS):13.3f}" for m in ms)
        print(f"{name:<12} {'worst@10':<9} {worst}")
    print(f"\nstage-1 scan time per query over {n:,} images in RAM (median s), vs exact search of the same")
    print(f"{'mask':<9} {'exact':>8} " + " ".join(f"{name:>11}" for name in designs))
    for mask in MASKS:
        row = " ".join(f"{statistics.median(times[name, mask]):11.3f}" for name in designs)
        print(f"{mask:<9} {statistics.median(times['exact', mask]):8.3f} {row}")


def synthetic_blocks(like: Path, *, images: int, channels: int, shard: int, noise: float, seed: int):
    """Blocks (shard, H, W, channels) float16 of real features mapped to `channels`, tiled, plus noise."""
    real = vfs.open_cache(like, in_memory=True)
    generator = torch.Generator().manual_seed(seed)
    features = torch.from_numpy(real._features)  # (N', H, W, C')
    mixing = torch.randn(features.shape[3], channels, generator=generator) / features.shape[3] ** 0.5  # (C', C)
    base = torch.cat([part.float() @ mixing for part in features.split(1024)])  # (N', H, W, C), once
    spread = float(base[:1000].std())
    pool = torch.randn(4 * shard, *base.shape[1:3], channels, generator=generator) * (noise * spread)  # noise
    for start in range(0, images, shard):
        rows = torch.arange(start, min(images, start + shard)) % base.shape[0]
        first = int(torch.randint(0, 3 * shard, (1,), generator=generator))  # a different noise slice per block
        yield (base[rows] + pool[first:first + len(rows)]).to(torch.float16).numpy()  # (n, H, W, C)


def tile_cache(source: Path, out: Path, *, images: int) -> None:
    """A cache of `images` (a multiple of the shard size) whose block files are copies of `source`'s written blocks.

    `source` may be unfinished: its written full blocks are the distinct ones, copied in turn (real copies,
    so the new cache takes its full size on disk and its own page-cache pages).
    """
    group = zarr.open_group(source, mode="r")
    meta = CacheMeta_.from_attrs(group.attrs["vfs_cache"])
    progress = group["progress"][:]  # (blocks, arrays)
    distinct = [b for b in np.flatnonzero(progress.all(axis=1)) if (b + 1) * meta.shard_size <= meta.count]
    if images % meta.shard_size:
        raise ValueError(f"--images must be a multiple of {meta.shard_size} to tile whole blocks")
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    wanted = replace(meta, count=images, status="building", finished=None, created=now)
    with zarr.config.set({"array.write_empty_chunks": True}):
        target, wanted = _open_or_create(out, wanted, overwrite=True)
        for block in range(wanted.blocks):
            origin = distinct[block % len(distinct)]
            for name in meta.arrays:
                destination = out / block_key(target[name], block)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / block_key(group[name], origin), destination)
            target["progress"][block] = progress[origin]
        _finish(target, wanted)
    print(f"tiled {len(distinct)} distinct blocks of {source} into {images:,} images at {out}")


def evict(folder: Path) -> None:
    """Drop this cache's files (only them) from the page cache, so the next reads hit the disk."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as file:
                os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def scale(args) -> None:
    out = Path(args.out)
    grid = vfs.open_cache(args.like, in_memory=False).meta.grid
    if args.tile_from:
        started = time.perf_counter()
        tile_cache(args.tile_from, out, images=args.images)
        print(f"tiled in {time.perf_counter() - started:.0f} s")
    elif not (out / "zarr.json").exists() or args.rewrite:
        started = time.perf_counter()
        write_cache(synthetic_blocks(args.like, images=args.images, channels=args.channels, shard=1024,
                                     noise=args.noise, seed=args.seed),
                    out, count=args.images, grid=grid, channels=args.channels, overwrite=True, name="synthetic")
        print(f"wrote {args.images:,} synthetic images in {time.perf_counter() - started:.0f} s")
    if args.write_only:
        return
    disk = sum(p.stat().st_size for p in (out / "features").rglob("*") if p.is_file())
    print(f"cache: {args.images:,} x {args.channels}x{grid[0]}x{grid[1]} float16, features {disk / 2**30:.2f} GiB on disk")
    started = time.perf_counter()
    build_coarse_index(out, progress=False, overwrite=args.rewrite)
    build = time.perf_counter() - started
    print(f"coarse index built in {build:.0f} s (0 if it existed)")
    if args.build_only:
        return
    cache = vfs.open_cache(out, in_memory=False)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    index = open_coarse_index(cache)
    opened = time.perf_counter() - started
    codes, norms = index.codes.nbytes, index.sq_norms.nbytes
    print(f"coarse index: d={index.meta.dims}, codes {codes / 2**30:.3f} GiB + sq_norms {norms / 2**30:.3f} GiB in RAM "
          f"(max RSS {rss / 2**20:.2f} -> {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB); "
          f"build {build:.0f} s (this run; 0 if it existed), open+verify {opened:.1f} s")
    factor = FULL_SCALE / args.images
    print(f"at {FULL_SCALE:,} images: codes {codes * factor / 2**30:.2f} GiB + sq_norms "
          f"{norms * factor / 2**30:.2f} GiB = {(codes + norms) * factor / 2**30:.2f} GiB")
    rng = np.random.default_rng(args.seed)
    print(f"\nper query (median of {args.queries}; stage 2 from a cold page cache), M = {args.candidates}; "
          "wall seconds, and CPU seconds of this process (all threads): on a machine shared with other jobs "
          "the wall time waits for the CPU, and CPU / 2 is the wall time two idle cores would need")
    print(f"{'mask':<9} {'stage 1 wall/cpu':>17} {'stage 2 wall/cpu':>17}   at 1.28M: stage 1 x {factor:.3f} + stage 2 (wall)")
    for mask in MASKS:
        first, second, first_cpu, second_cpu = [], [], [], []
        for _ in range(args.queries):
            image = int(rng.integers(args.images))
            query = torch.from_numpy(cache.take(np.array([image]))[0].astype(np.float32))  # (C, H, W)
            weights = torch.from_numpy(make_weights(mask, grid, rng))
            evict(out / "features")
            if args.fresh:  # a cache object that has read nothing yet: shard indices and sizes read again too
                cache = vfs.open_cache(out, in_memory=False)
            started, cpu = time.perf_counter(), time.process_time()
            coarse_scores(index.project(query), weights, index)
            middle, middle_cpu = time.perf_counter(), time.process_time()
            search_two_stage(query, weights, cache, index=index, candidates=args.candidates, k=10)
            end, end_cpu = time.perf_counter(), time.process_time()  # stage 1 again, then stage 2
            first.append(middle - started)
            first_cpu.append(middle_cpu - cpu)
            second.append(max(0.0, (end - middle) - (middle - started)))
            second_cpu.append(max(0.0, (end_cpu - middle_cpu) - (middle_cpu - cpu)))
        one, two = statistics.median(first), statistics.median(second)
        print(f"{mask:<9} {one:8.3f}/{statistics.median(first_cpu):8.3f} {two:8.3f}/{statistics.median(second_cpu):8.3f}"
              f"   {one * factor + two:8.2f}")
    if args.full_scale:
        started = time.perf_counter()
        tiled = CoarseIndex(meta=index.meta, basis=index.basis,
                            codes=np.resize(index.codes, (FULL_SCALE, *index.codes.shape[1:])),  # (N', H, W, d)
                            sq_norms=np.resize(index.sq_norms, (FULL_SCALE, *index.sq_norms.shape[1:])))
        print(f"\nstage 1 at {FULL_SCALE:,} images (the index tiled in RAM in {time.perf_counter() - started:.0f} s: "
              f"codes {tiled.codes.nbytes / 2**30:.2f} GiB + sq_norms {tiled.sq_norms.nbytes / 2**30:.2f} GiB), "
              f"measured, median of {args.queries}; baseline: vfs.best_windows over the index, as stage 1 ran before "
              "coarse_scores (block by block, every window's score kept, then a max)")
        for mask in MASKS:
            spent, spent_cpu, baseline = [], [], []
            for _ in range(args.queries):
                query = torch.from_numpy(cache.take(np.array([int(rng.integers(args.images))]))[0].astype(np.float32))
                weights = torch.from_numpy(make_weights(mask, grid, rng))
                projected = tiled.project(query)
                started, cpu = time.perf_counter(), time.process_time()
                _, scores = coarse_scores(projected, weights, tiled)  # (N',)
                top_indices(scores, args.candidates)
                spent.append(time.perf_counter() - started)
                spent_cpu.append(time.process_time() - cpu)
                started = time.perf_counter()
                former = best_windows(projected, weights, tiled).scores  # (N',)
                top_indices(former, args.candidates)
                baseline.append(time.perf_counter() - started)
                assert np.abs(former - scores).max() < 1e-5
            print(f"{mask:<9} stage 1 wall {statistics.median(spent):6.3f} s (min {min(spent):.3f}), "
                  f"CPU {statistics.median(spent_cpu):6.3f} s; baseline {statistics.median(baseline):6.3f} s "
                  f"({statistics.median(baseline) / statistics.median(spent):.2f}x)")
        del tiled
    if args.exact:
        evict(out / "features")
        image = int(rng.integers(args.images))
        query = torch.from_numpy(cache.take(np.array([image]))[0].astype(np.float32))
        started, cpu = time.perf_counter(), time.process_time()
        vfs.search(query, torch.ones(grid), cache, k=10)
        print(f"\nexact search of the full mask, streamed from disk (cold): wall {time.perf_counter() - started:.1f} s, "
              f"CPU {time.process_time() - cpu:.1f} s")
    print(f"load average at the end: {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("recall")
    one.add_argument("--cache", type=Path, action="append", required=True)
    one.add_argument("--queries", type=int, default=200)
    one.add_argument("--dims", type=lambda s: [int(v) for v in s.split(",")], default=[16, 32, 48])
    one.add_argument("--int8-dims", type=lambda s: [int(v) for v in s.split(",") if v], default=[64])
    one.add_argument("--candidates", type=lambda s: [int(v) for v in s.split(",")], default=[100, 300, 1000, 3000])
    one.add_argument("--seed", type=int, default=0)
    two = commands.add_parser("scale")
    two.add_argument("--out", type=Path, required=True)
    two.add_argument("--like", type=Path, required=True, help="a real cache whose features seed the synthetic ones")
    two.add_argument("--images", type=int, default=400_000)
    two.add_argument("--channels", type=int, default=512)
    two.add_argument("--noise", type=float, default=0.3, help="noise std as a share of the features' std")
    two.add_argument("--queries", type=int, default=5)
    two.add_argument("--candidates", type=int, default=1000)
    two.add_argument("--fresh", action="store_true", help="open the cache afresh before each query (stage 2 then "
                     "also reads each block's shard index and checks its size, as the first query after opening does)")
    two.add_argument("--exact", action="store_true", help="also time one exact search from disk")
    two.add_argument("--full-scale", action="store_true",
                     help=f"also time stage 1 over the index tiled to {FULL_SCALE:,} images in RAM (4.3 GB more)")
    two.add_argument("--rewrite", action="store_true")
    two.add_argument("--write-only", action="store_true", help="write the synthetic cache, time nothing")
    two.add_argument("--tile-from", type=Path, help="a synthetic cache (even unfinished) whose blocks are copied "
                     "in turn to make --out (much faster than generating every block)")
    two.add_argument("--build-only", action="store_true", help="build the coarse index, time no query")
    two.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    (recall if args.command == "recall" else scale)(args)


if __name__ == "__main__":
    main()
