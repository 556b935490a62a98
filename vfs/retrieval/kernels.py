"""The math of the masked-window cosine: scores of every window position of a chunk of feature maps.

A query region is a set of `cells` (the non-zero weights inside its bounding box of h x w cells).
The score of the window whose top-left cell is (row, col) in image n is

    sum_cells w^2 <q_cell, F_n[:, row+i, col+j]>  /  (|q * w| * sqrt(sum_cells w^2 s_n[row+i, col+j]))

where s_n is the squared L2 norm of each feature vector of image n (precomputed in a cache, or
computed here). Two ways to get the dot products, picked per mask by their cost:

- "cells": one GEMM (n*H*W, C) x (C, cells) scores every position against every cell, then a
  shift-and-add over the cells sums each window. Cost ~ cells multiply-adds per feature value.
- "offsets": one product (n, C*H*W) x (C*H*W, offsets) with one zero-padded kernel per window
  position. Cost ~ offsets multiply-adds per feature value (a full mask is a single matvec).

Everything here is plain torch on whatever device the tensors live on (CPU or CUDA). On the CPU,
small masks ("cells") and float16 blocks go through the fused numba kernel of `vfs.retrieval.numba_kernel`
when numba is installed: it does only the cells x offsets dot products the windows need (the GEMM
does cells x every position), widens float16 in cache, and equals this path to float32 rounding.
float32 blocks with large masks stay on the torch matvec, which ties it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vfs.retrieval import numba_kernel

CHUNK_BYTES = 4 << 20  # float32 bytes of features scored in one CPU kernel call: about the L3 cache
CUDA_CHUNK_BYTES = 256 << 20  # on a GPU, fewer and larger transfers
USE_NUMBA = numba_kernel.AVAILABLE  # the fused CPU kernel (tests switch it off and on)
FUSED_DTYPES = (torch.float16, torch.float32)


@dataclass(frozen=True)
class WindowPlan:
    """Everything that depends on the query and the dataset grid, prepared once per search."""

    cells: tuple[tuple[int, int], ...]  # (i, j) of each non-zero weight inside the box, row-major
    columns: torch.Tensor  # (cells, C) float32: w^2 * q of each cell, divided by |q * w|
    square_weights: torch.Tensor  # (cells,) float32: w^2 of each cell
    magnitude_matrix: torch.Tensor  # (offsets, H*W) float32: w^2 of the cell a position is in a window
    height: int  # box height h, in cells
    width: int  # box width w, in cells
    grid: tuple[int, int]  # (H, W) of the dataset maps
    strategy: str  # "cells" or "offsets"
    chunk: int  # images per kernel call; fixed per plan so results never depend on the read size
    matrices: dict[object, Any] = field(default_factory=dict, repr=False, compare=False)  # layout -> dot matrices

    @property
    def offsets(self) -> tuple[int, int]:
        """(rows, cols) of window positions wholly inside a dataset map."""
        return self.grid[0] - self.height + 1, self.grid[1] - self.width + 1


def make_plan(query_box: torch.Tensor, weights_box: torch.Tensor, grid: tuple[int, int], *,
              device: torch.device) -> WindowPlan:
    """Prepare the search of a cropped query (C, h, w) with its cropped weights (h, w) over maps of `grid`."""
    channels, height, width = query_box.shape
    weighted = query_box.double() * weights_box.double()  # (C, h, w)
    norm = float(torch.linalg.vector_norm(weighted))
    rows, cols = torch.nonzero(weights_box > 0, as_tuple=True)
    cells = tuple(zip(rows.tolist(), cols.tolist()))
    columns = (weighted * weights_box.double())[:, rows, cols].T  # (cells, C): w^2 * q, one w per side
    if norm > 0:
        columns = columns / norm
    square_weights = weights_box.double()[rows, cols] ** 2  # (cells,)
    magnitude_matrix = spread(square_weights[:, None], cells, grid, (height, width))  # (H', W', H, W, 1)
    offsets = (grid[0] - height + 1) * (grid[1] - width + 1)
    strategy = "offsets" if offsets <= len(cells) else "cells"
    chunk_bytes = CUDA_CHUNK_BYTES if device.type == "cuda" else CHUNK_BYTES
    chunk = max(1, chunk_bytes // (channels * grid[0] * grid[1] * 4))
    return WindowPlan(cells=cells, columns=columns.float().to(device).contiguous(),
                      square_weights=square_weights.float().to(device),
                      magnitude_matrix=magnitude_matrix.reshape(offsets, -1).float().to(device),
                      height=height, width=width, grid=grid, strategy=strategy, chunk=chunk)


def spread(values: torch.Tensor, cells: Sequence[tuple[int, int]], grid: tuple[int, int],
           box: tuple[int, int]) -> torch.Tensor:
    """Each cell's vector at its place in every window: (cells, D) -> (H', W', H, W, D), zeros elsewhere."""
    rows, cols = grid[0] - box[0] + 1, grid[1] - box[1] + 1
    out = values.new_zeros(rows, cols, grid[0], grid[1], values.shape[1])  # (H', W', H, W, D)
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")  # (H', W') each
    for k, (i, j) in enumerate(cells):
        out[r, c, r + i, c + j] = values[k]
    return out


