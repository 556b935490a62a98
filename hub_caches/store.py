"""`HubStore`: a read-only Zarr v3 store over a published cache that downloads each file when first read.

Zarr asks for keys (`features/zarr.json`, `features/c/3/0/0/0`, byte ranges of a shard); the store
answers from the verified local copy, downloading the whole file first if it is not in the
Hugging Face cache (see `remote.fetch`). Two rules keep it from ever being silently wrong:

- a key the manifest does not list is answered `None` only for metadata (so Zarr can probe);
  a missing chunk is an error naming the repo, revision and file, never the fill value;
- on open, `check_complete` checks that the manifest holds every chunk of every array.

When Zarr reads chunk i of an array right after chunk i-1, the store also fetches the next
`prefetch` chunks in background threads, so a full scan is not one request at a time.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.core.buffer.core import default_buffer_prototype

from hub_caches.errors import RemoteFileError
from hub_caches.remote import STORE_DIR, FileEntry, Remote, fetch
from vfs.errors import VFSError

log = logging.getLogger(__name__)

# keys Zarr probes that may legitimately be absent (node metadata, v2 and v3)
_METADATA = ("zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata")


class HubStore(Store):
    """Read-only Zarr store of the files under `prefix` in a remote cache's manifest."""

    supports_writes = False
    supports_deletes = False
    supports_listing = True

    def __init__(self, remote: Remote, files: dict[str, FileEntry], *, prefix: str = STORE_DIR,
                 prefetch: int = 4, workers: int = 4) -> None:
        super().__init__(read_only=True)
        self.remote = remote
        self.prefix = prefix.strip("/")
        self.prefetch = prefetch    # chunks fetched ahead of a sequential reader
        start = len(self.prefix) + 1 if self.prefix else 0
        self._entries = {path[start:]: (path, entry) for path, entry in files.items()
                         if not self.prefix or path.startswith(self.prefix + "/")}
        self._local: dict[str, Path] = {}          # key -> verified local file
        self._pending: dict[str, Future] = {}      # key -> download in progress
        self._read: set[str] = set()               # keys Zarr has asked for
        self.fetched_ahead = 0                     # files the prefetcher downloaded before Zarr asked
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="hub-prefetch")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HubStore) and (other.remote, other.prefix) == (self.remote, self.prefix)

    def __repr__(self) -> str:
        return f"HubStore('{self.remote}', prefix={self.prefix!r})"

    def with_read_only(self, read_only: bool = False) -> HubStore:
        if not read_only:
            raise ValueError(f"{self!r} is read-only: a published cache cannot be written; build a local "
                             "cache with `python -m vfs index`, publish it with `python -m hub_caches push`")
        return self

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        super().close()

    # -- reading ------------------------------------------------------------------------------

    def local_path(self, key: str, *, ahead: bool = False) -> Path:
        """The verified local file for `key`, downloading it (or waiting for a prefetch) if needed."""
        with self._lock:
            if key in self._local:
                return self._local[key]
            future = self._pending.get(key)
            owner = future is None
            if owner:
                future = self._pending[key] = Future()
        if not owner:
            return future.result()
        path_in_repo, entry = self._entries[key]
        try:
            path = fetch(self.remote, path_in_repo, expected=entry)
        except BaseException as error:
            future.set_exception(error)
            raise
        finally:
            with self._lock:
                self._pending.pop(key, None)
        with self._lock:
            self._local[key] = path
            self.fetched_ahead += ahead
        future.set_result(path)
        return path

    def _missing(self, key: str) -> RemoteFileError:
        path = f"{self.prefix}/{key}" if self.prefix else key
        return RemoteFileError(
            f"chunk {path!r} of dataset {self.remote.repo_id} at revision {self.remote.revision} is not in "
            "the cache's manifest, so the published cache is incomplete (Zarr would have read it as zeros): "
            "push the cache again with `python -m hub_caches push`, or pin another revision",
            repo_id=self.remote.repo_id, revision=self.remote.revision, file=path)

    async def get(self, key: str, prototype: BufferPrototype | None = None,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        if key not in self._entries:
            if key.rsplit("/", 1)[-1] in _METADATA:
                return None
            raise self._missing(key)
        path = await asyncio.to_thread(self.local_path, key)
        self._read_ahead(key)
        prototype = prototype or default_buffer_prototype()
        return prototype.buffer.from_bytes(await asyncio.to_thread(_read, path, byte_range))

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(key, prototype, byte_range)
                                           for key, byte_range in key_ranges)))

    def _read_ahead(self, key: str) -> None:
        """After chunk (i, ...) came right after (i-1, ...), fetch (i+1 .. i+prefetch, ...) in threads."""
        array, sep, coords = key.rpartition("/c/")
        with self._lock:
            self._read.add(key)
        if not sep or self.prefetch <= 0:
            return
        try:
            first, *rest = (int(part) for part in coords.split("/"))
        except ValueError:
            return
        def chunk_key(index: int) -> str:
            return f"{array}/c/" + "/".join(str(c) for c in (index, *rest))
        if chunk_key(first - 1) not in self._read:
            return
        for index in range(first + 1, first + 1 + self.prefetch):
            ahead = chunk_key(index)
            if ahead not in self._entries:
                break
            with self._lock:
                if ahead in self._local or ahead in self._pending:
                    continue
            self._pool.submit(self._quiet_fetch, ahead)

    def _quiet_fetch(self, key: str) -> None:
        try:
            self.local_path(key, ahead=True)
        except VFSError as error:  # a failed prefetch is retried, and reported, when the chunk is read
            log.debug("prefetch of %s failed: %s", key, error)

    # -- listing ------------------------------------------------------------------------------

    async def exists(self, key: str) -> bool:
        return key in self._entries

    async def getsize(self, key: str) -> int:
        if key not in self._entries:
            raise FileNotFoundError(key)
        return self._entries[key][1].size

    async def list(self) -> AsyncIterator[str]:
        for key in sorted(self._entries):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for key in sorted(self._entries):
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        base = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        children = {key[len(base):].split("/", 1)[0] for key in self._entries if key.startswith(base)}
        for child in sorted(children):
            yield child

    # -- the read-only part of the Store interface ------------------------------------------

    async def set(self, key: str, value: Buffer) -> None:
        self.with_read_only(False)

    async def delete(self, key: str) -> None:
        self.with_read_only(False)


