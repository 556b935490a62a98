"""Features of any layer of any `nn.Module`, as `(N, C, H, W)` grids; `python -m vfs layers MODEL`.

A layer is named as `model.named_modules()` names it (`"layer4.2.conv2"`, `"blocks.5"`); the
features are that module's output the first time it runs in a forward pass. A forward hook captures
it and then stops the pass (the layers after it and the head never run). Outputs become grids:

- `(B, C, H, W)`: as is. `(B, H, W, C)` (timm swin / convnext-style channels-last blocks) is
  detected from the input size: the two spatial sizes must be the input size divided by one common
  stride (up to rounding); when both readings fit, channels-first is assumed.
- `(B, tokens, C)` (vision transformers): the patch grid `(h, w)` is the input size divided by the
  model's patch size (timm `patch_embed.patch_size`, torchvision `patch_size`); the first
  `tokens - h * w` tokens (class and register tokens) are dropped; patches are row-major. Models
  that expose no patch size get the grid inferred from the token count and the input's aspect.
- `(B, C)` (pooled embeddings): `(B, C, 1, 1)`. Tuples and dicts: their first tensor.
"""

from __future__ import annotations

import argparse
import difflib
import math
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from vfs.errors import LayerError, ModelError, positive_int
from vfs.models.devices import mixed_precision, resolve_device
from vfs.models.preprocess import Preprocess

MAX_PREFIX_TOKENS = 16  # class, distillation and register tokens a ViT may put before its patch tokens
# one layer's record in `_record_shapes`: (raw output shape without the batch dim, or the output's type name when it
# holds no tensor; its (C, H, W) grid, or None when it is no feature grid)
_Recorded = tuple[tuple[int, ...] | str, tuple[int, ...] | None]
_Hook = Callable[[nn.Module, tuple[Any, ...], object], None]  # a forward hook: (module, inputs, output) -> None


class _Captured(Exception):
    """Raised by the hook once the layer's output is stored, to stop the forward pass early."""


def list_layers(module: nn.Module) -> list[str]:
    """Every layer name of `module` in `named_modules()` order (the root, named "", left out)."""
    return [name for name, _ in module.named_modules() if name]


