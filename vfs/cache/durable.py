"""Safe writes for cache builds: every file durable before it is visible, and one writer per folder.

- `durable_write`: bytes go to a hidden temporary file beside the target, which is flushed to disk
  (`fsync`) and only then renamed over the target, and the folder entry is synced too. A power cut
  leaves the old file or the new one, never a file that exists but is short or empty.
- `DurableStore`: zarr's `LocalStore` writing every key that way (metadata and small arrays).
- `build_lock`: an exclusive `flock` on `.vfs-build.lock` inside the cache folder, held for the whole
  build and removed after it. A second build of the same folder refuses at once (`CacheBusyError`)
  instead of the two rewriting each other's files; the lock goes with the process, even one killed
  with SIGKILL (the file then stays, unlocked, until the next build of the folder).

bench/durable.py measures what the syncs cost a build.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from zarr.core.buffer import Buffer
from zarr.storage import LocalStore

from vfs.errors import CacheBusyError

LOCK = ".vfs-build.lock"  # inside the cache folder; holds who builds it, for the message
FSYNC = True  # sync file data and folder entries (bench/durable.py switches it off to measure the cost)


def durable_write(path: Path, data: bytes | bytearray | memoryview) -> None:
    """Write `data` to `path` atomically and durably (temporary file, fsync, rename, fsync of the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with open(partial, "wb") as handle:
            handle.write(data)
            handle.flush()
            if FSYNC:
                os.fsync(handle.fileno())
        os.replace(partial, path)  # readers never see half a file
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if FSYNC:
        sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """fsync a folder, so the names of files renamed into it survive a power cut."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


class DurableStore(LocalStore):
    """A `LocalStore` whose every write is `durable_write` (atomic, synced to disk)."""

    async def set(self, key: str, value: Buffer) -> None:
        if not self._is_open:
            await self._open()
        self._check_writable()
        await asyncio.to_thread(durable_write, self.root / key, value.as_buffer_like())

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        if not (self.root / key).exists():
            await self.set(key, value)


@contextmanager
def build_lock(folder: Path) -> Iterator[None]:
    """Hold the build lock of `folder` (created if needed) for the block; `CacheBusyError` if another has it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise CacheBusyError(f"{folder} is being built right now by {owner}: wait for that build to finish "
                                 "(or stop it, then run the same command to resume), or build into another "
                                 "--out folder") from None
        if _same_file(path, handle):
            break
        handle.close()  # the previous holder removed the file as we opened it: lock the new one
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC")
        handle.flush()
        yield
    finally:
        path.unlink(missing_ok=True)  # still locked: a build waiting on this file sees it gone and retries
        handle.close()  # releases the lock


def _same_file(path: Path, handle: TextIO) -> bool:
    """Whether `path` still names the file `handle` has open."""
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


def build_owner(folder: Path) -> str | None:
    """Who holds the build lock of `folder` now ("pid N on HOST since ..."), or None when nobody does."""
    try:
        handle = open(folder / LOCK)
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "another process"
        return None
