"""An optional fused CPU kernel (numba): every window's cosine in one pass over each image.

Per image, in parallel over the images of a block: the stored values (float16 or float32,
channels-last or not) are loaded once into a float32 (H*W, C) scratch that stays in cache, then
exactly cells x offsets dot products of length C are done (four window positions, or four cells,
at a time, sharing loads), then the window magnitudes, the cosine and the clamp. No float32 copy of
the block is ever written to memory, and one parallel region covers a whole block.

float16 is widened exactly with integer bit moves (AVX2 has no float16 arithmetic and numba has no
float16 type): the 15 magnitude bits shifted into a float32's place, times 2^112, is the same
number for normal and subnormal values (features are finite; inf/NaN are not preserved).
Results equal the torch path's to float32 rounding (the sums run in another order). Without numba,
or with VFS_NUMBA=0 in the environment, the torch path runs alone.
"""

from __future__ import annotations

import os
import threading

import numpy as np

try:
    import numba
except ImportError:  # the torch path covers everything; this one is only faster
    numba = None  # type: ignore[assignment]  # optional: AVAILABLE says whether it loaded

AVAILABLE = numba is not None and os.environ.get("VFS_NUMBA", "1") != "0"
_LOCK = threading.Lock()  # one parallel region at a time, whatever threads call search
CHUNK_IMAGES = 32  # images a thread takes at a time: a thread slowed by other jobs holds up no one

