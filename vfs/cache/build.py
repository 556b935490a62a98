"""`build_cache`: extract a layer's features of a whole dataset into a Zarr v3 cache; resumable.

The build goes block by block (a block is `shard_size` images, the unit of every array's files).
Each block's arrays are written whole, and only then is the block's progress row written (the byte
size of each file, also used later to tell a missing or emptied file from a good one). Killed at any
point, even with SIGKILL, the same command resumes at the first block without a progress row and
rewrites it. Batches never straddle a block, so a resumed build runs the model on exactly the same
batches as an uninterrupted one and the result is identical, bit for bit, except for the times.

Every file is written durably (synced, then renamed: `vfs.cache.durable`), a build holds a lock on its
folder so a second build of the same `out` refuses at once, and the cache's attributes (status
"building") are the first thing written, so a folder left by a build killed as it started is an
unfinished cache with its resume command. Features are checked before they are stored: NaN or inf,
or values above float16's largest (65,504) in a float16 cache, stop the build with `NonFiniteError`
naming the images, instead of a cache that would rank them wrongly.

Decoding, preprocessing and thumbnails run in a thread one block ahead of the model (PIL and torch
release the GIL). Measured on 2 cores for Fashion-MNIST (cheap to decode) this is neutral: 145 images/s
vs 150 doing the same steps in turn, and a DataLoader worker process was slower (114-132); the thread
is kept for folders of large JPEGs, where decoding costs as much as the model (not measured).
"""

from __future__ import annotations

import queue
import shutil
import threading
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import zarr
from PIL import Image

from vfs.cache.durable import LOCK, DurableStore, build_lock
from vfs.cache.format import (
    ARRAYS,
    CODEC,
    CODECS,
    SCHEMA,
    SHARD,
    SHARDED,
    THUMBNAIL,
    CacheMeta,
    block_file,
    block_key,
    compressors,
    digest,
    thumbnail_size,
    timestamp,
)
from vfs.cache.progress import Progress, Reporter
from vfs.cache.shard_file import write_shard
from vfs.datasets import ImageDataset, ImageItem, open_dataset
from vfs.errors import NAMED, CacheMismatchError, DatasetError, NonFiniteError, OptionError

if TYPE_CHECKING:
    from vfs.models.loading import LoadedModel

FLOAT16_MAX = 65504.0  # the largest finite float16