def is_channels_last(features: torch.Tensor) -> bool:
    """True when (n, C, H, W) features are stored (n, H, W, C) in memory."""
    return features.permute(0, 2, 3, 1).is_contiguous()


def square_norms(features: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm of every feature vector: (n, C, H, W) float32 -> (n, H, W)."""
    if is_channels_last(features):
        cl = features.permute(0, 2, 3, 1)  # (n, H, W, C)
        return (cl * cl).sum(dim=3)  # (n, H, W)
    return (features * features).sum(dim=1)  # (n, H, W)


def dot_matrix(plan: WindowPlan, *, channels_last: bool) -> torch.Tensor:
    """The matrix that turns a chunk into window dot products, built once per layout.

    "offsets": (offsets, C*H*W), one zero-padded copy of the query per window position.
    "cells": (offsets, H*W*cells), the 0/1 selector that sums each window's per-cell products.
    """
    key = (plan.strategy, channels_last)
    if key not in plan.matrices:
        rows, cols = plan.offsets
        box = (plan.height, plan.width)
        if plan.strategy == "offsets":
            matrix = spread(plan.columns, plan.cells, plan.grid, box)  # (H', W', H, W, C)
            if not channels_last:
                matrix = matrix.permute(0, 1, 4, 2, 3)  # (H', W', C, H, W)
        else:
            eye = torch.eye(len(plan.cells), device=plan.columns.device)  # (cells, cells)
            matrix = spread(eye, plan.cells, plan.grid, box)  # (H', W', H, W, cells)
            if not channels_last:
                matrix = matrix.permute(0, 1, 4, 2, 3)  # (H', W', cells, H, W)
        plan.matrices[key] = matrix.reshape(rows * cols, -1).contiguous()  # (offsets, D)
    return plan.matrices[key]


def window_dots(features: torch.Tensor, plan: WindowPlan) -> torch.Tensor:
    """Weighted dot products of the normalised query with every window: (n, C, H, W) -> (n, H'*W')."""
    n = features.shape[0]
    channels_last = is_channels_last(features)
    matrix = dot_matrix(plan, channels_last=channels_last)
    if channels_last:
        features = features.permute(0, 2, 3, 1)  # (n, H, W, C), a view
    if plan.strategy == "offsets":
        return F.linear(features.reshape(n, -1), matrix)  # (n, H'*W')
    if channels_last:
        per_cell = F.linear(features.reshape(-1, features.shape[3]), plan.columns)  # (n*H*W, cells)
    else:
        per_cell = torch.matmul(plan.columns, features.flatten(2))  # (n, cells, H*W)
    return F.linear(per_cell.reshape(n, -1), matrix)  # (n, H'*W')


def score_block(features: torch.Tensor, plan: WindowPlan, *, chunk: int, device: torch.device,
                sq_norms: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine of every window of a block of features (n, C, H, W), any float dtype -> (n, H'*W').

    The heavy work runs in kernel calls of exactly `chunk` images (the last one padded with zeros),
    so an image's scores never depend on `n`. `sq_norms` (n, H, W) are the squared norms of the
    feature vectors, computed when None. A window (or query) of zero magnitude scores 0.
    """
    if fused_applies(plan, features.dtype, device=device, data_device=features.device,
                     channels_last=is_channels_last(features)):
        return fused_block(features, plan, sq_norms=sq_norms)
    n = features.shape[0]
    dots = torch.empty(n, plan.offsets[0] * plan.offsets[1], device=device)  # (n, H'*W')
    magnitudes = torch.empty_like(dots)  # (n, H'*W')
    direct = features.dtype == torch.float32 and features.device == device
    for first in range(0, n, chunk):
        size = min(chunk, n - first)
        part = features[first:first + size]  # (size, C, H, W)
        if not direct or size < chunk:  # convert (or pad) into a buffer reused across chunks
            layout = is_channels_last(part)
            part = fill(chunk_buffer(plan, part.shape[1:], chunk=chunk, device=device, channels_last=layout),
                        part)  # (chunk, C, H, W)
        if sq_norms is None:
            norms = square_norms(part)  # (chunk, H, W)
        else:
            norms = sq_norms[first:first + size].to(device, torch.float32)  # (size, H, W)
            norms = norms if size == chunk else fill(norms.new_empty(chunk, *norms.shape[1:]), norms)
        magnitudes[first:first + size] = F.linear(norms.reshape(chunk, -1), plan.magnitude_matrix)[:size]
        dots[first:first + size] = window_dots(part, plan)[:size]
    magnitudes.clamp_(min=0).sqrt_()
    scores = torch.where(magnitudes > 0, dots.div_(magnitudes), 0.0)  # (n, H'*W')
    return scores.clamp_(-1.0, 1.0)


def fused_applies(plan: WindowPlan, dtype: torch.dtype, *, device: torch.device,
                  data_device: torch.device, channels_last: bool) -> bool:
    """Whether `score_block` takes the fused numba kernel (which scores each image on its own)."""
    on_cpu = device.type == "cpu" and data_device.type == "cpu"
    # measured here: fused wins on small masks, on float16 (no widened copy) and on (n, C, H, W)
    # blocks (full 7x7 over 10,000 float32: 1.3-1.5 s fused vs 2.4-2.9 s by matvec plus a norm pass,
    # same run, loaded machine); the matvec ties it on channels-last float32 with large masks
    return (USE_NUMBA and on_cpu and dtype in FUSED_DTYPES
            and (plan.strategy == "cells" or dtype == torch.float16 or not channels_last))


def fused_block(features: torch.Tensor, plan: WindowPlan, *, sq_norms: torch.Tensor | None) -> torch.Tensor:
    """`score_block` by the numba kernel: (n, C, H, W) float16/float32 on the CPU -> (n, H'*W') float32."""
    stored, columns, positions, square_weights, norms = _fused_arguments(features, plan, sq_norms)
    out = np.empty((features.shape[0], plan.offsets[0] * plan.offsets[1]), np.float32)  # (n, H'*W')
    numba_kernel.fused_scores(stored, channels_last=is_channels_last(features), columns=columns, positions=positions,
                              square_weights=square_weights, sq_norms=norms, out=out)
    return torch.from_numpy(out)


def _fused_arguments(features: torch.Tensor, plan: WindowPlan, sq_norms: torch.Tensor | None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The numba kernels' arrays: (stored (n, H*W, C) or (n, C, H*W), float16 as uint16 bits; columns;
    positions; square_weights; sq_norms (n, H*W) float32, -1 where they are to be computed)."""
    n, channels, height, width = features.shape
    if "fused" not in plan.matrices:
        plan.matrices["fused"] = (plan.columns.cpu().numpy(),  # (cells, C)
                                  window_positions(plan),  # (cells, H'*W')
                                  plan.square_weights.cpu().numpy())  # (cells,)
    columns, positions, square_weights = plan.matrices["fused"]
    if is_channels_last(features):
        laid_out = features.permute(0, 2, 3, 1).reshape(n, height * width, channels)  # (n, H*W, C)
    else:
        laid_out = features.reshape(n, channels, height * width)  # (n, C, H*W)
    stored = laid_out.contiguous().numpy()  # a view unless the block was strided oddly
    if stored.dtype == np.float16:
        stored = stored.view(np.uint16)  # the kernel widens the bits itself
    if sq_norms is None:
        norms = np.full((n, height * width), -1.0, np.float32)  # (n, H*W): -1 = compute them
    else:
        norms = sq_norms.reshape(n, -1).to(torch.float32).contiguous().numpy()  # (n, H*W), only read
    return stored, columns, positions, square_weights, norms


def best_scores(features: torch.Tensor, plan: WindowPlan, *, sq_norms: torch.Tensor) -> torch.Tensor:
    """Each image's best window cosine: (n, C, H, W) on the CPU -> (n,) float32, by the numba kernel.

    Equals `score_block(...).max(dim=1).values` to float32 rounding (`fused_applies` must hold), without
    the (n, H'*W') scores: two-stage search scans a whole coarse index this way in one call.
    """
    stored, columns, positions, square_weights, norms = _fused_arguments(features, plan, sq_norms)
    out = np.empty(features.shape[0], np.float32)  # (n,)
    numba_kernel.fused_best_scores(stored, channels_last=is_channels_last(features), columns=columns,
                                   positions=positions, square_weights=square_weights, sq_norms=norms, out=out)
    return torch.from_numpy(out)


def window_positions(plan: WindowPlan) -> np.ndarray:
    """Flat position (row * W + col) of cell k in window p, row-major windows: (cells, H'*W') int64."""
    rows, cols = plan.offsets
    width = plan.grid[1]
    return np.array([[(r + i) * width + (c + j) for r in range(rows) for c in range(cols)]
                     for i, j in plan.cells], np.int64)


def chunk_buffer(plan: WindowPlan, shape: Sequence[int], *, chunk: int, device: torch.device,
                 channels_last: bool) -> torch.Tensor:
    """A float32 (chunk, C, H, W) buffer in the given memory layout, allocated once per plan."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    key = ("buffer", chunk, layout, device)
    if key not in plan.matrices:
        plan.matrices[key] = torch.empty(chunk, *shape, device=device, memory_format=layout)
    return plan.matrices[key]


def fill(buffer: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """`values` copied (converted, moved) into the first rows of `buffer`, zeros after."""
    buffer[: values.shape[0]].copy_(values)
    buffer[values.shape[0]:].zero_()
    return buffer
