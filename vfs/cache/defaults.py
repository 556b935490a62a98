"""The app's offline default caches, built on first start (resumably) and reused afterwards.

Fashion-MNIST test set (10,000 images) through `efficientnet_lite0` at `blocks.4`, input 112 px:

- Grid: the images are 28 x 28, so 224 px input would only upsample them 8x. At 112 px (4x, the whole
  image: `resize=112`, no centre crop cutting off sleeves and hems) `blocks.4` (stride 16) gives a
  7 x 7 grid, the grid the paper searches and fine enough to paint a collar or a heel on.
  `blocks.5` at 112 px gives only 4 x 4; `blocks.3` (stride 16 too, 80 channels) sees less context.
- Semantic level: `blocks.4` is stage 5 of 7 (112 channels, after the last stride-16 stage), late
  enough to respond to parts (collars, soles, straps) rather than edges, early enough to stay local.
- Build time: 112 px costs about a quarter of 224 px per image, and the run stops at `blocks.4`.
  FIELD_NOTES gives 8-11 minutes for 10,000 images at 224 px through the whole network on 2 cores.
  Measured for this choice (both caches, `ensure_default_caches` on an empty root, 2 torch threads):
  60 s wall (about 180 images/s) with the machine nearly idle; 444 s when shared with several other
  jobs (load average about 10). Two such builds gave byte-identical shard files.
  Decoding and the 28 -> 112 px resize are cheap here: overlapping them with the model (the build's
  loader thread) measured the same as doing them in turn (145 vs 150 images/s on 2,048 images, the
  loader swapped for a serial one; a DataLoader worker process was slower, 114-132 images/s).
- Size: 10,000 x 7 x 7 x 112 float16 = 110 MB of features, kept in RAM by `open_cache`.

scikit-image's photos (19 images) through the same model and layer at its usual 224 px (resize 256,
crop 224) give a 14 x 14 grid: large photos deserve finer windows, and it builds in seconds.

The Compare tab's default pair: Fashion-MNIST again at `blocks.3` (stage 4 of 7, 80 channels, the
same stride 16, so the same 7 x 7 grid and the same painted cells as `blocks.4`): one model, two
depths, the question a researcher asks first ("does the deeper layer find parts or textures?").
It is built last, after the two caches the Search tab needs, so the first search waits no longer
than before; `ready(name, path)` is called as each cache is done, so the app lists each at once.
`COMPARE_PAIR` names the two that Compare preselects.

    paths = ensure_default_caches()  # {"fashion-mnist": Path, "skimage-photos": Path, "fashion-mnist-blocks3": Path}
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from vfs.cache.build import build_cache
from vfs.cache.progress import Progress
from vfs.datasets import open_dataset
from vfs.models.loading import DEFAULT_MODEL

MODEL = DEFAULT_MODEL  # the library's default model


@dataclass(frozen=True)
class DefaultCache:
    dataset: str              # dataset spec for open_dataset
    layer: str                # layer of MODEL
    input_size: int           # square side the model sees
    resize: int | None        # shorter side before the centre crop (None: the model's ratio)


DEFAULTS: dict[str, DefaultCache] = {  # built in this order
    "fashion-mnist": DefaultCache("fashion-mnist:test", "blocks.4", 112, 112),
    "skimage-photos": DefaultCache("skimage-photos", "blocks.4", 224, None),
    "fashion-mnist-blocks3": DefaultCache("fashion-mnist:test", "blocks.3", 112, 112),
}
COMPARE_PAIR = ("fashion-mnist", "fashion-mnist-blocks3")  # what the Compare tab preselects (left, right)


class _BuildOptions(TypedDict):
    """The keyword arguments of `build_cache` that differ between the default caches."""

    input_size: int
    resize: int | None
    progress: Progress


def folder_name(spec: DefaultCache) -> str:
    """The cache's folder under the root, e.g. "fashion-mnist-efficientnet_lite0-blocks.4-112"."""
    return f"{spec.dataset.split(':')[0].split('[')[0]}-{MODEL}-{spec.layer}-{spec.input_size}"


def default_root() -> Path:
    """`$VFS_CACHE_DIR`, or `~/.cache/vfs`."""
    return Path(os.environ.get("VFS_CACHE_DIR") or Path.home() / ".cache" / "vfs").expanduser()


def ensure_default_caches(root: Path | None = None, *,
                          progress: Callable[[float, str], None] | None = None,
                          ready: Callable[[str, Path], None] | None = None) -> dict[str, Path]:
    """Build the default caches that are missing or unfinished under `root`; return name -> cache folder.

    Finished caches are reused as they are (nothing is recomputed); an interrupted build resumes.
    `progress(fraction, message)` is called as the builds advance (fraction over all of them);
    `ready(name, path)` once per cache as soon as it is usable (those already built first).
    """
    from vfs.cache.reader import open_cache
    from vfs.errors import CacheError, CacheMismatchError
    from vfs.models.loading import load_model

    root = Path(root).expanduser() if root is not None else default_root()
    root.mkdir(parents=True, exist_ok=True)
    paths = {name: root / folder_name(spec) for name, spec in DEFAULTS.items()}
    missing = []
    for name, spec in DEFAULTS.items():
        try:
            open_cache(paths[name], model=MODEL, layer=spec.layer, in_memory=False)
        except CacheError:  # absent, unfinished, or built otherwise: build, resume or replace
            missing.append(name)
        else:
            if ready is not None:
                ready(name, paths[name])
    sizes = {name: len(open_dataset(DEFAULTS[name].dataset)) for name in missing}
    total, before = max(1, sum(sizes.values())), 0
    model = load_model(MODEL) if missing else None
    for name in missing:
        spec = DEFAULTS[name]

        def report(fraction: float, message: str, *, offset: int = before, share: int = sizes[name],
                   name: str = name) -> None:
            if progress is not None:
                progress((offset + fraction * share) / total, f"{name}: {message}")

        assert model is not None  # loaded above, since a cache is missing
        options: _BuildOptions = {"input_size": spec.input_size, "resize": spec.resize,
                                  "progress": report if progress else False}
        try:
            build_cache(model, spec.layer, spec.dataset, paths[name], **options)
        except CacheMismatchError:  # built by another version of these defaults: the app owns it, replace it
            build_cache(model, spec.layer, spec.dataset, paths[name], overwrite=True, **options)
        before += sizes[name]
        if ready is not None:
            ready(name, paths[name])
    if progress is not None:
        progress(1.0, "default caches ready")
    return paths
