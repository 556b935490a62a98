"""Benchmark hub_caches on a real cache: compression of features, and requests/bytes/time served by a Hub.

    python -m vfs index --model efficientnet_lite0 --layer blocks.3 --dataset fashion-mnist:test \
        --input-size 112 --out /tmp/caches/fmnist10k                   # 10,000 images, 7x7x80, ~6 min
    flock /tmp/vfs-heavy.lock python bench/hub.py --cache /tmp/caches/fmnist10k [--codec-cache PATH ...]

1. Compression of the features alone, as `push` encodes them (blosc + byte shuffle + crc32c, same
   chunks and shards as the cache): ratio to raw float16, encode time, and decode speed of a full read
   from local disk (best of 3, warm), for lz4 and zstd at a few levels.
2. The cache pushed to tests/hub_server.py (a separate process on 127.0.0.1) and read back with an
   empty Hugging Face cache per scenario: open, one lookup (an image's features and thumbnail), a
   search over one block, a full-scan search (with and without prefetch, then warm), `pull`; and
   the same lookup and scan through fsspec `hf://` range reads instead of whole-file downloads.
   Times are ratios against the same search on the local cache, measured in the same run.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import vfs  # noqa: E402
from hub_caches.encode import CODECS, feature_compressors  # noqa: E402

SETTINGS = [("lz4", 5), ("zstd", 1), ("zstd", 3), ("zstd", 5), ("zstd", 9)]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def compression(cache: Path, work: Path) -> list[dict]:
    """Encode the features of `cache` each way; measure size, encode time and decode speed."""
    source = zarr.open_array(cache / "features", mode="r")
    raw = source[:]  # (N, H, W, C)
    rows = []
    for codec, level in [("none", 0), *SETTINGS]:
        target = work / f"features-{codec}{level}"
        compressors = [] if codec == "none" else feature_compressors(codec, dtype=raw.dtype, clevel=level)
        start = time.perf_counter()
        with zarr.config.set({"array.write_empty_chunks": True}):
            array = zarr.create_array(target, shape=raw.shape, dtype=raw.dtype, chunks=source.chunks,
                                      shards=source.shards, compressors=compressors)
            array[:] = raw
        encode = time.perf_counter() - start
        decode = []
        for _ in range(3):
            start = time.perf_counter()
            values = zarr.open_array(target, mode="r")[:]
            decode.append(time.perf_counter() - start)
        assert np.array_equal(values, raw)
        size = folder_bytes(target)
        rows.append({"codec": codec if codec == "none" else f"{codec}-{level}", "MB": size / 1e6,
                     "ratio": raw.nbytes / size, "encode_s": encode, "decode_s": min(decode),
                     "decode_MBps": raw.nbytes / 1e6 / min(decode)})
        shutil.rmtree(target)
    return rows


class Server:
    """tests/hub_server.py in its own process; counters read over HTTP."""

    def __init__(self, root: Path):
        self.process = subprocess.Popen([sys.executable, str(ROOT / "tests" / "hub_server.py"), str(root)],
                                        stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.endpoint = self.process.stdout.readline().strip()

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.endpoint}/_stats") as response:
            return json.loads(response.read())

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/_stats/reset", method="POST")).close()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


def scenario(server: Server, name: str, fn, *, hf_cache: Path | None, rows: list[dict]):
    """Run `fn` with an empty (or the given) HF cache; record requests, bytes and time."""
    os.environ["HF_HUB_CACHE"] = str(hf_cache or tempfile.mkdtemp(prefix="hf-", dir=os.environ["BENCH_WORK"]))
    server.reset()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    stats = server.stats()
    rows.append({"scenario": name, "requests": stats["requests"], "GETs": stats["gets"],
                 "MB": stats["bytes_served"] / 1e6, "seconds": seconds})
    return result


def serving(cache: Path, work: Path, *, codec: str) -> tuple[list[dict], dict]:
    import hub_caches
    from zarr.storage import FsspecStore

    server = Server(work / "hub")
    repo, rows, facts = "bench/fmnist", [], {}
    try:
        start = time.perf_counter()
        os.environ["HF_HUB_CACHE"] = str(work / "hf-push")
        pushed = hub_caches.push_cache(cache, repo, tag="v1", codec=codec, endpoint=server.endpoint, token=False)
        facts["push_s"], facts["published_MB"] = time.perf_counter() - start, pushed.entry.size_bytes / 1e6
        sha, ep = pushed.revision, server.endpoint

        local = vfs.open_cache(cache, in_memory=False)
        n, _, height, width = local.shape
        q = n // 3
        weights = np.zeros((height, width), dtype=np.float32)
        weights[height // 2 - 1:height // 2 + 2, width // 2 - 1:width // 2 + 2] = 1
        block = np.arange(local.meta.shard_size, 2 * local.meta.shard_size)
        vfs.search(local[q], weights, local, k=10)  # warm-up: kernels compile on first use
        start = time.perf_counter()
        expected = vfs.search(local[q], weights, local, k=10)
        facts["local_scan_s"] = time.perf_counter() - start

        def opened(**options):
            return hub_caches.open(repo, revision=sha, endpoint=ep, token=False, **options)

        scenario(server, "open (metadata)", opened, hf_cache=None, rows=rows)
        scenario(server, "lookup: 1 image + thumbnail",
                 lambda: (lambda c: (c[q], c.thumbnail(q)))(opened()), hf_cache=None, rows=rows)
        scenario(server, "search one block (1,024 images)",
                 lambda: (lambda c: vfs.search(c[q], weights, c, k=10, subset=block))(opened()), hf_cache=None,
                 rows=rows)
        for prefetch in (0, 4):
            found = scenario(server, f"full scan search, prefetch={prefetch}",
                             lambda: (lambda c: vfs.search(c[q], weights, c, k=10))(opened(prefetch=prefetch)),
                             hf_cache=None, rows=rows)
            facts[f"same_top10_prefetch{prefetch}"] = found == expected
        warm = Path(os.environ["HF_HUB_CACHE"])
        scenario(server, "full scan search, warm HF cache",
                 lambda: (lambda c: vfs.search(c[q], weights, c, k=10))(opened()), hf_cache=warm, rows=rows)
        scenario(server, "open in_memory=True + search",
                 lambda: (lambda c: vfs.search(c[q], weights, c, k=10))(opened(in_memory=True)), hf_cache=None,
                 rows=rows)
        scenario(server, "pull (8 workers)", lambda: hub_caches.pull(repo, revision=sha, endpoint=ep, token=False,
                                                                    progress=False), hf_cache=None, rows=rows)

        def fsspec_cache():
            store = FsspecStore.from_url(f"hf://datasets/{repo}@{sha}/cache.zarr", read_only=True,
                                         storage_options={"endpoint": ep, "token": False, "block_size": 1})
            return vfs.open_cache(store, in_memory=False)

        scenario(server, "fsspec hf:// lookup: 1 image + thumbnail",
                 lambda: (lambda c: (c[q], c.thumbnail(q)))(fsspec_cache()), hf_cache=None, rows=rows)
        found = scenario(server, "fsspec hf:// full scan search",
                         lambda: (lambda c: vfs.search(c[q], weights, c, k=10))(fsspec_cache()), hf_cache=None,
                         rows=rows)
        facts["same_top10_fsspec"] = found == expected
    finally:
        server.stop()
    for row in rows:
        row["x_local_scan"] = row["seconds"] / facts["local_scan_s"]
    return rows, facts


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    cells = [[f"{row[k]:.3g}" if isinstance(row[k], float) else str(row[k]) for k in keys] for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, required=True, help="a finished cache (10,000 images for the figures)")
    parser.add_argument("--codec-cache", type=Path, action="append", default=[],
                        help="more caches to measure compression on (other layers)")
    parser.add_argument("--codec", default="zstd", choices=sorted(CODECS), help="codec pushed for part 2")
    parser.add_argument("--skip-serving", action="store_true")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-hub-"))
    os.environ["BENCH_WORK"] = str(work)  # scenarios make their empty HF caches in here
    try:
        for cache in [args.cache, *args.codec_cache]:
            meta = vfs.open_cache(cache, in_memory=False).meta
            print(f"\n## compression of {cache}: {meta.count} x {meta.grid[0]}x{meta.grid[1]}x{meta.channels} "
                  f"{meta.dtype}, {meta.model} {meta.layer} on {meta.dataset}")
            print(table(compression(cache, work)))
        if not args.skip_serving:
            rows, facts = serving(args.cache, work, codec=args.codec)
            print(f"\n## served by tests/hub_server.py ({args.codec}); local full-scan search "
                  f"{facts['local_scan_s']:.2f} s (x_local_scan = seconds / that)")
            print(table(rows))
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in facts.items()}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