def get_layer(module: nn.Module, layer: str) -> nn.Module:
    """The submodule called `layer`, or a `LayerError` suggesting close names."""
    modules = dict(module.named_modules())
    if layer and layer in modules:
        return modules[layer]
    close = difflib.get_close_matches(layer, list(modules), n=5, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise LayerError(
        f"the model has no layer {layer!r}.{hint} Layers are named as model.named_modules() names them; "
        "list them with vfs.list_layers(model) or `python -m vfs layers MODEL`."
    )


class FeatureExtractor:
    """Callable: images -> the `(N, C, H, W)` float32 CPU features of one layer."""

    def __init__(
        self,
        module: nn.Module,
        layer: str,
        *,
        preprocess: Preprocess | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        mixed_precision: bool | None = None,
    ) -> None:
        self.module = module
        self.layer = layer
        self.preprocess = preprocess  # None: only model input (preprocessed float tensors) is accepted
        self.batch_size = batch_size  # images per forward pass
        self._target = get_layer(module, layer)
        if device is not None:  # moves the module there; None keeps it where it is
            module.to(resolve_device(device))
        parameter = next(module.parameters(), None)
        self.device = parameter.device if parameter is not None else resolve_device(device)
        # float16 autocast on CUDA (features differ from float32 in rounding, as a float16 cache does)
        self.mixed_precision = self.device.type == "cuda" if mixed_precision is None else mixed_precision

    def __call__(self, images: Any, *, preprocessed: bool = False) -> torch.Tensor:
        """Images -> (N, C, H, W) float32 features on the CPU.

        With `preprocess=`, every input is an image and goes through it: PIL images, uint8 arrays, and
        float tensors of pixels in [0, 1] (what `torchvision.transforms.ToTensor()` gives). Model input
        that is already preprocessed (resized, cropped, normalised (B, 3, H, W)) is passed with
        `preprocessed=True`, or to an extractor made without `preprocess=`, which accepts nothing else.
        The module is put in eval mode and run under `torch.inference_mode()`.
        """
        self.module.eval()
        parts = [self._features(self._pixels(chunk, preprocessed=preprocessed))
                 for chunk in _chunks(images, self.batch_size)]  # each (b, C, h, w)
        return parts[0] if len(parts) == 1 else torch.cat(parts)  # (N, C, h, w)

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda" and pixels.device.type == "cpu":  # pinned: the copy runs asynchronously
            pixels = pixels if pixels.is_pinned() else pixels.pin_memory()
        with mixed_precision(self.device, enabled=self.mixed_precision):
            output = run_to_layer(self.module, self._target, pixels.to(self.device, non_blocking=True),
                                  layer=self.layer)
        grid = to_grid(output, pixels.shape[-2:], module=self.module, layer=self.layer)  # (B, C, h, w)
        return grid.float().cpu().contiguous()

    def _pixels(self, images: Any, *, preprocessed: bool) -> torch.Tensor:
        """One batch -> (B, 3, H, W) model input."""
        is_float = isinstance(images, torch.Tensor) and images.is_floating_point() and images.ndim in (3, 4)
        if is_float and (preprocessed or self.preprocess is None):
            return images if images.ndim == 4 else images.unsqueeze(0)  # (B, 3, H, W), model input as given
        if self.preprocess is None or preprocessed:
            raise ModelError(
                f"got {type(images).__name__} {getattr(images, 'dtype', '')} images as model input: model input is "
                "a preprocessed (B, 3, H, W) float tensor; to start from images, make the extractor with "
                "FeatureExtractor(..., preprocess=loaded.preprocess) and leave preprocessed=False")
        if is_float and (float(images.min()) < 0 or float(images.max()) > 1):
            raise ModelError(
                f"got float tensors with values in [{float(images.min()):.3g}, {float(images.max()):.3g}], but this "
                "extractor preprocesses its input and takes float pixels in [0, 1] (as ToTensor() gives): pass "
                "preprocessed=True if they are already preprocessed model input, or scale them to [0, 1]")
        return self.preprocess(images)  # (B, 3, crop, crop)


_PASS_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_PASS_LOCKS_LOCK = threading.Lock()


@contextmanager
def _one_pass_at_a_time(module: nn.Module) -> Iterator[None]:
    """Hold `module`'s own lock: hooks added, the forward pass, hooks removed, one thread at a time.

    Threads sharing a model (the app's handlers under gradio) would otherwise add or remove a hook
    while another thread's forward pass iterates the same hook dict ("OrderedDict mutated during
    iteration"). On a CPU the passes share the cores anyway; torch's own threads keep them busy.
    """
    with _PASS_LOCKS_LOCK:
        lock = _PASS_LOCKS.setdefault(module, threading.Lock())
    with lock:
        yield


def run_to_layer(module: nn.Module, target: nn.Module, pixels: torch.Tensor, *, layer: str = "") -> torch.Tensor:
    """`target`'s output (its first tensor) the first time it runs on `pixels`; the rest never runs."""
    captured: list[object] = []
    caller = threading.get_ident()

    def hook(_module: nn.Module, _inputs: tuple[Any, ...], output: object) -> None:
        if threading.get_ident() != caller:  # another thread's pass through a shared module (the app's handlers)
            return
        captured.append(output)
        raise _Captured

    with _one_pass_at_a_time(module):
        handle = target.register_forward_hook(hook)
        try:
            with torch.inference_mode():
                module(pixels)
        except _Captured:
            pass
        finally:
            handle.remove()
    if not captured:
        raise LayerError(f"layer {layer!r} did not run in the forward pass: pick a layer the model uses (vfs.list_layers)")
    return _first_tensor(captured[0], layer)


def to_grid(output: torch.Tensor, input_hw: Sequence[int], *, module: nn.Module | None = None, layer: str = "") -> torch.Tensor:
    """A layer output -> (B, C, h, w), given the model input's (H, W) (see the module docstring)."""
    height, width = int(input_hw[0]), int(input_hw[1])
    if output.ndim == 4:
        channels_last = _fits(output.shape[1:3], height, width) and not _fits(output.shape[2:4], height, width)
        return output.permute(0, 3, 1, 2) if channels_last else output  # (B, C, h, w)
    if output.ndim == 3:
        batch, tokens, channels = output.shape
        grid = _patch_grid(module, height, width)
        if grid is None or grid[0] * grid[1] > tokens:  # no patch size, or a later stage (swin) with fewer tokens
            grid = _infer_grid(tokens, height, width)
        if grid is None or grid[0] * grid[1] > tokens:
            raise LayerError(
                f"layer {layer!r} outputs {tokens} tokens, which do not hold a patch grid for a "
                f"{height}x{width} input: pick a layer that outputs (B, C, H, W) or (B, tokens, C)"
            )
        patches = output[:, tokens - grid[0] * grid[1] :, :]  # (B, h*w, C): class/register tokens dropped
        return patches.reshape(batch, grid[0], grid[1], channels).permute(0, 3, 1, 2)  # (B, C, h, w)
    if output.ndim == 2:
        return output[:, :, None, None]  # (B, C, 1, 1)
    raise LayerError(f"layer {layer!r} outputs shape {tuple(output.shape)}, which is not a feature grid: pick another layer")


def _fits(grid: Sequence[int], height: int, width: int) -> bool:
    """Whether (h, w) is (height, width) divided by one common stride, up to rounding."""
    rows, cols = int(grid[0]), int(grid[1])
    if not (1 <= rows <= height and 1 <= cols <= width):
        return False
    stride_y, stride_x = height / rows, width / cols
    return max(stride_y, stride_x) / min(stride_y, stride_x) <= 1 + 2 / min(rows, cols)


def _patch_grid(module: nn.Module | None, height: int, width: int) -> tuple[int, int] | None:
    """(h, w) patches for a transformer input, from the model's patch size (timm or torchvision)."""
    if module is None:
        return None
    embed = getattr(module, "patch_embed", None)
    size = getattr(embed, "patch_size", None) if embed is not None else getattr(module, "patch_size", None)
    if size is None:
        return None
    patch_h, patch_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if getattr(embed, "dynamic_img_pad", False):
        return math.ceil(height / patch_h), math.ceil(width / patch_w)
    return height // patch_h, width // patch_w


def _infer_grid(tokens: int, height: int, width: int) -> tuple[int, int] | None:
    """(h, w) with h * w = tokens - prefix (fewest prefix tokens, at most 16) and h / w = height / width."""
    for prefix in range(min(tokens, MAX_PREFIX_TOKENS + 1)):
        rows = round(math.sqrt((tokens - prefix) * height / width))
        if rows and (tokens - prefix) % rows == 0 and _fits((rows, (tokens - prefix) // rows), height, width):
            cols = (tokens - prefix) // rows
            if abs(rows / cols - height / width) <= 0.5 / min(rows, cols):
                return rows, cols
    return None


def _first_tensor(output: object, layer: str) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
    raise LayerError(f"layer {layer!r} outputs {type(output).__name__} holding no tensor: pick another layer")


def _chunks(images: Any, size: int) -> list[Any]:
    """Split a batch (list, array or tensor) into pieces of at most `size` images."""
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:  # (B, 3, H, W) or (B, H, W, 3)
        return [images[start : start + size] for start in range(0, len(images), size)]
    if isinstance(images, (list, tuple)) and len(images) > size:
        return [images[start : start + size] for start in range(0, len(images), size)]
    return [images]


def layer_shapes(
    module: nn.Module, *, input_size: int = 224, layers: list[str] | None = None
) -> dict[str, tuple[int, ...]]:
    """Layer name -> the per-image feature grid `(C, H, W)` it gives for an `input_size` square input.

    One forward pass of zeros with a hook on every layer (or on `layers` only). Layers whose output
    is no feature grid (or that never run) are left out unless named in `layers` (`LayerError`).
    """
    found = _record_shapes(module, input_size, layers)
    shapes = {name: grid for name, (_, grid) in found.items() if grid is not None}
    for name in layers or []:
        if name not in shapes:
            raise LayerError(f"layer {name!r} gives no feature grid (output {found.get(name, (None,))[0]}): pick another layer")
    return shapes


def _record_shapes(module: nn.Module, input_size: int, layers: list[str] | None) -> dict[str, _Recorded]:
    """Layer name -> (raw output shape without the batch dim, grid (C, H, W) or None), first call each."""
    names = layers if layers is not None else list_layers(module)
    targets = {name: get_layer(module, name) for name in names}
    found: dict[str, _Recorded] = {}
    caller = threading.get_ident()

    def make_hook(name: str) -> _Hook:
        def hook(_module: nn.Module, _inputs: tuple[Any, ...], output: object) -> None:
            if name in found or threading.get_ident() != caller:  # not another thread's pass, at another size
                return
            try:
                tensor = _first_tensor(output, name)
            except LayerError:
                found[name] = (type(output).__name__, None)
                return
            grid: tuple[int, ...] | None
            try:
                grid = tuple(to_grid(tensor, (input_size, input_size), module=module, layer=name).shape[1:])
            except LayerError:
                grid = None
            found[name] = (tuple(tensor.shape[1:]), grid)

        return hook

    parameter = next(module.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    with _one_pass_at_a_time(module):
        handles = [target.register_forward_hook(make_hook(name)) for name, target in targets.items()]
        was_training = module.training
        try:
            module.eval()
            with torch.inference_mode():
                module(torch.zeros(1, 3, input_size, input_size, device=device))  # (1, 3, S, S)
        finally:
            module.train(was_training)
            for handle in handles:
                handle.remove()
    return {name: found[name] for name in names if name in found}


def layers_command(argv: list[str]) -> int:
    """`python -m vfs layers MODEL [--input-size N]`: every layer with its output shape."""
    from vfs.models.loading import DEFAULT_MODEL, load_model

    parser = argparse.ArgumentParser(
        prog="python -m vfs layers",
        description="List a model's layers with their output shapes (one forward pass of zeros; weights do "
        "not change shapes, so random weights are used). '*' marks the suggested layers.",
    )
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL})")
    parser.add_argument("--input-size", type=positive_int, default=None, help="square input side in pixels (default: the model's crop)")
    args = parser.parse_args(argv)
    loaded = load_model(args.model, weights="random")
    size = args.input_size or loaded.preprocess.crop
    try:
        found = _record_shapes(loaded.module, size, None)
    except Exception as error:  # the model's own check (fixed input size...), reported plainly
        raise ModelError(f"{loaded.name} cannot run on a 3x{size}x{size} input ({type(error).__name__}: {error}); "
                         f"try --input-size {loaded.preprocess.crop}") from error
    print(f"{loaded.name}: {len(found)} layers, input 3x{size}x{size}; '*' = suggested layer, grid = C x H x W features")
    width = max((len(name) for name in found), default=10)
    for name, (raw, grid) in found.items():
        mark = "*" if name in loaded.layers else " "
        shape = "x".join(map(str, raw)) if isinstance(raw, tuple) else raw
        grid_text = "" if grid is None or grid == raw else f"  -> grid {'x'.join(map(str, grid))}"
        note = f"  ({loaded.layers[name]} at {loaded.preprocess.crop} px)" if name in loaded.layers else ""
        print(f"{mark} {name:<{width}}  {shape}{grid_text}{note}")
    return 0
