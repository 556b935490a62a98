"""First start of the app: how long until each offline default cache is usable, from an empty folder.

    python bench/first_start.py [--cache-dir DIR]   # DIR must be empty or absent; it is deleted after

Runs `vfs.cache.defaults.ensure_default_caches` as the app's background build does and prints the
wall time at which each cache became ready (the Search tab needs the first two; Compare's default
pair is complete with the third), with the load average, since this machine is shared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from vfs.cache.defaults import ensure_default_caches  # noqa: E402 (after the path set-up)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()
    root = args.cache_dir or Path(tempfile.mkdtemp(prefix="vfs-first-start-"))
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root} is not empty: a first start needs an empty cache folder")
    started = time.perf_counter()
    try:
        ensure_default_caches(root, ready=lambda name, path: print(
            f"{time.perf_counter() - started:7.1f} s  {name} ready ({path.name})", flush=True))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{time.perf_counter() - started:7.1f} s  all default caches built; load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
