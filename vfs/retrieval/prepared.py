"""`prepare`: any source laid out once as a cache in RAM holds it, so every later search runs at cache speed.

    source = vfs.prepare(features)                  # (N, C, H, W) tensor, numpy array, zarr array, cache...
    matches = vfs.search(features[0], weights, source)   # same results, every query at cache speed
    source = vfs.prepare(features, in_place=True)   # no second copy: reuses the tensor's own memory
    on_gpu = source.to("cuda")                      # float16 stays float16 on the device

The search reads every feature vector of a window, so it wants the C values of one cell next to each
other (channels-last, (N, H, W, C)) and each cell's squared norm ready (sq_norms, (N, H, W)); a
plain contiguous (N, C, H, W) source has neither, and each query pays a transposition and a norm
pass (measured here: 3-5x slower than a cache in RAM). `prepare` pays them once.

Memory: the layout is written block by block (`block` images at a time), so the only transient is
one block. With `in_place=False` (default) the prepared copy sits beside the caller's source (drop
the source to get the memory back); with `in_place=True` a contiguous tensor or numpy array is
rearranged inside its own memory, image by image, and the result shares it: the only extra memory
is one block and the sq_norms (4 bytes per cell, 1/C of float32 features). A torch tensor keeps
reading the same values afterwards (its strides become channels-last); a numpy array cannot change
its strides, so its own element order is scrambled and it must be read through the returned source.
Nothing else may view that memory while it is rearranged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vfs.errors import SearchError
from vfs.source import as_tensor

BLOCK_BYTES = 64 << 20  # bytes of features rearranged at a time: the only transient memory
KEPT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # other float dtypes become float32


class PreparedSource:
    """Features stored channels-last with per-cell squared norms, as a `FeatureCache` in RAM holds them.

    `shape` is (N, C, H, W); `source[i]` is (C, H, W) and `source[a:b]` (n, C, H, W), views of the
    channels-last storage. Build one with `vfs.prepare`.
    """

    def __init__(self, stored: torch.Tensor, sq_norms: torch.Tensor):
        if stored.ndim != 4 or tuple(sq_norms.shape) != tuple(stored.shape[:3]):
            raise SearchError(f"internal: stored {tuple(stored.shape)} and sq_norms {tuple(sq_norms.shape)} "
                              "must be (N, H, W, C) and (N, H, W)")
        self.stored = stored  # (N, H, W, C), contiguous
        self.sq_norms = sq_norms  # (N, H, W) float32, squared L2 norm of each stored feature vector
        count, height, width, channels = stored.shape
        self.shape = (count, channels, height, width)
        self.dtype = stored.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"<PreparedSource {self.shape} {self.dtype} on {self.device}, channels-last with sq_norms>"

    @property
    def device(self) -> torch.device:
        return self.stored.device

    @property
    def nbytes(self) -> int:
        return self.stored.numel() * self.stored.element_size() + self.sq_norms.numel() * 4

    def __getitem__(self, index: Any) -> torch.Tensor:
        block = self.stored[index]  # (n, H, W, C) or (H, W, C)
        return block.permute(2, 0, 1) if block.ndim == 3 else block.permute(0, 3, 1, 2)  # (n, C, H, W)

    def to(self, device: str | torch.device, *, non_blocking: bool = False) -> PreparedSource:
        """The same source on `device` (same dtype): `prepare(cache).to("cuda")` holds a cache in GPU memory."""
        device = torch.device(device)
        if device == self.device:
            return self
        stored, norms = self.stored, self.sq_norms
        if device.type == "cuda" and non_blocking and not stored.is_pinned():
            non_blocking = False  # an unpinned copy is synchronous anyway
        return PreparedSource(stored.to(device, non_blocking=non_blocking),  # (N, H, W, C)
                              norms.to(device, non_blocking=non_blocking))  # (N, H, W)


def prepare(source: Any, *, in_place: bool = False, block: int | None = None) -> PreparedSource:
    """`source` (N, C, H, W), anything that slices along dim 0, laid out channels-last with sq_norms.

    float16/bfloat16/float32 keep their dtype (so results equal a search of `source` itself); other
    floats become float32. A source that already has `sq_norms` (a cache) keeps them. `in_place=True`
    rearranges a contiguous tensor or numpy array inside its own memory (see the module docstring).
    """
    if isinstance(source, PreparedSource):
        return source
    shape = getattr(source, "shape", None)
    if shape is None or len(shape) != 4:
        raise SearchError(f"source must hold features (N, C, H, W) and slice along dim 0, got shape {shape}: "
                          "stack single maps with torch.stack or pass a FeatureCache")
    count, channels, height, width = (int(x) for x in shape)
    if block is None:
        block = max(1, BLOCK_BYTES // max(1, channels * height * width * 4))
    stored: torch.Tensor | None
    if in_place:
        stored = _rearrange_in_place(source, block)  # (N, H, W, C), the caller's memory
    else:
        stored = _laid_out(source)  # (N, H, W, C) view when already channels-last in RAM, else None
    copy = stored is None  # then allocated from the first block, in its dtype
    sq_norms = _given_norms(source, (count, height, width))
    fill_norms = sq_norms is None
    for start in range(0, count, block):
        stop = min(count, start + block)
        if copy:
            part = as_tensor(source[start:stop])  # (n, C, H, W), on the source's device
            if stored is None:
                stored = torch.empty(count, height, width, channels, dtype=_kept_dtype(part.dtype),
                                     device=part.device)
            stored[start:stop] = part.permute(0, 2, 3, 1)  # (n, H, W, C), converted if needed
        assert stored is not None  # internal: laid out, rearranged, or allocated from the first block above
        if fill_norms and sq_norms is None:
            sq_norms = torch.empty(count, height, width, device=stored.device)  # (N, H, W)
        if fill_norms and sq_norms is not None:
            values = stored[start:stop].float()  # (n, H, W, C)
            sq_norms[start:stop] = (values * values).sum(dim=3)  # (n, H, W)
    if stored is None:  # an empty source
        stored = torch.empty(0, height, width, channels)
    if sq_norms is None:
        sq_norms = torch.empty(0, height, width)
    return PreparedSource(stored, sq_norms.to(stored.device))


def _rearrange_in_place(source: Any, block: int) -> torch.Tensor:
    """Rewrite a contiguous (N, C, H, W) tensor or array as (N, H, W, C) in its own memory, image blocks at a time."""
    if isinstance(source, np.ndarray):
        if not source.flags.c_contiguous or not source.flags.writeable or source.dtype.kind != "f":
            raise SearchError("in_place=True needs a writeable, C-contiguous float numpy array: "
                              "pass in_place=False to prepare a copy instead")
        tensor = torch.from_numpy(source)  # (N, C, H, W), shares memory
    elif isinstance(source, torch.Tensor):
        tensor = source.detach()
        if source.requires_grad or not tensor.is_floating_point():
            raise SearchError("in_place=True needs a float tensor that does not require grad: "
                              "pass in_place=False, or features.detach()")
    else:
        raise SearchError(f"in_place=True rearranges a torch tensor or numpy array in memory, got "
                          f"{type(source).__name__}: pass in_place=False to prepare a copy")
    count, channels, height, width = tensor.shape
    if tensor.dtype not in KEPT_DTYPES:
        raise SearchError(f"in_place=True keeps the dtype, and {tensor.dtype} is not searched as is: "
                          "convert to float32 or float16 first, or pass in_place=False")
    if _is_channels_last(tensor):  # already laid out: nothing to move
        return tensor.permute(0, 2, 3, 1)  # (N, H, W, C), a view
    if not tensor.is_contiguous():
        raise SearchError("in_place=True needs a contiguous (N, C, H, W) or channels-last tensor: "
                          "pass in_place=False to prepare a copy instead")
    flat = tensor.view(count, -1)  # (N, C*H*W): each image owns one contiguous run of memory
    for start in range(0, count, block):
        original = tensor[start:start + block].clone()  # (n, C, H, W): the one transient block
        flat[start:start + block].view(-1, height, width, channels).copy_(original.permute(0, 2, 3, 1))
    if isinstance(source, torch.Tensor):  # the caller's tensor reads the same values from the new layout
        source.as_strided_((count, channels, height, width), (channels * height * width, 1, width * channels,
                                                              channels))
    return flat.view(count, height, width, channels)  # (N, H, W, C)


def _laid_out(source: Any) -> torch.Tensor | None:
    """A view (N, H, W, C) of a source already held channels-last in RAM in a kept dtype (a loaded cache), else None."""
    if isinstance(source, (torch.Tensor, np.ndarray)):
        whole = source
    elif getattr(source, "in_memory", False):  # a FeatureCache read into RAM: its slices are views
        whole = source[0:len(source)]
    else:
        return None
    tensor = as_tensor(whole)  # (N, C, H, W)
    if tensor.dtype in KEPT_DTYPES and _is_channels_last(tensor):
        return tensor.permute(0, 2, 3, 1)  # (N, H, W, C), shares memory
    return None


def _given_norms(source: Any, shape: tuple[int, int, int]) -> torch.Tensor | None:
    """The source's own sq_norms (a cache's) as a float32 tensor (N, H, W), or None."""
    norms = getattr(source, "sq_norms", None)
    if norms is None:
        return None
    if tuple(norms.shape) != shape:
        raise SearchError(f"source.sq_norms has shape {tuple(norms.shape)}, expected {shape}: "
                          "rebuild the cache's squared norms")
    return as_tensor(norms[:]).to(torch.float32)  # (N, H, W)


def _kept_dtype(dtype: torch.dtype) -> torch.dtype:
    if not dtype.is_floating_point:
        raise SearchError(f"source holds {dtype} values; features must be floats: "
                          "convert them with .float() or .astype(np.float32)")
    return dtype if dtype in KEPT_DTYPES else torch.float32


def _is_channels_last(tensor: torch.Tensor) -> bool:
    return tensor.permute(0, 2, 3, 1).is_contiguous()
