"""Build a cache's blocks on a Dask cluster: `build_cache(..., scheduler=ADDRESS)`, `python -m vfs index --scheduler`.

The client creates the cache folder (or opens it to resume) exactly as a one-process build does,
then submits one task per unfinished block. A worker opens the dataset and loads the model once
per process, preprocesses its block's images, runs the model on the same batches as one process
would, and writes the block the same way (`vfs.cache.build._write_block`: whole shard files
written atomically, then the block's progress row). A worker killed mid-block leaves no progress
row for it, and the scheduler runs the task again on another worker, which rewrites the block; a
build stopped altogether resumes with the same command, skipping finished blocks.

The features are byte-identical to a one-process build run with the same torch thread count as
each worker (`--threads`): convolutions round differently with another thread count (measured here
on efficientnet_lite0). Workers use `--nthreads` threads each, so give the local build the same.
`out` and the dataset must be at the same path (or URL) on every worker: a worker that cannot
read them fails the build with an error naming the worker and the path, and so does a worker that
finds another dataset there (its fingerprint differs from the one the client recorded in the cache),
so no block is ever written from other images.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, cast

import torch
import zarr

from vfs.cache.build import _extract, _write_block, block_inputs
from vfs.cache.durable import DurableStore
from vfs.cache.format import CacheMeta
from vfs.cache.progress import Reporter
from vfs.cluster import connect, use_worker_threads, worker_address
from vfs.errors import CacheError, CacheMismatchError, DatasetError, VFSError


@dataclass(frozen=True)
class BuildJob:
    """What a worker needs to build any block of one cache."""

    model: Any  # a model name (loaded on the worker) or a LoadedModel (sent as is)
    layer: str  # layer name
    dataset: Any  # a dataset spec (opened on the worker) or an ImageDataset (sent as is)
    out: str  # absolute path of the cache folder, the same on every worker
    preprocess: Any  # the Preprocess the images go through
    batch_size: int  # images per forward pass
    device: str  # where the model runs on the worker ("cpu", "cuda")


def build_on_cluster(job: BuildJob, blocks: list[int], *, scheduler: Any, reporter: Reporter,
                     meta: CacheMeta) -> None:
    """Build `blocks` of the cache at `job.out` on the cluster, reporting each block as it finishes."""
    from distributed import as_completed

    client = connect(scheduler)
    if not client.ncores():
        raise CacheError(f"the Dask scheduler at {client.scheduler.address} has no workers: start some with "
                         "`dask worker ADDRESS`")
    if client.dashboard_link:
        print(f"building {len(blocks)} blocks on {len(client.ncores())} workers; dashboard: {client.dashboard_link}",
              flush=True)
    shared = client.scatter(job, broadcast=True) if not isinstance(job.model, str) else job  # a model: once per worker
    futures = [client.submit(build_block, shared, block, pure=False, key=f"vfs-build-{meta.dataset_fingerprint[:8]}-{block}")
               for block in blocks]
    try:
        for future in as_completed(futures):  # type: ignore[no-untyped-call]  # unannotated __init__
            reporter.advance(future.result())  # a worker's error is raised here, naming the worker
    finally:
        client.cancel(futures)


_LOADED: dict[tuple[str | int, ...], Any] = {}  # per worker process: (model, layer, batch, device) -> extractor; ("dataset", spec, fingerprint) -> dataset
_LOCK = threading.Lock()


def build_block(job: BuildJob, block: int) -> int:
    """Extract and write block `block` of the cache at `job.out`; return its image count (runs on a worker)."""
    use_worker_threads()
    where = worker_address()
    try:
        group = zarr.open_group(DurableStore(job.out), mode="r+")  # synced, then renamed, as a local build
        meta = CacheMeta.from_attrs(cast("dict[str, Any]", group.attrs["vfs_cache"]))  # the JSON the client wrote
    except (OSError, KeyError, ValueError) as error:
        raise CacheError(f"worker {where} cannot open the cache being built at {job.out} ({type(error).__name__}: "
                         f"{error}); build into a folder that every worker sees at the same path (a shared "
                         "filesystem)") from error
    extractor, weights_id = _extractor(job)
    if weights_id != meta.weights_id:
        raise CacheMismatchError(f"worker {where} loads {meta.model} with weights {weights_id!r}, the cache was "
                                 f"started with {meta.weights_id!r}: give every worker the same weights file")
    data = _dataset(job.dataset, where, meta.dataset_fingerprint)
    with torch.inference_mode():
        inputs = block_inputs(data, meta, job.preprocess, block, batch_size=job.batch_size)
        assert inputs is not None  # None only when a `stop` event is set, and none is given here
        items, images, thumbnails = inputs
        features = _extract(extractor, images, meta.dtype, first=block * meta.shard_size, reporter=None)  # (n, H, W, C)
    with zarr.config.set({"array.write_empty_chunks": True}):
        _write_block(group, meta, block, items, features, thumbnails)
    return len(items)


def _extractor(job: BuildJob) -> tuple[Any, str]:
    from vfs.models.features import FeatureExtractor
    from vfs.models.loading import load_model

    key = (job.model if isinstance(job.model, str) else id(job.model), job.layer, job.batch_size, job.device)
    with _LOCK:
        if key not in _LOADED:
            loaded = load_model(job.model, device=job.device) if isinstance(job.model, str) else job.model
            extractor = FeatureExtractor(loaded.module, job.layer, batch_size=job.batch_size, device=job.device)
            _LOADED[key] = (extractor, loaded.weights_id)
        return _LOADED[key]


def _dataset(dataset: Any, where: str, fingerprint: str) -> Any:
    """The dataset `dataset` names, opened once per worker process and checked against the cache's fingerprint."""
    from vfs.datasets import open_dataset

    if not isinstance(dataset, str):
        return dataset  # the client's own object, sent as is
    with _LOCK:
        if ("dataset", dataset, fingerprint) not in _LOADED:
            try:
                data = open_dataset(dataset)
                found = data.fingerprint()
            except (VFSError, OSError) as error:
                raise DatasetError(f"worker {where} cannot read the dataset {dataset!r} ({error}); the dataset must "
                                   "be at the same path on every worker (a shared filesystem, or installed on each "
                                   "machine)") from error
            if found != fingerprint:
                raise DatasetError(f"worker {where} finds another dataset at {dataset!r} than the one this cache "
                                   f"is built from (fingerprint {found[:12]}, the cache's {fingerprint[:12]}): give "
                                   "every worker the same files at the same path")
            _LOADED["dataset", dataset, fingerprint] = data
        return _LOADED["dataset", dataset, fingerprint]
