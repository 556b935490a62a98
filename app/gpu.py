"""The app's GPU work: the search on a CUDA device, inside `@spaces.GPU` on Hugging Face ZeroGPU.

    python -m app --device cuda        # each cache is held in GPU memory (float16), searched there

On a ZeroGPU Space (the `spaces` package is importable) CUDA exists only inside functions decorated
with `spaces.GPU`, and the GPU may change between calls: the cache (prepared once in RAM) is moved to
the device inside each call. Elsewhere `gpu_task` is a no-op and a cache moved to the device stays
there between searches. On the CPU nothing here runs: the search is `vfs.best_windows` as is.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

try:  # imported before anything touches CUDA, as ZeroGPU asks
    import spaces
except ImportError:  # not on a Space: the decorator is a no-op
    spaces = None

# on ZeroGPU hardware (spaces reads the same variable) device memory does not outlive a decorated call
ZERO_GPU = spaces is not None and os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")
GPU_SECONDS = 60  # the longest a ZeroGPU search may hold the GPU


def gpu_task(function: Callable) -> Callable:
    """`spaces.GPU(duration=GPU_SECONDS)(function)` when `spaces` is importable, else `function` itself."""
    return spaces.GPU(duration=GPU_SECONDS)(function) if spaces is not None else function


_held: dict[int, tuple[Any, dict[str, Any]]] = {}  # id(cache) -> (prepared in RAM, {device: prepared there})
_lock = threading.Lock()


def held_on(cache: Any, device: Any, *, keep: bool) -> Any:
    """`cache` laid out channels-last with sq_norms, on `device` (kept for the next search if `keep`).

    Held by the cache's identity (tensors compare elementwise, so not a WeakKeyDictionary) and
    dropped when the cache is garbage collected.
    """
    from vfs import prepare

    with _lock:
        if id(cache) not in _held:
            _held[id(cache)] = (prepare(cache), {})  # a cache in RAM is wrapped, not copied
            weakref.finalize(cache, _held.pop, id(cache), None)
        prepared, kept = _held[id(cache)]
        if str(device) in kept:
            return kept[str(device)]
        moved = prepared.to(device)  # (N, H, W, C): float16 stays float16 on the device
        if keep:
            kept[str(device)] = moved
        return moved


@gpu_task
def best_windows_on_gpu(query: Any, weights: Any, cache: Any, subset: Any, device: str) -> Any:
    """`vfs.best_windows` with the cache in GPU memory; on ZeroGPU the move happens here, inside the call."""
    from vfs import best_windows

    source = held_on(cache, device, keep=not ZERO_GPU)
    return best_windows(query, weights, source, subset=subset, device=device)


def best_windows(query: Any, weights: Any, cache: Any, *, subset: Any = None, device: Any = "cpu") -> Any:
    """Every image's best window, on the CPU or (device "cuda", "cuda:N") in GPU memory."""
    import torch

    device = torch.device(device)
    if device.type == "cpu":
        from vfs import best_windows as cpu_best_windows

        return cpu_best_windows(query, weights, cache, subset=subset)
    return best_windows_on_gpu(query, weights, cache, subset, str(device))
