"""Any model from the command line: the one place where `index`, `search` and `experiment` read
`--model`, `--weights` and `--module` and build the model.

    --model resnet50 --weights simclr.safetensors      a known architecture with your weights
    --module mypkg.nets:moco_resnet50 --weights m.pt   your own network: `factory()` returns an
                                                       nn.Module (or a ready `LoadedModel`)

`--module` imports `pkg.mod` (the current folder is on the path, as for `python -m`) and calls
`factory()` with no arguments. Weights are read as `load_model` reads them: safetensors, or
`torch.load(weights_only=True)`; `--weights random` keeps random weights on purpose.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from vfs.errors import ModelError
from vfs.models.loading import DEFAULT_MODEL, LoadedModel, load_model

MODULE_FORM = "pkg.module:factory"


def add_model_arguments(parser: argparse.ArgumentParser, *, default: str | None = DEFAULT_MODEL) -> None:
    """Add `--model`, `--weights` and `--module` to `parser` (`default=None`: the model is optional)."""
    group = parser.add_argument_group("model")
    shown = f"default {default}" if default else "default: the model the cache was built with"
    group.add_argument("--model", default=default, help=f"model name for vfs.load_model ({shown}); "
                       "with --module, the name recorded in the cache")
    group.add_argument("--weights", default=None,
                       help="state dict file (.safetensors, .pt/.pth read with weights_only), or 'random'")
    group.add_argument("--module", default=None, metavar=MODULE_FORM,
                       help="your own network: import pkg.module and call factory() -> nn.Module or LoadedModel")


def model_from_arguments(args: argparse.Namespace, *, device: str = "cpu") -> LoadedModel:
    """The model that `--model`/`--weights`/`--module` name (see `add_model_arguments`)."""
    if args.module is None:
        if args.model is None:
            raise ModelError("no model given: pass --model NAME (and --weights PATH), or --module " + MODULE_FORM)
        return load_model(args.model, weights=args.weights, device=device)
    made = load_factory(args.module)()
    if isinstance(made, LoadedModel):
        if args.weights is not None:
            made = load_model(made.name, module=made.module, weights=args.weights, preprocess=made.preprocess)
        made.module.to(device).eval()
        return replace(made, loads_with=_module_options(args, named=False))
    if not isinstance(made, nn.Module):
        raise ModelError(f"{args.module}() returned {type(made).__name__}: it must return a torch nn.Module "
                         "(or a vfs LoadedModel)")
    named = args.model not in (None, DEFAULT_MODEL)
    loaded = load_model(args.model if named else args.module, module=made, weights=args.weights, device=device)
    return replace(loaded, loads_with=_module_options(args, named=named))


def _module_options(args: argparse.Namespace, *, named: bool) -> tuple[str, ...]:
    """The options that load a `--module` model again from any folder's command line (weights as an
    absolute path), for the resume command a cache prints."""
    options = ["--module", args.module] + (["--model", args.model] if named else [])
    if args.weights is not None:
        options += ["--weights", "random" if args.weights == "random" else str(Path(args.weights).expanduser().resolve())]
    return tuple(options)


def load_factory(spec: str) -> Callable[..., Any]:
    """The callable named by `pkg.module:factory` (imported from the current folder or the path)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ModelError(f"--module {spec!r} is not of the form {MODULE_FORM}, e.g. mynets.simclr:resnet50")
    if str(Path.cwd()) not in sys.path and "" not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelError(f"cannot import {module_name!r} for --module {spec}: {error}. Run from the folder that "
                         "holds it, or add that folder to PYTHONPATH") from error
    factory = getattr(module, attribute, None)
    if not callable(factory):
        names = sorted(n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise ModelError(f"{module_name} has no callable {attribute!r}; its callables: {', '.join(names) or 'none'}")
    return factory
