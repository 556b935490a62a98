"""An optional fused CPU kernel (numba) for small masks: only the multiply-adds the windows need.

The torch "cells" path scores every position of a map against every cell of the mask, then sums
each window; a cell only ever meets the H'*W' positions its windows cover, so for a 3x3 mask on a
7x7 map half of that work is wasted. This kernel does, per image, exactly cells x offsets dot
products of length C (four window positions at a time, sharing the loads of the query column),
then the window magnitude, the cosine and the clamp, in one pass while the image is in cache.

It reads float32 channels-last chunks (n, H*W, C); the caller converts float16 with torch first.
Results equal the torch path's to float32 rounding (the sums run in another order). Without numba
installed, or with VFS_NUMBA=0 in the environment, the torch path runs alone.
"""

from __future__ import annotations

import os
import threading

import numpy as np

try:
    import numba
except ImportError:  # the torch path covers everything; this is only faster
    numba = None

AVAILABLE = numba is not None and os.environ.get("VFS_NUMBA", "1") != "0"
_LOCK = threading.Lock()  # one parallel region at a time, whatever threads call search

if AVAILABLE:
    _FASTMATH = {"reassoc", "contract"}  # lets the C-long sums vectorise; no assumptions about NaN/inf

    @numba.njit(fastmath=_FASTMATH, cache=True)
    def _score_image(x, columns, positions, square_weights, norms, out):
        """x (H*W, C); columns (cells, C); positions (cells, P) flat cells of each window; out (P,)."""
        cells, offsets = positions.shape
        channels = x.shape[1]
        p = 0
        while p < offsets:
            if p + 4 <= offsets:  # four windows share each load of the query column
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
            else:
                a0 = np.float32(0.0)
                for k in range(cells):
                    q, x0 = columns[k], x[positions[k, p]]
                    for c in range(channels):
                        a0 += q[c] * x0[c]
                out[p] = a0
                p += 1
        for p in range(offsets):
            magnitude = np.float32(0.0)
            for k in range(cells):
                magnitude += square_weights[k] * norms[positions[k, p]]
            if magnitude > 0:
                out[p] = min(max(out[p] / np.sqrt(magnitude), np.float32(-1.0)), np.float32(1.0))
            else:
                out[p] = np.float32(0.0)

    @numba.njit(parallel=True, fastmath=_FASTMATH, cache=True)
    def _score_chunk(features, columns, positions, square_weights, sq_norms, out):
        for n in numba.prange(features.shape[0]):
            _score_image(features[n], columns, positions, square_weights, sq_norms[n], out[n])


def fused_scores(features: np.ndarray, columns: np.ndarray, positions: np.ndarray,
                 square_weights: np.ndarray, sq_norms: np.ndarray, out: np.ndarray) -> None:
    """Cosines of every window into `out` (n, P) from float32 features (n, H*W, C) and norms (n, H*W)."""
    with _LOCK:
        _score_chunk(features, columns, positions, square_weights, sq_norms, out)
