"""Exact search over a cache held in the memory of a Dask cluster's workers.

    cache = vfs.open_cluster_cache("caches/imagenet-val", scheduler="tcp://10.0.0.5:8786")
    matches = vfs.search(query, weights, cache, k=10)      # the one-process answer, bit for bit
    best = vfs.best_windows(query, weights, cache)         # every image's best window

The cache (a folder or fsspec URL every worker can read, or a picklable callable that opens it, such
as `functools.partial(hub_caches.open, repo, revision=sha)`) is split by shard (block of S images)
over the workers. One "load shard" task per shard reads that shard once, channels-last features and
squared norms as `FeatureCache.load()` holds them, and its result stays in that worker's memory across
queries (a future the client holds). A query sends the search plan (the query's masked features,
a few hundred kB at most) in one task per worker; the task scores that worker's shards with the
same code as one process (`vfs.retrieval.window.top_windows` / `each_best`, each shard's first kernel
call padded so every image takes the same place in its call as in one process), and the client
merges the parts.

Faults: a worker that dies holds shards the scheduler still knows how to make, so it reloads them on
the other workers and reruns the lost scoring task there: the query still returns the exact answer,
later by the time it takes to read those shards again. Before each query the client asks the
scheduler for its workers (one round trip); when they changed, shards are re-placed evenly (newcomers
load their share from the cache, then the old copies are dropped) so a worker that joins is used from
that query on. Dask and distributed are imported only when a cluster is used (`vfs.cluster`).
"""

from __future__ import annotations

import pickle
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vfs.cache.reader import FeatureCache, open_cache
from vfs.cluster import CONNECT_TIMEOUT, connect, use_worker_threads, worker_address
from vfs.errors import CacheError, ClusterError, VFSError
from vfs.retrieval.kernels import WindowPlan
from vfs.retrieval.window import Candidates, each_best, kernel_chunk, top_windows


@dataclass(frozen=True)
class CacheOpener:
    """Opens a cache folder or fsspec URL, streamed (the shards are read one at a time)."""

    location: str  # a path or URL every worker can read

    def __call__(self) -> FeatureCache:
        return open_cache(self.location, in_memory=False)


@dataclass(frozen=True)
class Shard:
    """One block of a cache in a worker's memory: a search source of images [start, start + n)."""

    start: int  # index of the shard's first image in the cache
    stored: np.ndarray  # (n, H, W, C) features, channels-last as stored
    sq_norms: np.ndarray  # (n, H, W) float32 squared norm of each feature vector

    @property
    def shape(self) -> tuple[int, int, int, int]:
        n, height, width, channels = self.stored.shape
        return n, channels, height, width

    def __getitem__(self, index: slice) -> np.ndarray:
        return self.stored[index].transpose(0, 3, 1, 2)  # (n, C, H, W) view of channels-last


