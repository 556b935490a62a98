"""Decode a whole local shard file of a feature cache without zarr's per-chunk machinery.

Zarr's codec pipeline spends about a third of a millisecond per chunk; a cache stores one image
per chunk, so loading 50,000 images through it costs tens of seconds. Reading the shard file in one
go and decoding its chunks in a plain loop is several times faster. Only the layout the cache
builder writes is handled: sharding with the index at the end (`bytes` + `crc32c`), and inner
codecs `bytes` (little endian), an optional `blosc`, then `crc32c` (optional too). Anything else returns None and
the caller reads through zarr. Every checksum is verified; a problem raises `ValueError` saying what.
`read_index` + `read_rows` read a few images of a shard (one positioned read each) for the exact
re-scoring of two-stage search.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
import zarr
from crc32c import crc32c
from numcodecs import blosc
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec
from zarr.core.metadata import ArrayV3Metadata
from zarr.storage import LocalStore

from vfs.cache.durable import durable_write

EMPTY = 2**64 - 1  # offset and length of a chunk the shard does not hold
INDEX_ENTRY = 16  # bytes per chunk in a shard's index: offset and length, two uint64
INDEX_CHECKSUM = 4  # the index's own crc32c at its end


def local_layout(array: zarr.Array[Any]) -> tuple[Path, bool, bool] | None:
    """(folder the array's keys live under, blosc?, crc32c?) when the fast path applies, else None."""
    store = array.store
    codecs = array.metadata.codecs if array.metadata.zarr_format == 3 else ()
    if not isinstance(store, LocalStore) or len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return None
    sharding = codecs[0]
    inner = [type(codec) for codec in sharding.codecs]
    index = [type(codec) for codec in sharding.index_codecs]
    if sharding.index_location.value != "end" or index != [BytesCodec, Crc32cCodec]:
        return None
    if inner not in ([BytesCodec], [BytesCodec, Crc32cCodec], [BytesCodec, BloscCodec],
                     [BytesCodec, BloscCodec, Crc32cCodec]):
        return None
    first = cast(BytesCodec, sharding.codecs[0])  # `inner` starts with it (checked above)
    if first.endian is not None and first.endian.value != "little":
        return None
    if tuple(sharding.chunk_shape) != (1, *array.shape[1:]):  # one image per chunk
        return None
    return Path(store.root), BloscCodec in inner, Crc32cCodec in inner


def read_shard(data: bytes, *, rows: int, per_shard: int, row_shape: tuple[int, ...], dtype: np.dtype,
               compressed: bool, checksum: bool = True) -> np.ndarray:
    """The first `rows` images (one chunk each) of a shard file's bytes -> (rows, *row_shape) array."""
    index_size = per_shard * INDEX_ENTRY + INDEX_CHECKSUM
    if len(data) < index_size:
        raise ValueError(f"the file has {len(data)} bytes, less than its {index_size}-byte index")
    index_bytes = data[-index_size:-4]
    if crc32c(index_bytes) != int.from_bytes(data[-4:], "little"):
        raise ValueError("the shard index fails its crc32c checksum")
    index = np.frombuffer(index_bytes, dtype="<u8").reshape(per_shard, 2)  # (offset, length) per chunk
    out = np.empty((rows, *row_shape), dtype=dtype)
    flat = out.reshape(rows, -1).view(np.uint8)  # (rows, bytes per row)
    view = memoryview(data)
    for row in range(rows):
        offset, length = (int(v) for v in index[row])
        tail = 4 if checksum else 0
        if offset == EMPTY or offset + length > len(data) - index_size or length < tail:
            raise ValueError(f"chunk {row} is missing from the shard index")
        flat[row] = _decode_chunk(view[offset:offset + length], row, size=flat.shape[1], compressed=compressed,
                                  checksum=checksum)
    return out


def _decode_chunk(chunk: bytes | memoryview, row: int, *, size: int, compressed: bool,
                  checksum: bool) -> np.ndarray:
    """One stored chunk (payload, then its crc32c when `checksum`) -> its `size` raw bytes, checked."""
    tail = 4 if checksum else 0
    payload = memoryview(chunk)[:len(chunk) - tail]
    if checksum and crc32c(payload) != int.from_bytes(chunk[len(chunk) - tail:], "little"):
        raise ValueError(f"chunk {row} fails its crc32c checksum")
    raw = blosc.decompress(payload) if compressed else payload
    if len(raw) != size:
        raise ValueError(f"chunk {row} decodes to {len(raw)} bytes, expected {size}")
    return np.frombuffer(raw, dtype=np.uint8)


def write_shard(array: zarr.Array[Any], block: int, values: np.ndarray) -> bool:
    """Encode `values` (rows, ...) as block `block`'s shard file of a local `array` and write it atomically.

    The bytes are what zarr writes for the same data (chunks in order, index at the end); returns False
    (nothing written) when the array's layout is not the one handled here, so the caller uses zarr.
    """
    layout = local_layout(array)
    if layout is None:
        return False
    folder, compressed, checksum = layout
    # local_layout found a zarr v3 array whose one codec is sharding, its inner codecs bytes, [blosc], [crc32c]
    sharding = cast(ShardingCodec, cast(ArrayV3Metadata, array.metadata).codecs[0])
    compressor = None
    if compressed:
        codec = cast(BloscCodec, sharding.codecs[1])
        shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[codec.shuffle.value]
        compressor = blosc.Blosc(cname=codec.cname.value, clevel=codec.clevel, shuffle=shuffle,
                                 blocksize=codec.blocksize, typesize=codec.typesize)
    per_shard = cast("tuple[int, ...]", array.shards)[0]  # sharded: never None here
    rows = np.ascontiguousarray(values, dtype=np.dtype(array.dtype).newbyteorder("<"))
    rows = rows.reshape(len(values), -1)  # (rows, values per chunk)
    index = np.full((per_shard, 2), EMPTY, dtype="<u8")  # (offset, length) per chunk
    parts: list[bytes] = []
    offset = 0
    for row, chunk in enumerate(rows):
        payload = chunk.tobytes() if compressor is None else bytes(compressor.encode(chunk))
        if checksum:
            payload += crc32c(payload).to_bytes(4, "little")
        index[row] = offset, len(payload)
        parts.append(payload)
        offset += len(payload)
    index_bytes = index.tobytes()
    parts.append(index_bytes + crc32c(index_bytes).to_bytes(4, "little"))
    key = f"{array.path}/{array.metadata.encode_chunk_key((block,) + (0,) * (array.ndim - 1))}"
    path = folder / key.lstrip("/")
    durable_write(path, b"".join(parts))  # synced, then renamed: readers never see half a shard
    return True


def read_index(file: BinaryIO, *, per_shard: int) -> np.ndarray:
    """The (offset, length) of every chunk of an open shard file, its checksum verified: (per_shard, 2) uint64."""
    index_size = per_shard * INDEX_ENTRY + INDEX_CHECKSUM
    size = os.fstat(file.fileno()).st_size
    if size < index_size:
        raise ValueError(f"the file has {size} bytes, less than its {index_size}-byte index")
    data = os.pread(file.fileno(), index_size, size - index_size)
    if crc32c(data[:-4]) != int.from_bytes(data[-4:], "little"):
        raise ValueError("the shard index fails its crc32c checksum")
    return np.frombuffer(data[:-4], dtype="<u8").reshape(per_shard, 2)


def read_rows(file: BinaryIO, index: np.ndarray, rows: np.ndarray, *, row_shape: tuple[int, ...], dtype: np.dtype,
              compressed: bool, checksum: bool = True) -> np.ndarray:
    """Only the chunks of `rows` (positions in the shard, one image each) of an open shard file: (n, *row_shape).

    `index` is the shard's `read_index`. Each chunk is one positioned read, checked and decoded like
    `read_shard` does; nothing else of the file is read.
    """
    out = np.empty((len(rows), *row_shape), dtype=dtype)
    flat = out.reshape(len(rows), -1).view(np.uint8)  # (n, bytes per row)
    tail = 4 if checksum else 0
    for i, row in enumerate(rows):
        offset, length = (int(v) for v in index[row])
        if offset == EMPTY or length < tail:
            raise ValueError(f"chunk {row} is missing from the shard index")
        data = os.pread(file.fileno(), length, offset)
        if len(data) != length:
            raise ValueError(f"chunk {row} is cut short: {len(data)} of {length} bytes")
        flat[i] = _decode_chunk(data, row, size=flat.shape[1], compressed=compressed, checksum=checksum)
    return out