def build_cache(model: LoadedModel | str, layer: str, dataset: ImageDataset | str, out: str | Path, *,
                dtype: str = "float16", batch_size: int = 32, input_size: int | None = None,
                resize: int | None = None, codec: str = CODEC, shard_size: int = SHARD, checksum: bool = True,
                thumbnail: int = THUMBNAIL, progress: Progress = True, overwrite: bool = False,
                scheduler: Any = None, device: str | torch.device | None = None) -> Path:
    """Build the cache of `dataset`'s features at `layer` of `model` into the folder `out`; return `out`.

    `model` is a `LoadedModel` or a name for `load_model`; `dataset` an `ImageDataset` or a spec for
    `open_dataset`. `input_size` sets the square side the model sees; the shorter side is first resized
    to `resize` (default: in the model's own resize/crop ratio; `resize=input_size` keeps whole squares).
    An unfinished cache at `out` built the same way is resumed; a finished one is returned as is; one
    built differently raises `CacheMismatchError` unless `overwrite`. `progress` is True for a progress bar, False for none, or `callable(fraction, message)`.
    `device` ("cuda") runs the model there in float16 autocast, fed pinned batches made one block ahead.
    `scheduler` (a Dask scheduler address or `distributed.Client`) builds the blocks on that cluster's
    workers (see `vfs.cache.cluster_build`); `out` and the dataset must then be readable there too, and
    `device` is where the workers run the model.
    """
    from vfs.models.features import FeatureExtractor
    from vfs.models.loading import load_model

    check_options(dtype=dtype, batch_size=batch_size, input_size=input_size, resize=resize, codec=codec,
                  shard_size=shard_size, thumbnail=thumbnail)
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise CacheMismatchError(f"{out} is a file, not a folder: pick an empty or new folder for the cache")
    if not overwrite and out.is_dir() and not (out / "zarr.json").exists() and _contents(out):
        raise CacheMismatchError(f"{out} exists and is not a feature cache: pick an empty or new folder")
    loaded = load_model(model) if isinstance(model, str) else model
    data = open_dataset(dataset) if isinstance(dataset, str) else dataset
    if len(data) == 0:
        raise DatasetError(f"dataset {data.name!r} has no images: nothing to build")
    preprocess = loaded.preprocess
    crop = input_size or preprocess.crop
    preprocess = replace(preprocess, size=resize or round(crop * preprocess.size / preprocess.crop), crop=crop)
    extractor = FeatureExtractor(loaded.module, layer, batch_size=batch_size, device=device)
    pin = extractor.device.type == "cuda"  # pinned batches copy to the GPU while it computes
    with torch.inference_mode():
        probe = extractor(torch.zeros(1, 3, preprocess.crop, preprocess.crop, device=device))  # (1, C, H, W)
    _, channels, height, width = probe.shape
    arrays = tuple(name for name in ARRAYS if (name != "domains" or data.has_domains)
                   and (name != "boxes" or data.has_boxes))
    meta = CacheMeta(
        schema=SCHEMA, model=loaded.name, weights_id=loaded.weights_id, layer=layer,
        preprocess=_fields(preprocess), input_size=preprocess.crop, grid=(height, width), channels=channels,
        dtype=dtype, count=len(data), shard_size=shard_size, batch_size=batch_size, codec=codec, checksum=checksum,
        thumbnail=thumbnail, dataset=data.name, dataset_fingerprint=data.fingerprint(),
        label_names=tuple(data.label_names), arrays=arrays, versions=_versions(),
        created=timestamp(), finished=None, status="building", model_args=loaded.loads_with)
    with build_lock(out), zarr.config.set({"array.write_empty_chunks": True}):
        group, meta = _open_or_create(out, meta, overwrite=overwrite)
        if meta.status == "complete":
            return out
        written = np.asarray(_array(group, "progress")[:])  # (blocks, arrays) bytes written, 0 where not yet
        done = cast(np.ndarray, written.any(axis=1))  # (blocks,): numpy types any() of a 2-d array as maybe a scalar
        todo = [block for block in range(meta.blocks) if not done[block]]
        reporter = Reporter(progress, total=meta.count, done=meta.count - meta.images_in(todo), name=out.name)
        try:
            if scheduler is not None:
                from vfs.cache.cluster_build import BuildJob, build_on_cluster

                job = BuildJob(model=model if isinstance(model, str) else loaded, layer=layer,
                               dataset=dataset if isinstance(dataset, str) else data, out=str(out.resolve()),
                               preprocess=preprocess, batch_size=batch_size, device=str(device or "cpu"))
                build_on_cluster(job, todo, scheduler=scheduler, reporter=reporter, meta=meta)
            for block, items, images, thumbnails in _prefetch(data, meta, preprocess, todo if scheduler is None else [],
                                                              batch_size=batch_size, pin=pin):
                features = _extract(extractor, images, dtype, first=block * meta.shard_size,
                                    reporter=reporter)  # (n, H, W, C)
                _write_block(group, meta, block, items, features, thumbnails)
        finally:
            reporter.close()
        _finish(group, meta)
    return out


def check_options(*, dtype: str, batch_size: int, input_size: int | None, resize: int | None, codec: str,
                  shard_size: int, thumbnail: int) -> None:
    """Every build option in its valid range, or an `OptionError` saying which and what is valid."""
    if dtype not in ("float16", "float32"):
        raise OptionError(f"dtype {dtype!r} is not supported: use float16 (default) or float32")
    if codec not in CODECS:
        raise OptionError(f"unknown codec {codec!r}: use {', '.join(CODECS)}")
    sizes = {"batch_size": batch_size, "shard_size": shard_size, "thumbnail": thumbnail,
             "input_size": input_size, "resize": resize}
    for name, value in sizes.items():
        if value is None and name in ("input_size", "resize"):
            continue
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise OptionError(f"{name} must be a positive integer, got {value!r}: "
                              f"leave it out for the default, or pass 1 or more")


