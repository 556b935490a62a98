"""A dataset that stalls inside the worker processes started with VFS_TEST_STALL=DIR, so a test can kill
such a worker in the middle of a block (imported by test_cluster.py and, through pickle, by the workers)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from vfs.datasets import ImageDataset, ImageItem


class StallingDataset(ImageDataset):
    """`inner`, except that image `at` of any block never arrives in a process with VFS_TEST_STALL set.

    Such a process first writes DIR/stalled-PID (the block it was in the middle of), then sleeps until killed.
    Elsewhere (the test process, the other workers) it is `inner`, name and fingerprint included.
    """

    def __init__(self, inner: ImageDataset, *, shard_size: int, at: int):
        self.inner, self.shard_size, self.at = inner, shard_size, at
        self.name, self.label_names = inner.name, inner.label_names

    def __len__(self) -> int:
        return len(self.inner)

    def fingerprint(self) -> str:
        return self.inner.fingerprint()

    def item(self, index: int) -> ImageItem:
        stall = os.environ.get("VFS_TEST_STALL")
        if stall and index % self.shard_size == self.at:
            (Path(stall) / f"stalled-{os.getpid()}").write_text(str(index // self.shard_size))
            time.sleep(600)  # killed long before
        return self.inner.item(index)
