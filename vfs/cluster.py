"""The Dask cluster that caches are built and searched on: one client per scheduler address, worker threads.

`distributed` is imported only inside these functions, so `import vfs` never loads it. The scheduler
address is all a user gives ("tcp://host:8786", from `dask scheduler`, dask-jobqueue, dask-kubernetes...);
the command line and the app also read it from the environment variable VFS_SCHEDULER.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from vfs.errors import ClusterError

CONNECT_TIMEOUT = 10.0  # seconds to reach a scheduler before ClusterError (distributed's own default is 30)
SCHEDULER_ENV = "VFS_SCHEDULER"  # environment variable the command line and the app read

_CLIENTS: dict[str, Any] = {}  # scheduler address -> Client, one per process
_CLIENTS_LOCK = threading.Lock()


def connect(scheduler: str | Any, *, timeout: float = CONNECT_TIMEOUT) -> Any:
    """A `distributed.Client` of the scheduler at `scheduler` ("tcp://host:8786"), reused per process.

    A Client passed in is returned as is. An address that cannot be reached within `timeout` seconds
    is a `ClusterError` naming it.
    """
    if not isinstance(scheduler, str):
        return scheduler
    address = scheduler.strip()
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(address)
        if client is not None and client.status == "running":
            return client
        try:
            from distributed import Client
        except ImportError as error:
            raise ClusterError("using a Dask cluster needs `distributed`: pip install 'dask[distributed]'") from error
        try:
            client = Client(address, timeout=timeout, set_as_default=False)  # type: ignore[no-untyped-call]  # unannotated __init__
        except (OSError, TimeoutError, ValueError, TypeError) as error:
            raise ClusterError(f"cannot reach the Dask scheduler at {address!r} within {timeout:g} s "
                               f"({type(error).__name__}: {error}); check the address (tcp://HOST:8786) "
                               "and that `dask scheduler` runs there, or leave out --scheduler") from error
        _CLIENTS[address] = client
        return client


def use_worker_threads() -> None:
    """On a worker, let torch and numba use the worker's threads (dask starts workers with one per library)."""
    threads = _worker_threads()
    if threads is None:
        return
    import torch

    # in this (executor) thread itself: OpenMP keeps a count per thread. Measured: without this call the
    # first block a worker built ran on 2 threads and differed in bits from a 1-thread build
    torch.set_num_threads(threads)
    try:
        import numba

        # numba.config sets its NUMBA_* names inside a method (globals()[name] = value): mypy cannot see them
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    except ImportError:
        pass


def _worker_threads() -> int | None:
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


def worker_address() -> str:
    """The address of the worker running this task (for error messages), or this process's id."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"