def _contents(folder: Path) -> list[Path]:
    """What a folder holds besides the build lock (nothing when it does not exist yet)."""
    return [path for path in folder.iterdir() if path.name != LOCK] if folder.is_dir() else []


def _finish(group: zarr.Group, meta: CacheMeta) -> None:
    """Mark a cache whose every block is written complete, with the byte size and hash of every block file."""
    nbytes = np.asarray(_array(group, "progress")[:])  # (blocks, arrays)
    if not nbytes.all():
        raise RuntimeError(f"internal: blocks {np.flatnonzero(~nbytes.all(axis=1)).tolist()} are not written")
    digests = np.asarray(_array(group, "digests")[:])  # (blocks, arrays), -1 where a block was written before digests existed
    for block, column in zip(*np.nonzero(digests < 0)):
        data = block_file(group.store, block_key(_array(group, meta.arrays[column]), int(block)))
        digests[block, column] = -1 if data is None else digest(data)
    finished = replace(meta, status="complete", finished=timestamp())
    group.attrs.update({"vfs_cache": finished.to_attrs(),
                        "block_nbytes": {name: nbytes[:, i].tolist() for i, name in enumerate(meta.arrays)},
                        "block_xxh3": {name: digests[:, i].tolist() for i, name in enumerate(meta.arrays)}})


def _open_or_create(out: Path, meta: CacheMeta, *, overwrite: bool) -> tuple[zarr.Group, CacheMeta]:
    """Open the cache at `out` to resume it (after checking it was built the same way), or create it.

    The caller holds the folder's build lock. A cache whose arrays were not all created yet (killed as it
    started: no block can be done) is started afresh.
    """
    store = DurableStore(out)
    if (out / "zarr.json").exists():
        group = zarr.open_group(store, mode="r+")
        attrs = cast("dict[str, Any] | None", group.attrs.get("vfs_cache"))  # the JSON CacheMeta.to_attrs wrote
        if attrs is not None and not overwrite and "progress" in group:
            found = CacheMeta.from_attrs(attrs)
            differ = {key: (found.identity().get(key), value)
                      for key, value in meta.identity().items() if found.identity().get(key) != value}
            if differ:
                lines = "; ".join(f"{key}: cache has {old!r}, asked for {new!r}" for key, (old, new) in differ.items())
                raise CacheMismatchError(f"{out} holds a cache built differently ({lines}); use another --out "
                                         "folder, or pass overwrite=True to replace it")
            if found.batch_size != meta.batch_size:
                warnings.warn(f"resuming {out} with batch size {meta.batch_size}, it was started with "
                              f"{found.batch_size}: features will differ in rounding from an uninterrupted build",
                              stacklevel=3)
            if "digests" not in group:  # started before block digests existed: those blocks get them at the end
                _create_digests(group, meta)
            return group, found
    if _contents(out):
        if not overwrite and not (out / "zarr.json").exists():
            raise CacheMismatchError(f"{out} exists and is not a feature cache: pick an empty or new folder")
        for path in _contents(out):  # everything but the lock this build holds
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    group = zarr.create_group(store, attributes={"vfs_cache": meta.to_attrs()})  # first: a killed build is "unfinished"
    n, rows, (height, width) = meta.count, meta.shard_size, meta.grid
    shapes: dict[str, tuple[tuple[int, ...], str | type[str]]] = {  # name -> (shape, dtype)
              "features": ((n, height, width, meta.channels), meta.dtype),
              "thumbnails": ((n, meta.thumbnail, meta.thumbnail, 3), "uint8"),
              "sq_norms": ((n, height, width), "float32"), "labels": ((n,), "int64"),
              "image_sizes": ((n, 2), "int32"), "ids": ((n,), str), "domains": ((n,), str), "boxes": ((n,), str)}
    for name in meta.arrays:
        shape, dtype = shapes[name]
        block = (rows,) + shape[1:]
        codec = meta.codec if name == "features" else "zstd"
        group.create_array(name, shape=shape, dtype=dtype, chunks=(1,) + shape[1:] if name in SHARDED else block,
                           shards=block if name in SHARDED else None, fill_value=-1 if name == "labels" else None,
                           compressors=compressors(codec, dtype=np.dtype(dtype), checksum=meta.checksum))
    _create_digests(group, meta)
    group.create_array("progress", shape=(meta.blocks, len(meta.arrays)), chunks=(1, len(meta.arrays)),
                       dtype="int64", fill_value=0, compressors=compressors("none", dtype=np.dtype("int64")))
    return group, meta  # "progress" last: a group without it has no block done and is started afresh


