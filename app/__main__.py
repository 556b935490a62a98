"""`python -m app [--port P] [--host H] [--cache-dir DIR] [--share] [--no-default] [--no-hub] [--device D] [--scheduler ADDR]`.

Serves the caches found under the cache folder. On first start the offline default caches
(Fashion-MNIST test through efficientnet_lite0, and scikit-image photos) are built there in the
background while the page shows the build's progress.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="interface to listen on (0.0.0.0 for every interface)",
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,  # vfs.cache.defaults.default_root(), read after parsing (it loads torch)
        help="folder holding feature caches (env VFS_CACHE_DIR; default ~/.cache/vfs)",
    )
    parser.add_argument(
        "--share", action="store_true", help="ask gradio for a public share link (off by default)"
    )
    parser.add_argument(
        "--no-default",
        action="store_true",
        default=os.environ.get("VFS_DEFAULT_CACHES", "1") == "0",
        help="do not build the default caches (env VFS_DEFAULT_CACHES=0)",
    )
    parser.add_argument(
        "--no-hub",
        action="store_true",
        default=os.environ.get("VFS_HUB", "1") == "0",
        help="do not list Hub caches from the catalog (env VFS_HUB=0)",
    )
    parser.add_argument(
        "--device",
        default=os.environ.get("VFS_DEVICE") or ("cuda" if zero_gpu() else "cpu"),
        help="where searches run: cpu or cuda / cuda:N, caches held in GPU memory (env VFS_DEVICE; "
        "default cpu, cuda on a ZeroGPU Space)",
    )
    parser.add_argument(
        "--scheduler",
        default=os.environ.get("VFS_SCHEDULER") or None,  # vfs.cluster.SCHEDULER_ENV
        help="Dask scheduler address (tcp://HOST:8786): search the caches on its workers (env VFS_SCHEDULER)",
    )
    return parser.parse_args(argv)


def zero_gpu() -> bool:
    from app import gpu  # imports `spaces` (when present) before anything touches CUDA

    return gpu.ZERO_GPU


def check_device(device: str) -> str:
    """The device, checked here; on a ZeroGPU Space CUDA appears only inside the search calls."""
    from app import gpu  # imports `spaces` (when present) before anything touches CUDA
    from vfs.models.devices import resolve_device

    if gpu.ZERO_GPU and device.startswith("cuda"):
        return device
    return str(resolve_device(device))


def limit_blas_threads() -> None:
    """One BLAS thread in the server: its parallelism is its concurrent requests, not each tiny product.

    numpy's OpenBLAS runs every product on a thread per core, even the (7, 384) @ (384, 384) one of
    `vfs.mask_to_grid` in each search. Measured here on the busy shared machine: 2.2 ms of CPU and
    5-10 ms wall per product with 2 threads, 0.1 ms with one; in the server (py-spy, one user
    searching, load average 10) that product alone took 93 ms per search. Set `OPENBLAS_NUM_THREADS`
    or `OMP_NUM_THREADS` to choose otherwise.
    """
    if os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS"):
        return
    import numpy  # noqa: F401 (loads OpenBLAS, so that threadpoolctl finds it)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def warm_up_search() -> None:
    """Run two tiny searches, so the first user's search does not wait for the search kernels to load.

    Loading numba's compiled kernels takes ~1.6 s here, once per process (~10 s to compile them in a
    fresh clone); this runs in the background while the page starts. Measured in a script: the first
    search over the 10,000-image default cache then takes 17 ms instead of 1.57 s.
    """
    import numpy as np

    import vfs

    rng = np.random.default_rng(0)
    weights = np.zeros((3, 3), np.float32)
    weights[:2, :2] = 1
    for dtype in (np.float16, np.float32):  # caches store one or the other
        source = rng.standard_normal((4, 3, 3, 8)).astype(dtype).transpose(0, 3, 1, 2)  # (N, C, H, W) as a cache
        vfs.best_windows(rng.standard_normal((8, 3, 3)).astype(np.float32), weights, source)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from vfs.errors import DeviceError

    try:
        device = check_device(args.device)
    except DeviceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    limit_blas_threads()
    from app.library import CacheLibrary, DefaultBuild
    from app.ui import launch

    if args.cache_dir is None:
        from vfs.cache.defaults import default_root

        args.cache_dir = default_root()
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    if args.scheduler:
        from vfs.cluster import connect
        from vfs.errors import VFSError

        try:
            client = connect(args.scheduler)
        except VFSError as error:  # an unreachable scheduler: its address and what to do, no traceback
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"searching on the Dask cluster at {args.scheduler} ({len(client.ncores())} workers; dashboard "
              f"{client.dashboard_link})", file=sys.stderr)
    library = CacheLibrary(args.cache_dir, hub=not args.no_hub, device=device, scheduler=args.scheduler)
    library.refresh()
    build = None if args.no_default else DefaultBuild(args.cache_dir).start()
    print(
        f"caches under {args.cache_dir}: {len(library.entries)} found"
        + ("" if build is None else "; building the default caches in the background"),
        file=sys.stderr,
    )
    threading.Thread(target=warm_up_search, name="vfs-warm-up", daemon=True).start()
    launch(library, default_build=build, host=args.host, port=args.port, share=args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
