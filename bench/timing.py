"""How the benchmarks time a call: run it `repeats` times (after one untimed call when `warm_up`) and
keep the best or the median. One copy, so every figure in bench/ means the same thing."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def runs(function: Callable[[], Any], repeats: int, *, warm_up: bool) -> tuple[list[float], Any]:
    """(seconds of each of `repeats` calls, the last call's result); `warm_up`: one untimed call first
    (kernels compiled, caches loaded, pages touched)."""
    result = function() if warm_up else None
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return times, result


def best(function: Callable[[], Any], repeats: int = 3, *, warm_up: bool = False) -> float:
    """The fastest of `repeats` calls, in seconds."""
    return min(runs(function, repeats, warm_up=warm_up)[0])


def median(function: Callable[[], Any], repeats: int, *, warm_up: bool = True) -> tuple[float, Any]:
    """(median seconds of `repeats` calls, the last call's result)."""
    times, result = runs(function, repeats, warm_up=warm_up)
    return statistics.median(times), result