def _create_digests(group: zarr.Group, meta: CacheMeta) -> None:
    group.create_array("digests", shape=(meta.blocks, len(meta.arrays)), chunks=(1, len(meta.arrays)),
                       dtype="int64", fill_value=-1, compressors=compressors("none", dtype=np.dtype("int64")))


def _prefetch(data: ImageDataset, meta: CacheMeta, preprocess: Any, blocks: list[int], *,
              batch_size: int, pin: bool = False) -> Iterator[tuple[int, list[ImageItem], list[torch.Tensor], np.ndarray]]:
    """Yield (block, items, batches of model input, thumbnails) per block, made one block ahead in a thread."""
    # a block's (block, items, batches, thumbnails); the loader's error, raised here; None: no more blocks
    results: queue.Queue[tuple[int, list[ImageItem], list[torch.Tensor], np.ndarray] | BaseException | None]
    results = queue.Queue(maxsize=1)
    stop = threading.Event()

    def load() -> None:
        try:
            for block in blocks:
                got = block_inputs(data, meta, preprocess, block, batch_size=batch_size, stop=stop, pin=pin)
                if got is None:
                    return
                results.put((block, *got))
        except BaseException as error:  # handed to the consumer, raised there
            results.put(error)
        results.put(None)

    thread = threading.Thread(target=load, name="vfs-cache-loader", daemon=True)
    thread.start()
    try:
        while (got := results.get()) is not None:
            if isinstance(got, BaseException):
                raise got
            yield got
    finally:
        stop.set()
        while thread.is_alive():  # unblock a loader waiting on a full queue
            try:
                results.get(timeout=0.1)
            except queue.Empty:
                pass


def block_inputs(data: ImageDataset, meta: CacheMeta, preprocess: Any, block: int, *, batch_size: int,
                 stop: threading.Event | None = None,
                 pin: bool = False) -> tuple[list[ImageItem], list[torch.Tensor], np.ndarray] | None:
    """(items, batches of model input, thumbnails) of block `block`; None when `stop` is set midway."""
    start, end = meta.span(block)
    items, images = [], []
    for first in range(start, end, batch_size):  # batches never cross a block
        batch = [data[i] for i in range(first, min(end, first + batch_size))]
        items += batch
        pixels = preprocess([item.image for item in batch])  # (B, 3, crop, crop)
        images.append(pixels.pin_memory() if pin else pixels)  # pinned: copied to a GPU without blocking
        if stop is not None and stop.is_set():
            return None
    thumbnails = np.stack([_thumbnail(item.image, meta.thumbnail) for item in items])  # (n, T, T, 3)
    return items, images, thumbnails


@torch.inference_mode()
def _extract(extractor: Any, images: list[torch.Tensor], dtype: str, *, first: int,
             reporter: Reporter | None) -> torch.Tensor:
    """Batches of model input (images `first`, `first + 1`...) -> stored features (n, H, W, C) in the cache dtype."""
    parts: list[torch.Tensor] = []
    for batch in images:
        features = extractor(batch).cpu()  # (B, C, H, W) float32
        check_storable(features, dtype, first=first + sum(len(part) for part in parts))
        parts.append(features.to(getattr(torch, dtype)))  # (B, C, H, W)
        if reporter is not None:
            reporter.advance(len(batch))
    return torch.cat(parts).permute(0, 2, 3, 1).contiguous()  # (n, H, W, C)


