"""What the cache's safety costs: durable writes (fsync) at build time, position-bound digests at read time.

    flock -x /tmp/vfs-heavy.lock python3 bench/durable.py [--images 8192] [--repeats 3]

1. Build: the same cache built with `vfs.cache.durable.FSYNC` on and off, with a tiny model (so the
   writes are most of the time: the worst case) over synthetic 16 px images with 192 x 7 x 7 features.
2. Read: `open_cache(in_memory=True)` and `verify()` of that cache, with its block digests (each
   block file's crc32c checked on first read) and of a copy without them (sizes and chunk checksums
   only, as caches built before the digests). Best of `--repeats`, warm page cache.
Prints seconds and the ratio on/off for each, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from torch import nn

import vfs
from bench.timing import best
from vfs.cache import durable
from vfs.cache.build import build_cache
from vfs.cache.reader import open_cache
from vfs.datasets import ArrayDataset
from vfs.models.preprocess import Preprocess


def tiny_model() -> vfs.LoadedModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 192, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(7))
    return vfs.load_model("bench-tiny", module=net, preprocess=Preprocess(size=16, crop=16, mean=(0.5,) * 3,
                                                                            std=(0.25,) * 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(args.images)]
    data = ArrayDataset(images, name=f"bench-{args.images}")
    model = tiny_model()
    with tempfile.TemporaryDirectory(prefix="vfs-bench-durable-") as folder:
        root = Path(folder)
        built: dict[bool, float] = {}
        for attempt in range(args.repeats):
            for fsync in (True, False):
                durable.FSYNC = fsync
                out = root / f"cache-{fsync}-{attempt}"
                started = time.perf_counter()
                build_cache(model, "2", data, out, progress=False)
                seconds = time.perf_counter() - started
                built[fsync] = min(built.get(fsync, seconds), seconds)
                if attempt < args.repeats - 1 or not fsync:
                    shutil.rmtree(out)
        durable.FSYNC = True
        cache = root / f"cache-True-{args.repeats - 1}"
        size = sum(path.stat().st_size for path in cache.rglob("*") if path.is_file())
        print(f"cache: {args.images} images, (192, 7, 7) float16, {size / 1e6:.0f} MB in "
              f"{open_cache(cache).meta.blocks} blocks")
        print(f"build, fsync on:  {built[True]:.2f} s")
        print(f"build, fsync off: {built[False]:.2f} s   (on/off {built[True] / built[False]:.3f})")
        plain = root / "no-digests"
        shutil.copytree(cache, plain)
        meta = json.loads((plain / "zarr.json").read_text())
        del meta["attributes"]["block_xxh3"]
        (plain / "zarr.json").write_text(json.dumps(meta))
        for label, run in (("open in_memory=True", lambda path: open_cache(path, in_memory=True)),
                           ("verify()", lambda path: open_cache(path, in_memory=False).verify())):
            run(cache), run(plain)  # warm the page cache
            bound = best(lambda run=run: run(cache), args.repeats)
            unbound = best(lambda run=run: run(plain), args.repeats)
            print(f"{label:<20} with digests {bound:.3f} s, without {unbound:.3f} s   "
                  f"(with/without {bound / unbound:.3f})")


if __name__ == "__main__":
    main()