def _read(path: Path, byte_range: ByteRequest | None) -> bytes:
    with open(path, "rb") as file:
        if byte_range is None:
            return file.read()
        if isinstance(byte_range, RangeByteRequest):
            file.seek(byte_range.start)
            return file.read(byte_range.end - byte_range.start)
        if isinstance(byte_range, OffsetByteRequest):
            file.seek(byte_range.offset)
        elif isinstance(byte_range, SuffixByteRequest):
            file.seek(0, 2)
            file.seek(max(0, file.tell() - byte_range.suffix))
        else:
            raise TypeError(f"unexpected byte_range {byte_range!r}")
        return file.read()


def check_complete(store: HubStore) -> None:
    """Raise `RemoteFileError` unless the manifest lists every chunk file of every array in the group."""
    import zarr

    group = zarr.open_group(store, mode="r")
    for path, node in group.members(max_depth=None):
        if isinstance(node, zarr.Array):
            _check_array(store, path, node)

def _check_array(store: HubStore, path: str, array) -> None:
    chunk_shape = array.metadata.chunk_grid.chunk_shape  # the shard shape when the array is sharded
    grid = [math.ceil(size / chunk) for size, chunk in zip(array.shape, chunk_shape)]
    for coords in itertools.product(*(range(n) for n in grid)):
        key = f"{path}/{array.metadata.encode_chunk_key(coords)}"
        if key not in store._entries:
            raise store._missing(key)
