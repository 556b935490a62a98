"""Where the math runs: "cpu", "cuda", "cuda:1" or a `torch.device`, checked against this machine.

    device = resolve_device("cuda")          # DeviceError naming what this machine has, if it has no GPU
    with mixed_precision(device):            # float16 autocast on CUDA; nothing on the CPU
        output = module(pixels)
"""

from __future__ import annotations

import contextlib

import torch

from vfs.errors import DeviceError


def resolve_device(device: str | torch.device | None, *, default: str | torch.device = "cpu") -> torch.device:
    """`device` (None: `default`) as a `torch.device` that exists here, or a `DeviceError` saying what does."""
    if device is None:
        device = default
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise DeviceError(f"{device!r} is not a device ({error}): use 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"device {str(device)!r} was asked for but this machine has no CUDA GPU "
                              f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}): "
                              "use device 'cpu'")
        if device.index is not None and device.index >= count:
            raise DeviceError(f"device {str(device)!r} does not exist: this machine has {count} CUDA "
                              f"GPU(s), cuda:0 to cuda:{count - 1}")
    elif device.type != "cpu":
        raise DeviceError(f"device {str(device)!r} is not supported: use 'cpu' or 'cuda' ('cuda:N')")
    return device


def mixed_precision(device: torch.device, *, enabled: bool = True) -> contextlib.AbstractContextManager:
    """float16 autocast on a CUDA device (matmuls and convolutions in float16, reductions in float32)."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()
