"""Benchmark hub_caches on a real cache: compression of features, and requests/bytes/time served by a Hub.

    python -m vfs index --model efficientnet_lite0 --layer blocks.3 --dataset fashion-mnist:test \
        --input-size 112 --out /tmp/caches/fmnist10k                   # 10,000 images, 7x7x80, ~6 min
    flock /tmp/vfs-heavy.lock python bench/hub.py --cache /tmp/caches/fmnist10k [--codec-cache PATH ...] \
        [--latency 0.05 --bandwidth 50e6]

1. Compression of the features alone, blosc with byte shuffle: the codec alone on chunk-sized blocks
   (ratio, encode and decode MB/s), then zarr arrays (+ crc32c) with the inner chunks `push` writes
   and with the cache's one-image chunks (whole read, best of 3, warm disk).
2. The cache pushed to tests/hub_server.py (its own process on 127.0.0.1, optionally with a network's
   latency and bandwidth imitated) and read back with an empty Hugging Face cache per scenario:
   open, one lookup (an image's features and thumbnail), a search over one block, a full-scan
   search (prefetch off and on, then warm), `pull`; and the same lookup and scan through fsspec
   `hf://` range reads. Times are also given as ratios to the same search on the local cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import zarr
from numcodecs import Blosc

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import vfs  # noqa: E402 (after the path set-up)
from bench.timing import best  # noqa: E402
from hub_caches.encode import CODECS, feature_compressors, inner_rows  # noqa: E402

SETTINGS = [("lz4", 5), ("zstd", 1), ("zstd", 3), ("zstd", 5), ("zstd", 7), ("zstd", 9)]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def compression(cache: Path, work: Path) -> list[dict]:
    """Size and speed of each codec on the features of `cache` (byte shuffle over float16 items)."""
    source = zarr.open_array(cache / "features", mode="r")
    raw = source[:]  # (N, H, W, C)
    shard = source.shards[0]
    inner = inner_rows(shard, raw[0].nbytes)
    blocks = [raw[i:i + inner] for i in range(0, len(raw), inner)]  # each (inner, H, W, C): one chunk's worth
    rows = []
    for codec, level in SETTINGS:
        blosc = Blosc(cname=codec, clevel=level, shuffle=Blosc.SHUFFLE)  # typesize 2 from the float16 items
        start = time.perf_counter()
        encoded = [blosc.encode(block) for block in blocks]
        encode = time.perf_counter() - start
        decode = best(lambda blosc=blosc, encoded=encoded: [blosc.decode(e) for e in encoded])
        row = {"codec": f"{codec}-{level}", "ratio": raw.nbytes / sum(map(len, encoded)),
               "encode_MBps": raw.nbytes / 1e6 / encode, "decode_MBps": raw.nbytes / 1e6 / decode}
        for label, chunk in ((f"{inner}img", inner), ("1img", 1)):
            if chunk == 1 and (codec, level) not in (("lz4", 5), ("zstd", 3)):
                row["zarr_1img_read_s"] = float("nan")  # slow to measure: two codecs show the effect
                continue
            target = work / f"features-{codec}{level}-{chunk}"
            with zarr.config.set({"array.write_empty_chunks": True}):
                codecs = feature_compressors(codec, dtype=raw.dtype, clevel=level)
                array = zarr.create_array(target, shape=raw.shape, dtype=raw.dtype, compressors=codecs,
                                          chunks=(chunk, *raw.shape[1:]), shards=(shard, *raw.shape[1:]))
                array[:] = raw
            assert np.array_equal(zarr.open_array(target, mode="r")[:], raw)
            row[f"zarr_{label}_read_s"] = best(lambda target=target: zarr.open_array(target, mode="r")[:])
            if chunk == inner:
                row["zarr_MB"] = folder_bytes(target) / 1e6
            shutil.rmtree(target)
        rows.append(row)
    return rows


class Server:
    """tests/hub_server.py in its own process; counters read over HTTP."""

    def __init__(self, root: Path, *, latency: float, bandwidth: float):
        command = [sys.executable, str(ROOT / "tests" / "hub_server.py"), str(root), "0", str(latency),
                   str(bandwidth)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.endpoint = self.process.stdout.readline().strip()

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.endpoint}/_stats") as response:
            return json.loads(response.read())

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/_stats/reset", method="POST")).close()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


class Scenarios:
    """Each scenario runs with an empty Hugging Face cache (unless `warm`) and records what it cost."""

    def __init__(self, server: Server, work: Path, repo: str, sha: str, local):
        self.server, self.work, self.repo, self.sha = server, work, repo, sha
        self.rows: list[dict] = []
        n, _, height, width = local.shape
        self.query = n // 3
        self.weights = np.zeros((height, width), dtype=np.float32)  # a 3x3 window in the middle
        self.weights[height // 2 - 1:height // 2 + 2, width // 2 - 1:width // 2 + 2] = 1
        self.block = np.arange(local.meta.shard_size, min(n, 2 * local.meta.shard_size))

    def run(self, name: str, fn, *, warm: bool = False):
        if not warm:
            os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="hf-", dir=self.work)
        self.server.reset()
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
        stats = self.server.stats()
        self.rows.append({"scenario": name, "requests": stats["requests"], "GETs": stats["gets"],
                          "MB": stats["bytes_served"] / 1e6, "seconds": seconds})
        return result

    def open(self, **options):
        import hub_caches

        return hub_caches.open(self.repo, revision=self.sha, endpoint=self.server.endpoint, token=False,
                               **options)

    def open_fsspec(self):
        from zarr.storage import FsspecStore

        store = FsspecStore.from_url(f"hf://datasets/{self.repo}@{self.sha}/cache.zarr", read_only=True,
                                     storage_options={"endpoint": self.server.endpoint, "token": False,
                                                      "block_size": 1})
        return vfs.open_cache(store, in_memory=False)

    def lookup(self, cache):
        return cache[self.query], cache.thumbnail(self.query)

    def search(self, cache, *, subset=None):
        return vfs.search(cache[self.query], self.weights, cache, k=10, subset=subset)


def serving(cache: Path, work: Path, *, codec: str, latency: float,
            bandwidth: float) -> tuple[list[dict], dict]:
    import hub_caches

    server = Server(work / "hub", latency=latency, bandwidth=bandwidth)
    facts: dict = {}
    try:
        start = time.perf_counter()
        os.environ["HF_HUB_CACHE"] = str(work / "hf-push")
        pushed = hub_caches.push_cache(cache, "bench/fmnist", tag="v1", codec=codec, endpoint=server.endpoint,
                                       token=False)
        facts["push_s"], facts["published_MB"] = time.perf_counter() - start, pushed.entry.size_bytes / 1e6
        local = vfs.open_cache(cache, in_memory=False)
        run = Scenarios(server, work, "bench/fmnist", pushed.revision, local)
        run.search(local)  # warm-up: kernels compile on first use
        start = time.perf_counter()
        expected = run.search(local)
        facts["local_scan_s"] = time.perf_counter() - start

        run.run("open (metadata)", run.open)
        run.run("lookup: 1 image + thumbnail", lambda: run.lookup(run.open()))
        run.run(f"search one block ({len(run.block)} images)",
                lambda: run.search(run.open(), subset=run.block))
        for prefetch in (0, 4):
            found = run.run(f"full scan search, prefetch={prefetch}",
                            lambda prefetch=prefetch: run.search(run.open(prefetch=prefetch)))
            facts[f"same_top10_prefetch{prefetch}"] = found == expected
        run.run("full scan search, warm HF cache", lambda: run.search(run.open()), warm=True)
        run.run("open in_memory=True + search", lambda: run.search(run.open(in_memory=True)))
        run.run("pull (8 workers)", lambda: hub_caches.pull(run.repo, revision=run.sha, token=False,
                                                            endpoint=server.endpoint, progress=False))
        run.run("fsspec hf:// lookup: 1 image + thumbnail", lambda: run.lookup(run.open_fsspec()))
        found = run.run("fsspec hf:// full scan search", lambda: run.search(run.open_fsspec()))
        facts["same_top10_fsspec"] = found == expected
    finally:
        server.stop()
    for row in run.rows:
        row["x_local_scan"] = row["seconds"] / facts["local_scan_s"]
    return run.rows, facts


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    cells = [[f"{row[k]:.3g}" if isinstance(row[k], float) else str(row[k]) for k in keys] for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, required=True, help="a finished cache (10,000 images here)")
    parser.add_argument("--codec-cache", type=Path, action="append", default=[],
                        help="more caches to measure compression on (other layers)")
    parser.add_argument("--codec", default="zstd", choices=sorted(CODECS), help="codec pushed for part 2")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds the server adds to each request")
    parser.add_argument("--bandwidth", type=float, default=0.0, help="bytes/s per download (0: unlimited)")
    parser.add_argument("--skip-compression", action="store_true")
    parser.add_argument("--skip-serving", action="store_true")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-hub-"))
    try:
        for cache in [] if args.skip_compression else [args.cache, *args.codec_cache]:
            meta = vfs.open_cache(cache, in_memory=False).meta
            shape = f"{meta.count} x {meta.grid[0]}x{meta.grid[1]}x{meta.channels} {meta.dtype}"
            print(f"\n## compression of {cache}: {shape}, {meta.model} {meta.layer} on {meta.dataset}")
            print(table(compression(cache, work)))
        if not args.skip_serving:
            rows, facts = serving(args.cache, work, codec=args.codec, latency=args.latency,
                                  bandwidth=args.bandwidth)
            network = (f"latency {args.latency * 1e3:.0f} ms, {args.bandwidth / 1e6:.0f} MB/s per download"
                       if args.latency or args.bandwidth else "no network delay")
            print(f"\n## served by tests/hub_server.py ({args.codec}, {network}); local full-scan search "
                  f"{facts['local_scan_s']:.2f} s (x_local_scan = seconds / that)")
            print(table(rows))
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in facts.items()}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
