"""Where the math runs: "cpu", "cuda", "cuda:1" or a `torch.device`, checked against this machine.

    device = resolve_device("cuda")          # DeviceError naming what this machine has, if it has no GPU
    with mixed_precision(device):            # float16 autocast on CUDA; nothing on the CPU
        output = module(pixels)
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from vfs.errors import DeviceError


def resolve_device(device: str | torch.device | None, *, default: str | torch.device = "cpu") -> torch.device:
    """`device` (None: `default`) as a `torch.device` that exists here, or a `DeviceError` saying what does."""
    if device is None:
        device = default
    try:
        checked = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise _unusable(device, f"not a device ({error})") from None
    if checked.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise _unusable(device, f"no CUDA GPU (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})")
        if checked.index is not None and checked.index >= count:
            raise _unusable(device, f"no such CUDA GPU ({count} present)")
    elif checked.type != "cpu":
        raise _unusable(device, "not supported (only cpu and cuda are)")
    return checked


def _unusable(device: str | torch.device, why: str) -> DeviceError:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    have = ", ".join(["cpu"] + [f"cuda:{i}" for i in range(count)])
    return DeviceError(f"device {str(device)!r} cannot be used here: {why}; this machine has {have}: "
                       "pass one of those (or None for the default)")


def mixed_precision(device: torch.device, *, enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """float16 autocast on a CUDA device (matmuls and convolutions in float16, reductions in float32)."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()
