"""`BlockReader`: one array of a cache, read and verified a block (S images, one file) at a time.

Before a block's rows are used, its file is checked against the build's record (present, the byte
size and, where recorded, the hash written at that position); every chunk then passes its own
crc32c. Damage raises `CacheCorruptError` naming the array and the file. Local shard files are read
whole (one read per block) or, for a few scattered rows, one positioned read per row, several files
at once (`take`, two-stage search's candidates).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import zarr

from vfs.cache.format import block_file, block_key, digest, stored_size
from vfs.cache.shard_file import local_layout, read_index, read_rows, read_shard
from vfs.errors import CacheCorruptError, VFSError

# what reading damaged files raises: zarr's checksum and metadata errors are ValueErrors, blosc and zstd
# raise RuntimeError, a short file TypeError or IndexError deep in a codec; anything else is a bug, not damage
DECODE_ERRORS = (ValueError, RuntimeError, TypeError, IndexError, EOFError)
READERS = 16  # files read at once by `take` when its rows are scattered over many blocks (disk queue depth)


class BlockReader:
    """One zarr array read and verified a block (S images, one file) at a time; slices along dim 0."""

    def __init__(self, array: zarr.Array[Any], *, nbytes: list[int] | None, name: str, where: str,
                 digests: list[int] | None = None) -> None:
        self.array, self.nbytes, self.digests, self.name, self.where = array, nbytes, digests, name, where
        self.shape, self.dtype = array.shape, array.dtype
        self.rows = array.shards[0] if array.shards else array.chunks[0]
        self.blocks = -(-self.shape[0] // self.rows)
        self._checked: set[int] = set()
        self._kept: tuple[int, np.ndarray] | None = None
        self._lock = threading.Lock()
        self._local = local_layout(array)  # (folder, blosc?, crc32c?) to read whole local shards, else None
        self._indices: dict[int, np.ndarray] = {}  # block -> its shard index, once read (16 bytes per row)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            row = int(index) + (self.shape[0] if index < 0 else 0)
            if not 0 <= row < self.shape[0]:
                raise IndexError(f"image {index} is out of range ({self.shape[0]} images)")
            return self._rows(row, row + 1)[0]
        if isinstance(index, slice) and index.step in (None, 1):
            start, stop, _ = index.indices(self.shape[0])
            return self._rows(start, max(start, stop))
        rows = np.arange(self.shape[0])[index]  # any other selection: gather rows
        out = np.empty((len(rows),) + self.shape[1:], dtype=self._numpy_dtype())
        for i, row in enumerate(rows):
            out[i] = self._rows(int(row), int(row) + 1)[0]
        return out

    def read_all(self) -> np.ndarray:
        out = np.empty(self.shape, dtype=self._numpy_dtype())
        for block in range(self.blocks):
            out[block * self.rows:(block + 1) * self.rows] = self.block(block, keep=False)
        return out

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows `rows` (sorted, unique) -> (n, ...), reading only their chunks where the layout allows."""
        out = np.empty((len(rows),) + self.shape[1:], dtype=self._numpy_dtype())
        blocks = rows // self.rows
        starts = np.flatnonzero(np.diff(blocks, prepend=-1))  # first position of each block's rows
        sparse = []  # (first, last, block, wanted) read chunk by chunk
        for first, last in zip(starts, [*starts[1:], len(rows)]):
            block, wanted = int(blocks[first]), rows[first:last] - int(blocks[first]) * self.rows
            if self._local is None or self.array.shards is None or len(wanted) > self.rows // 4:
                out[first:last] = self.block(block)[wanted]  # dense, or not a local shard: whole block
            else:
                sparse.append((int(first), int(last), block, wanted))

        def fill(part: tuple[int, int, int, np.ndarray]) -> None:
            first, last, block, wanted = part
            out[first:last] = self._chunks(block, wanted)

        if len(sparse) > 1:  # scattered reads (two-stage's candidates): many in flight hide the disk's latency
            with ThreadPoolExecutor(min(READERS, len(sparse))) as pool:
                list(pool.map(fill, sparse))  # raises the first error
        else:
            for part in sparse:
                fill(part)
        return out

    def _chunks(self, block: int, wanted: np.ndarray) -> np.ndarray:
        """Rows `wanted` (positions in block `block`) of a local shard file, one positioned read each."""
        key = block_key(self.array, block)
        if block not in self._checked:  # a partial read: size and chunk checksums (the hash needs the whole file)
            self._check_size(key, stored_size(self.array.store, key), block)
        assert self._local is not None  # take() calls this for local shard files only
        folder, compressed, checksum = self._local
        try:
            with open(folder / key, "rb") as file:
                if block not in self._indices:
                    self._indices[block] = read_index(file, per_shard=self.rows)
                return read_rows(file, self._indices[block], wanted, row_shape=self.shape[1:],
                                 dtype=self.dtype, compressed=compressed, checksum=checksum)
        except (ValueError, OSError) as error:
            raise self._corrupt(key, f"failed to decode ({type(error).__name__}: {error})") from error

    def block(self, block: int, *, keep: bool = True) -> np.ndarray:
        """All rows of block `block`, decoded and verified (the last one read is kept)."""
        with self._lock:
            if self._kept is not None and self._kept[0] == block:
                return self._kept[1]
        values = self._read(block * self.rows, min(self.shape[0], (block + 1) * self.rows))
        if keep:
            with self._lock:
                self._kept = (block, values)
        return values

    def _rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop): whole blocks decoded (and kept) when most of a block is wanted."""
        first, last = start // self.rows, (stop - 1) // self.rows if stop > start else start // self.rows
        if stop - start <= 1 and not (self._kept and self._kept[0] == first):
            return self._read(start, stop)  # one image: read only its chunk
        parts = [self.block(b)[max(start - b * self.rows, 0):stop - b * self.rows] for b in range(first, last + 1)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of one block, after checking its file; errors name the file."""
        block = start // self.rows
        key = block_key(self.array, block)
        data = None if block in self._checked else self._check(block, key)  # the whole file, when just read
        try:
            if self._local is not None and start == block * self.rows and stop - start > 1:
                folder, compressed, checksum = self._local
                return read_shard(data if data is not None else (folder / key).read_bytes(), rows=stop - start,
                                  per_shard=self.rows, row_shape=self.shape[1:], dtype=self.dtype,
                                  compressed=compressed, checksum=checksum)
            values = self.array[start:stop]
        except VFSError:  # the store's own errors (a remote store offline, rate limited...) say what happened
            raise
        except DECODE_ERRORS as error:  # checksum mismatches and garbage; a bug or MemoryError propagates as is
            raise self._corrupt(key, f"failed to decode ({type(error).__name__}: {error})") from error
        return np.asarray(values, dtype=object) if self.dtype.kind == "T" else np.asarray(values)  # a no-op on the ndarray a slice gives

    def _check(self, block: int, key: str) -> bytes | None:
        """Check block `block`'s file against the build's record: exists, byte size, hash at this position.

        With a recorded hash the whole file is read (and returned, to decode without reading it again);
        otherwise only its size is looked up (None returned).
        """
        expected = self.digests[block] if self.digests and self.digests[block] >= 0 else None
        data = block_file(self.array.store, key) if expected is not None else None
        self._check_size(key, len(data) if data is not None else stored_size(self.array.store, key), block)
        if data is not None and digest(data) != expected:
            raise self._corrupt(key, "is not the file the build wrote at this position (its hash differs: "
                                     "altered, or another block's file copied over it)")
        with self._lock:
            self._checked.add(block)
        return data

    def _check_size(self, key: str, size: int | None, block: int) -> None:
        """The block's file exists with the byte size the build recorded."""
        recorded = self.nbytes[block] if self.nbytes else None
        if size is None or size == 0:
            raise self._corrupt(key, "is missing" if size is None else "is empty")
        if recorded is not None and size != recorded:
            raise self._corrupt(key, f"has {size} bytes, the build wrote {recorded} (truncated or altered)")

    def _numpy_dtype(self) -> np.dtype:
        return np.dtype(object) if self.dtype.kind == "T" else self.dtype

    def _corrupt(self, key: str, what: str) -> CacheCorruptError:
        return CacheCorruptError(f"{self.where}: array '{self.name}' block file '{key}' {what}; the cache is "
                                 "damaged: rebuild it (python -m vfs index ..., same command, into a new folder) "
                                 "or download it again")
