"""Progress of a cache build: a tqdm bar (images/s, time left), a `callable(fraction, message)`, or
nothing; the same for a local build and a build on a cluster."""

from __future__ import annotations

import time
from collections.abc import Callable

Progress = bool | Callable[[float, str], None]


class Reporter:
    """A tqdm bar (images/s, time left), a `callable(fraction, message)`, or nothing."""

    def __init__(self, progress: Progress, *, total: int, done: int, name: str):
        self.callback = progress if callable(progress) else None
        self.total, self.done, self.start, self.first = total, done, time.monotonic(), done
        self.bar = None
        if progress is True:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="img", desc=f"indexing {name}", smoothing=0.1)
        self._call()

    def advance(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        self._call()

    def _call(self) -> None:
        if self.callback is None:
            return
        elapsed = time.monotonic() - self.start
        rate = (self.done - self.first) / elapsed if elapsed > 0 and self.done > self.first else 0.0
        left = f", {(self.total - self.done) / rate:.0f} s left" if rate else ""
        self.callback(self.done / self.total, f"{self.done}/{self.total} images ({rate:.0f}/s{left})")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
