"""First start of the app: from an empty cache folder to the first search answered, and to every default cache.

    flock -x /tmp/vfs-heavy.lock python bench/first_start.py [--cache-dir DIR]   # DIR empty or absent; deleted after

Starts `python -m app --cache-dir DIR --no-hub` exactly as a user would (the default caches are built
in its background thread) and, from the moment the process is started, times:

- serving: the page's server answers (`/gradio_api/info`); the page shows the build's progress;
- each default cache answering a search: the app's own search endpoint (the one the page's Search
  button calls, through `gradio_client`) with a painted photo, asked every 2 s until it answers with
  results. The first is the Search tab's cache (the first search a user can run); the last is
  Compare's second cache (every default cache listed and searchable).

Prints the load average with the figures, since this machine is shared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from app_server import _stop, free_port, wait_ready  # noqa: E402 (after the path set-up)

from vfs.cache.defaults import DEFAULTS, folder_name  # noqa: E402


def editor_argument(folder: Path) -> dict:
    """A painted photo as the search endpoint takes it: skimage's chelsea with a box painted on the head."""
    from gradio_client import handle_file
    from skimage import data

    image = data.chelsea()  # (300, 451, 3)
    layer = np.zeros((*image.shape[:2], 4), np.uint8)  # (H, W, 4): the stroke, alpha 255
    layer[40:200, 120:300] = (255, 120, 0, 255)
    Image.fromarray(image).save(folder / "background.png")
    Image.fromarray(layer).save(folder / "layer.png")
    return {"background": handle_file(str(folder / "background.png")),
            "layers": [handle_file(str(folder / "layer.png"))], "composite": None, "id": None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=1800, help="give up after this many seconds")
    args = parser.parse_args()
    root = args.cache_dir or Path(tempfile.mkdtemp(prefix="vfs-first-start-"))
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root} is not empty: a first start needs an empty cache folder")
    scratch = Path(tempfile.mkdtemp(prefix="vfs-first-start-query-"))
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    log_path = scratch / "server.log"
    print(f"load average at start {os.getloadavg()}", flush=True)
    started = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "app", "--port", str(port), "--cache-dir", str(root),
                                    "--no-hub"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process, timeout=args.timeout)
        print(f"{time.perf_counter() - started:7.1f} s  serving {url} (the page shows the build's progress)",
              flush=True)
        from gradio_client import Client

        client = Client(url, verbose=False)
        query = editor_argument(scratch)
        for name, spec in DEFAULTS.items():
            key = folder_name(spec)
            while True:
                if process.poll() is not None:
                    raise SystemExit(f"the app exited with code {process.returncode}; its log: {log_path}")
                if time.perf_counter() - started > args.timeout:
                    raise SystemExit(f"{name} not searchable after {args.timeout:.0f} s; the app's log: {log_path}")
                try:
                    asked = time.perf_counter()
                    gallery, summary, *_ = client.predict(key, query, 12, True, "no limit", "all labels",
                                                          api_name="/search")
                except Exception:  # not listed yet: "no cache named ..."
                    time.sleep(2.0)  # polling interval, not a wait for readiness
                    continue
                if gallery:
                    break
            done = time.perf_counter()
            print(f"{done - started:7.1f} s  {name} answers a search ({len(gallery)} results; that search took "
                  f"{done - asked:.1f} s)", flush=True)
        print(f"{time.perf_counter() - started:7.1f} s  all default caches searchable; load average "
              f"{os.getloadavg()}", flush=True)
    finally:
        _stop(process)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