class ClusterCache:
    """A finished cache whose shards live in the memory of a Dask cluster's workers; a search source.

    `vfs.search` and `vfs.best_windows` score it on the workers. Everything else (labels, ids,
    thumbnails, `cache[i]`) is read here from a streamed `FeatureCache` of the same cache.
    """

    def __init__(self, cache: str | Path | Callable[[], FeatureCache], *, client: Any):
        self.opener = CacheOpener(str(cache)) if isinstance(cache, (str, Path)) else cache
        self.local = self.opener()  # (N, C, H, W), streamed: metadata and single reads
        self.client = client
        self.shape = self.local.shape
        self.blocks = self.local.meta.blocks
        self._token = uuid.uuid4().hex[:8]
        self._generation = 0
        self._shards: dict[int, Any] = {}  # block -> future of its Shard
        self._placed: dict[int, str] = {}  # block -> worker address asked to hold it
        self._workers: tuple[str, ...] = ()
        self._lock = threading.RLock()
        self.place()

    def __getattr__(self, name: str) -> Any:  # labels, ids, meta, thumbnail...: the local cache's
        if name == "local":
            raise AttributeError(name)
        return getattr(self.local, name)

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.local[index]

    def __len__(self) -> int:
        return int(self.shape[0])

    def __repr__(self) -> str:
        return (f"<ClusterCache {self.local.where}: {self.shape[0]} images in {self.blocks} shards on "
                f"{len(self._workers)} workers of {self.client.scheduler.address}>")

    def load(self) -> ClusterCache:
        """The shards are in the workers' memory already (kept for the app, which loads what it opens)."""
        return self

    @property
    def in_memory(self) -> bool:
        return False  # not in this process's memory

    def close(self) -> None:
        """Drop the shards from the workers' memory."""
        with self._lock:
            futures, self._shards = list(self._shards.values()), {}
        if futures:
            self.client.cancel(futures)

    # ---- placement

    def place(self) -> tuple[str, ...]:
        """Put every shard in some worker's memory, evenly; re-place when the workers changed. Returns them."""
        from distributed import wait

        with self._lock:
            workers = tuple(sorted(self.client.ncores()))
            if not workers:
                raise ClusterError(f"the scheduler at {self.client.scheduler.address} has no workers: "
                                   "start some with `dask worker ADDRESS`")
            if workers == self._workers and len(self._shards) == self.blocks:
                return workers
            holders = self._holders() if self._shards else {}
            target = spread(self.blocks, workers, holders)
            moved = {block: worker for block, worker in target.items()
                     if block not in self._shards or worker not in holders.get(block, ())}
            self._generation += 1
            fresh = {block: self.client.submit(load_shard, self.opener, block, workers=[worker],
                                               allow_other_workers=True, pure=False,
                                               key=f"vfs-shard-{self._token}-{block}-{self._generation}")
                     for block, worker in moved.items()}
            # distributed ships py.typed but leaves wait(fs, timeout, return_when) unannotated
            wait(list(fresh.values()))  # type: ignore[no-untyped-call]
            for future in fresh.values():
                if future.status == "error":
                    future.result()  # raises the worker's error (a CacheError naming the worker)
            stale = [self._shards[block] for block in fresh if block in self._shards]
            self._shards.update(fresh)
            self._placed = target
            self._workers = workers
            if stale:
                self.client.cancel(stale)
            return workers

    def _holders(self) -> dict[int, tuple[str, ...]]:
        """block -> the workers that hold its shard now (empty while the scheduler rebuilds it)."""
        found = self.client.who_has(list(self._shards.values()))
        by_key = {future.key: block for block, future in self._shards.items()}
        return {by_key[key]: tuple(addresses) for key, addresses in found.items() if key in by_key}

    # ---- queries (called by vfs.search and vfs.best_windows with a validated plan)

    def cluster_top_windows(self, plan: WindowPlan, indices: np.ndarray, *, excluded: np.ndarray, k: int,
                            per_image: int) -> Candidates:
        best = Candidates(k)
        for _, part_indices, scores, offsets in self._run(plan, indices, excluded=excluded, k=k,
                                                          per_image=per_image):
            best.add(part_indices, scores, offsets)
        return best

    def cluster_best_windows(self, plan: WindowPlan,
                             indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        parts = sorted(self._run(plan, indices, excluded=None, k=0, per_image=1), key=lambda part: part[0])
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
        return tuple(np.concatenate([part[i] for part in parts]) for i in (1, 2, 3))  # type: ignore[return-value]

    def _run(self, plan: WindowPlan, indices: np.ndarray, *, excluded: np.ndarray | None, k: int,
             per_image: int) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """One scoring task per worker over its shards; returns (start, indices, scores, offsets) per shard."""
        self.place()
        size = self.local.meta.shard_size
        chunk = kernel_chunk(plan, len(indices))
        bounds = np.searchsorted(indices, np.arange(self.blocks + 1) * size)  # (blocks + 1,)
        jobs: dict[str, list[tuple[np.ndarray, int, np.ndarray | None]]] = {}
        shards: dict[str, list[Any]] = {}
        with self._lock:
            for block in range(self.blocks):
                first, last = int(bounds[block]), int(bounds[block + 1])
                if first == last:
                    continue
                start = block * size
                part_excluded = None if excluded is None else excluded[
                    (excluded >= start) & (excluded < start + size)] - start
                worker = self._placed[block]
                jobs.setdefault(worker, []).append((indices[first:last] - start, first, part_excluded))
                shards.setdefault(worker, []).append(self._shards[block])
        futures = [self.client.submit(score_shards, plan, jobs[worker], shards[worker], k=k, per_image=per_image,
                                      chunk=chunk, workers=[worker], allow_other_workers=True, pure=False,
                                      key=f"vfs-score-{self._token}-{uuid.uuid4().hex[:8]}")
                   for worker in jobs]
        return [part for parts in self.client.gather(futures) for part in parts]


def spread(blocks: int, workers: tuple[str, ...], holders: dict[int, tuple[str, ...]]) -> dict[int, str]:
    """block -> worker, at most ceil(blocks / workers) each, keeping blocks where they are when possible."""
    quota = -(-blocks // len(workers))
    load = dict.fromkeys(workers, 0)
    target: dict[int, str] = {}
    for block in range(blocks):  # keep what already sits on a live worker with room
        kept = next((worker for worker in holders.get(block, ()) if load.get(worker, quota) < quota), None)
        if kept is not None:
            target[block] = kept
            load[kept] += 1
    for block in range(blocks):  # the rest to the least loaded, in address order
        if block not in target:
            worker = min(workers, key=lambda w: (load[w], workers.index(w)))
            target[block] = worker
            load[worker] += 1
    return target


# ---- what runs on the workers

_OPENED: dict[bytes, FeatureCache] = {}  # opener (pickled) -> the cache it opened, one per worker process
_OPENED_LOCK = threading.Lock()


def load_shard(opener: Callable[[], FeatureCache], block: int) -> Shard:
    """Read block `block` of the cache (verified) into memory, as `FeatureCache.load()` would hold it."""
    key = pickle.dumps(opener)
    try:
        with _OPENED_LOCK:
            if key not in _OPENED:
                _OPENED[key] = opener()
            cache = _OPENED[key]
        size = cache.meta.shard_size
        start, stop = block * size, min(cache.shape[0], (block + 1) * size)
        stored = np.ascontiguousarray(cache[start:stop].transpose(0, 2, 3, 1))  # (n, H, W, C), no copy
        sq_norms = np.ascontiguousarray(cache.sq_norms[start:stop], dtype=np.float32)  # (n, H, W)
    except (VFSError, OSError) as error:
        raise CacheError(f"worker {worker_address()} cannot read shard {block} of the cache ({error}); every "
                         "worker must reach the cache at the same path or URL (a shared filesystem, s3://...)"
                         ) from error
    return Shard(start=start, stored=stored, sq_norms=sq_norms)


def score_shards(plan: WindowPlan, jobs: list[tuple[np.ndarray, int, np.ndarray | None]], shards: list[Shard], *,
                 k: int, per_image: int, chunk: int) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Score a worker's shards: per shard (start, indices, scores, offsets), the top k or every image's best.

    Each job is (indices within the shard, position of the first in the whole search, excluded within
    the shard or None for every image's best window).
    """
    use_worker_threads()
    device = torch.device("cpu")
    parts = []
    for (indices, position, excluded), shard in zip(jobs, shards):
        if excluded is None:
            local, scores, offsets = each_best(plan, shard, indices, block=None, device=device, chunk=chunk,
                                               position=position)
        else:
            best = top_windows(plan, shard, indices, excluded=excluded, k=k, per_image=per_image, block=None,
                               device=device, chunk=chunk, position=position)
            local, scores, offsets = best.indices, best.scores, best.offsets
        parts.append((shard.start, local + shard.start, scores, offsets))
    return parts


def open_cluster_cache(cache: str | Path | Callable[[], FeatureCache], *,
                       scheduler: str | Any, timeout: float = CONNECT_TIMEOUT) -> ClusterCache:
    """Load a finished cache into the memory of the workers of a Dask cluster; returns a search source.

    `cache` is a folder or fsspec URL that every worker (and this process) can read, or a picklable
    callable returning a `FeatureCache`. `scheduler` is an address ("tcp://host:8786") or a
    `distributed.Client`. Returns once every shard is in some worker's memory.
    """
    return ClusterCache(cache, client=connect(scheduler, timeout=timeout))