def check_storable(features: torch.Tensor, dtype: str, *, first: int) -> None:
    """Features (B, C, H, W) of images `first`... must be finite, and fit float16 in a float16 cache."""
    flat = features.reshape(len(features), -1)  # (B, C*H*W)
    finite = torch.isfinite(flat).all(dim=1)  # (B,)
    if not bool(finite.all()):
        bad = [first + int(i) for i in torch.nonzero(~finite).ravel()[:NAMED]]
        raise NonFiniteError(f"the model gives NaN or inf features for image(s) {bad}: they could never be "
                             "searched; check those images and the model (its weights, its input size), or "
                             "pick another layer")
    if dtype == "float16":
        peak = flat.abs().amax(dim=1)  # (B,)
        if bool((peak > FLOAT16_MAX).any()):
            bad = [first + int(i) for i in torch.nonzero(peak > FLOAT16_MAX).ravel()[:NAMED]]
            raise NonFiniteError(f"features of image(s) {bad} reach {float(peak.max()):,.0f}, above 65,504, the "
                                 "largest float16: a float16 cache would store inf and rank them wrongly; build "
                                 "with --dtype float32 (dtype='float32')")


def _write_block(group: zarr.Group, meta: CacheMeta, block: int, items: list[ImageItem],
                 features: torch.Tensor, thumbnails: np.ndarray) -> None:
    """Write every array's block, then the block's progress row (the byte size of each file)."""
    start = block * meta.shard_size
    stop = start + len(items)
    sizes = np.array([[item.image.height, item.image.width] for item in items], dtype=np.int32)  # (n, 2)
    values = {
        "features": features.numpy(),  # (n, H, W, C)
        "sq_norms": features.float().pow(2).sum(-1).numpy(),  # (n, H, W), from the stored values
        "labels": np.array([item.label for item in items], dtype=np.int64),
        "image_sizes": sizes,
        "thumbnails": thumbnails,  # (n, T, T, 3)
        "ids": np.array([item.id for item in items], dtype=object),
        "domains": np.array([item.domain or "" for item in items], dtype=object),
        "boxes": np.array([_boxes_json(item.boxes) for item in items], dtype=object),
    }
    for name in meta.arrays:
        if name not in SHARDED or not write_shard(_array(group, name), block, values[name]):  # fast path: local shards
            _array(group, name)[start:stop] = values[name]
    files = [block_file(group.store, block_key(_array(group, name), block)) or b"" for name in meta.arrays]  # read back
    _array(group, "digests")[block] = np.array([digest(data) for data in files], dtype=np.int64)
    _array(group, "progress")[block] = np.array([len(data) for data in files], dtype=np.int64)  # last: the block is done


def _array(group: zarr.Group, name: str) -> zarr.Array[Any]:
    """The cache's array `name` (zarr types a group member as `Array | Group`; every member we make is an array)."""
    return cast("zarr.Array[Any]", group[name])


def _thumbnail(image: Image.Image, side: int) -> np.ndarray:
    """(side, side, 3) uint8: the image scaled to fit (never up), top-left aligned, zero padded."""
    height, width = thumbnail_size(image.height, image.width, side)
    small = image if (height, width) == (image.height, image.width) else image.resize(
        (width, height), Image.Resampling.LANCZOS)
    canvas = np.zeros((side, side, 3), dtype=np.uint8)
    canvas[:height, :width] = np.asarray(small.convert("RGB"))
    return canvas


def _boxes_json(boxes: np.ndarray | None) -> str:
    return "" if boxes is None else str(np.asarray(boxes, dtype=float).reshape(-1, 4).tolist())


def _fields(preprocess: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(preprocess).items()}


def _versions() -> dict[str, str]:
    import numcodecs

    from vfs import __version__

    return {"vfs": __version__, "torch": torch.__version__, "zarr": zarr.__version__,
            "numpy": np.__version__, "numcodecs": numcodecs.__version__}