if AVAILABLE:
    _FASTMATH = {"reassoc", "contract"}  # lets the C-long sums vectorise; no assumptions about NaN/inf
    _HALF_SCALE = np.float32(2.0**112)

    @numba.njit(inline="always", cache=True)
    def _widen(h: np.uint16) -> np.uint32:
        """float16 bits -> float32 bits of the same number divided by 2^112 (sign kept)."""
        wide = np.uint32(h)
        return ((wide & np.uint32(0x7FFF)) << np.uint32(13)) | ((wide & np.uint32(0x8000)) << np.uint32(16))

    @numba.njit(fastmath=_FASTMATH, cache=True)
    def _widen_into(image: np.ndarray, out: np.ndarray) -> None:
        """float16 bits (uint16, contiguous) -> the same numbers in the float32 array `out` of the same size."""
        source = image.reshape(-1)
        bits = out.reshape(-1).view(np.uint32)
        flat = out.reshape(-1)
        for i in range(flat.size):
            bits[i] = _widen(source[i])
        for i in range(flat.size):
            flat[i] *= _HALF_SCALE

    @numba.njit(fastmath=_FASTMATH, cache=True)
    def _transpose(image: np.ndarray, scratch: np.ndarray) -> None:
        """(C, H*W) -> scratch (H*W, C) in tiles of 8 channels: their 8 rows stay in L1 while each
        position's 8 values are written together (measured here: 2x faster than channel by channel)."""
        positions, channels = scratch.shape
        whole = channels - channels % 8
        for c0 in range(0, whole, 8):
            for p in range(positions):
                for c in range(c0, c0 + 8):
                    scratch[p, c] = image[c, p]
        for c in range(whole, channels):
            for p in range(positions):
                scratch[p, c] = image[c, p]

    @numba.njit(fastmath=_FASTMATH, cache=True)
    def _load(image: np.ndarray, half: bool, channels_last: bool, scratch: np.ndarray) -> None:
        """One stored image, (H*W, C) if channels_last else (C, H*W), into the float32 scratch (H*W, C)."""
        if channels_last:
            if half:  # image holds float16 bits as uint16
                _widen_into(image, scratch)
            else:
                scratch[:, :] = image
        elif half:  # widened in storage order first (vectorises), then transposed in cache
            wide = np.empty((scratch.shape[1], scratch.shape[0]), np.float32)  # (C, H*W)
            _widen_into(image, wide)
            _transpose(wide, scratch)
        else:
            _transpose(image, scratch)

    @numba.njit(fastmath=_FASTMATH, cache=True)
    def _dots(x: np.ndarray, columns: np.ndarray, positions: np.ndarray, out: np.ndarray) -> None:
        """out[p] = sum_k <columns[k], x[positions[k, p]]>, four windows (or four cells) at a time."""
        cells, offsets = positions.shape
        channels = x.shape[1]
        p = 0
        while p + 4 <= offsets:  # four windows share each load of a query column
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for k in range(cells):
                q = columns[k]
                x0, x1 = x[positions[k, p]], x[positions[k, p + 1]]
                x2, x3 = x[positions[k, p + 2]], x[positions[k, p + 3]]
                for c in range(channels):
                    a0 += q[c] * x0[c]
                    a1 += q[c] * x1[c]
                    a2 += q[c] * x2[c]
                    a3 += q[c] * x3[c]
            out[p], out[p + 1], out[p + 2], out[p + 3] = a0, a1, a2, a3
            p += 4
        while p < offsets:  # the last windows: four cells at a time
            a0 = a1 = a2 = a3 = np.float32(0.0)
            k = 0
            while k + 4 <= cells:
                q0, q1, q2, q3 = columns[k], columns[k + 1], columns[k + 2], columns[k + 3]
                x0, x1 = x[positions[k, p]], x[positions[k + 1, p]]
                x2, x3 = x[positions[k + 2, p]], x[positions[k + 3, p]]
                for c in range(channels):
                    a0 += q0[c] * x0[c]
                    a1 += q1[c] * x1[c]
                    a2 += q2[c] * x2[c]
                    a3 += q3[c] * x3[c]
                k += 4
            while k < cells:
                q0, x0 = columns[k], x[positions[k, p]]
                for c in range(channels):
                    a0 += q0[c] * x0[c]
                k += 1
            out[p] = (a0 + a1) + (a2 + a3)
            p += 1

    @numba.njit(fastmath=_FASTMATH, cache=True)
    def _score_image(x: np.ndarray, columns: np.ndarray, positions: np.ndarray, square_weights: np.ndarray, norms: np.ndarray,
                     out: np.ndarray) -> None:
        """Cosines of the windows of one image x (H*W, C) into out (P,); norms (H*W,) < 0 are computed."""
        cells, offsets = positions.shape
        if norms[0] < 0:  # no precomputed norms: the caller filled them with -1
            for p in range(x.shape[0]):
                total = np.float32(0.0)
                for c in range(x.shape[1]):
                    total += np.float32(x[p, c]) * np.float32(x[p, c])
                norms[p] = total
        _dots(x, columns, positions, out)
        for p in range(offsets):
            magnitude = np.float32(0.0)
            for k in range(cells):
                magnitude += square_weights[k] * norms[positions[k, p]]
            if magnitude > 0:
                out[p] = min(max(out[p] / np.sqrt(magnitude), np.float32(-1.0)), np.float32(1.0))
            else:
                out[p] = np.float32(0.0)

    @numba.njit(parallel=True, fastmath=_FASTMATH, cache=True, nogil=True)  # other threads (the app's) run meanwhile
    def _score_block(features: np.ndarray, half: bool, channels_last: bool, columns: np.ndarray, positions: np.ndarray,
                     square_weights: np.ndarray, sq_norms: np.ndarray, out: np.ndarray) -> None:
        grid_positions, channels = sq_norms.shape[1], columns.shape[1]
        for n in numba.prange(features.shape[0]):
            if channels_last and not half:  # float32 (H*W, C) already: no copy
                _score_image(features[n], columns, positions, square_weights, sq_norms[n], out[n])
            else:
                x = np.empty((grid_positions, channels), np.float32)
                _load(features[n], half, channels_last, x)
                _score_image(x, columns, positions, square_weights, sq_norms[n], out[n])

    @numba.njit(parallel=True, fastmath=_FASTMATH, cache=True, nogil=True)
    def _best_block(features: np.ndarray, half: bool, channels_last: bool, columns: np.ndarray, positions: np.ndarray,
                    square_weights: np.ndarray, sq_norms: np.ndarray, part: int, out: np.ndarray) -> None:
        """out[n] = the best window cosine of image n; threads take `part` images at a time."""
        count = features.shape[0]
        grid_positions, channels = sq_norms.shape[1], columns.shape[1]
        for first in numba.prange((count + part - 1) // part):
            x = np.empty((grid_positions, channels), np.float32)  # one scratch per part, not per image
            scores = np.empty(positions.shape[1], np.float32)  # (P,)
            for n in range(first * part, min(count, (first + 1) * part)):
                _load(features[n], half, channels_last, x)
                _score_image(x, columns, positions, square_weights, sq_norms[n], scores)
                best = scores[0]
                for p in range(1, scores.size):  # the first maximum, as torch's max
                    if scores[p] > best:
                        best = scores[p]
                out[n] = best


def fused_scores(features: np.ndarray, *, channels_last: bool, columns: np.ndarray, positions: np.ndarray,
                 square_weights: np.ndarray, sq_norms: np.ndarray, out: np.ndarray) -> None:
    """Cosines of every window into `out` (n, P).

    features: (n, H*W, C) if channels_last else (n, C, H*W), float32 or float16 bits as uint16;
    columns (cells, C) float32; positions (cells, P) int64 flat cells of each window; square_weights
    (cells,) float32; sq_norms (n, H*W) float32, filled with -1 to have them computed (overwritten).
    """
    with _LOCK:
        previous = numba.set_parallel_chunksize(CHUNK_IMAGES)  # threads take work as they free up
        try:
            _score_block(features, features.dtype == np.uint16, channels_last, columns, positions,
                         square_weights, sq_norms, out)
        finally:
            numba.set_parallel_chunksize(previous)


def fused_best_scores(features: np.ndarray, *, channels_last: bool, columns: np.ndarray, positions: np.ndarray,
                      square_weights: np.ndarray, sq_norms: np.ndarray, out: np.ndarray) -> None:
    """Each image's best window cosine into `out` (n,): `fused_scores` then a max, with no (n, P) array.

    Arguments as for `fused_scores`. One parallel region over all n images (two-stage search's scan
    of a whole coarse index). Both kernels run without the GIL.
    """
    with _LOCK:
        previous = numba.set_parallel_chunksize(1)  # parts of CHUNK_IMAGES images, taken as threads free up
        try:
            _best_block(features, features.dtype == np.uint16, channels_last, columns, positions,
                        square_weights, sq_norms, CHUNK_IMAGES, out)
        finally:
            numba.set_parallel_chunksize(previous)
