"""Exact search and cache builds on a real Dask cluster: separate processes on 127.0.0.1.

Oracles: `vfs.search` / `vfs.best_windows` in this process over the same cache, compared bit for bit
(indices, rows, cols, order, scores); a search split in parts == the whole search without a cluster;
a cache built on the cluster == the one built in one process, file for file, byte for byte.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

import vfs
from vfs.cache.build import _finish, _open_or_create, _versions, _write_block
from vfs.cache.format import SCHEMA, CacheMeta
from vfs.cluster import connect
from vfs.datasets import ImageItem
from vfs.errors import ClusterError
from vfs.retrieval import numba_kernel
from vfs.retrieval.cluster import CacheOpener, load_shard, open_cluster_cache
from vfs.retrieval.command import search_command
from vfs.retrieval.window import Candidates, best_windows, each_best, plan_search, search

distributed = pytest.importorskip("distributed", reason="needs dask's distributed (requirements.txt)")
ROOT = Path(__file__).resolve().parents[1]
COUNT, CHANNELS, GRID, SHARD_SIZE = 300, 16, (5, 6), 61  # 5 shards, the last one short; 61: odd places


def write_cache(out: Path, features: np.ndarray, *, shard: int = SHARD_SIZE) -> Path:
    """A finished cache of given channels-last features (N, H, W, C) with labels i % 3; no model needed."""
    count, height, width, channels = features.shape
    meta = CacheMeta(schema=SCHEMA, model="synthetic", weights_id="none", layer="none",
                     preprocess={"size": 8, "crop": 8, "mean": [0.5] * 3, "std": [0.25] * 3}, input_size=8,
                     grid=(height, width), channels=channels,
                     dtype=features.dtype.name, count=count, shard_size=shard, batch_size=8, codec="lz4",
                     checksum=True, thumbnail=8, dataset="synthetic", dataset_fingerprint="synthetic",
                     label_names=("a", "b", "c"),
                     arrays=("features", "thumbnails", "sq_norms", "labels", "image_sizes", "ids"),
                     versions=_versions(), created="", finished=None, status="building")
    picture = Image.new("RGB", (8, 8))
    with zarr.config.set({"array.write_empty_chunks": True}):
        group, meta = _open_or_create(out, meta, overwrite=True)
        for block in range(meta.blocks):
            rows = range(block * shard, min(count, (block + 1) * shard))
            items = [ImageItem(picture, row % 3, str(row)) for row in rows]
            thumbnails = np.zeros((len(items), 8, 8, 3), np.uint8)
            _write_block(group, meta, block, items, torch.from_numpy(features[rows.start:rows.stop]), thumbnails)
        _finish(group, meta)
    return out


def random_features(rng, dtype) -> np.ndarray:
    """(COUNT, H, W, C) post-ReLU-like features, with a planted copy of image 7 at index 250."""
    values = np.maximum(rng.standard_normal((COUNT, *GRID, CHANNELS)), 0).astype(dtype)
    values[250] = values[7]
    return values


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("cluster-caches")
    return {dtype: write_cache(root / dtype, random_features(rng, dtype)) for dtype in ("float16", "float32")}


@pytest.fixture(scope="module")
def cluster():
    """A scheduler and two worker processes (one thread each) on 127.0.0.1."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as local, Client(local) as client:
        yield local, client


def masks() -> dict[str, np.ndarray]:
    full = np.ones(GRID, np.float32)
    square = np.zeros(GRID, np.float32)
    square[1:4, 2:5] = 1
    cell = np.zeros(GRID, np.float32)
    cell[2, 3] = 0.5
    shape_l = np.zeros(GRID, np.float32)
    shape_l[0:3, 0] = 1
    shape_l[2, 0:2] = 0.25
    large = np.zeros(GRID, np.float32)
    large[0:4, 1:6] = 1
    return {"full": full, "4x5": large, "3x3": square, "one cell": cell, "L": shape_l}


@pytest.fixture(params=["torch", "numba"])
def kernel(request, monkeypatch):
    """The one-process oracle runs through the torch path and the numba path; the workers use their default."""
    if request.param == "numba" and not numba_kernel.AVAILABLE:
        pytest.skip(reason="numba is not installed (or VFS_NUMBA=0): the torch path alone is tested")
    monkeypatch.setattr("vfs.retrieval.kernels.USE_NUMBA", request.param == "numba")
    return request.param


# ---------------------------------------------------------------- parts == whole, no cluster


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("mask", ["full", "4x5", "3x3", "one cell", "L"])
def test_search_in_parts_equals_whole_search_bit_for_bit(kernel, caches, dtype, mask):
    """Shards scored with their place in the whole search give the whole search's bits.

    Broken on purpose once (no front padding in `scan`): the full mask over float32 through torch's
    matrix-vector product then differs in the last bits for images that change place in their call.
    """
    local = vfs.open_cache(caches[dtype], in_memory=True)
    opener = CacheOpener(str(caches[dtype]))
    plan, indices, device = plan_search(np.asarray(local[7], np.float32), masks()[mask], local, subset=None,
                                    device=None)
    whole = each_best(plan, local, indices, block=None, device=device)
    shards = [load_shard(opener, block) for block in range(local.meta.blocks)]
    parts = [each_best(plan, shard, np.arange(shard.shape[0]), block=None, device=device, chunk=COUNT,
                       position=shard.start) for shard in shards]
    assert np.array_equal(whole[0], np.concatenate([part[0] + shard.start for part, shard in zip(parts, shards)]))
    for i in (1, 2):
        assert np.array_equal(whole[i], np.concatenate([part[i] for part in parts])), mask


def test_candidates_merge_of_parts_is_the_top_k():
    """Merging per-part top k lists gives the top k of everything, ties to the lower index then offset."""
    scores = np.array([0.5, 0.9, 0.9, 0.1, 0.9, 0.7], np.float32)
    indices, offsets = np.arange(6), np.array([3, 1, 0, 2, 2, 5])
    whole = Candidates(3)
    whole.add(indices, scores, offsets)
    merged = Candidates(3)
    for part in (slice(0, 2), slice(2, 4), slice(4, 6)):
        best = Candidates(3)
        best.add(indices[part], scores[part], offsets[part])
        merged.add(best.indices, best.scores, best.offsets)
    assert list(merged.ranked()) == list(whole.ranked()) == [(1, np.float32(0.9), 1), (2, np.float32(0.9), 0),
                                                              (4, np.float32(0.9), 2)]


# ---------------------------------------------------------------- on the cluster


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_cluster_search_equals_one_process(cluster, caches, dtype):
    """Workers and this process use the default kernels: float32 with the full and 4x5 masks goes
    through torch, the rest through numba (when installed)."""
    _, client = cluster
    local = vfs.open_cache(caches[dtype], in_memory=True)
    remote = open_cluster_cache(caches[dtype], scheduler=client)
    try:
        assert remote.shape == local.shape and len(remote._shards) == remote.blocks == 5
        query = np.asarray(local[7], np.float32)  # (C, H, W)
        subset = np.flatnonzero(local.labels != 1)
        for name, weights in masks().items():
            for options in ({"k": 10}, {"k": 7, "exclude": [7, 100]}, {"k": 12, "subset": subset},
                            {"k": 9, "per_image": 3, "exclude": [7]}, {"k": COUNT * 3, "per_image": 2}):
                assert search(query, weights, remote, **options) == search(query, weights, local, **options), (
                    name, options)
            for subset_option in (None, subset, [299, 0, 64, 65]):
                ours, theirs = (best_windows(query, weights, source, subset=subset_option)
                                for source in (remote, local))
                for field in ("indices", "scores", "rows", "cols"):
                    assert np.array_equal(getattr(ours, field), getattr(theirs, field)), (name, field)
                assert (ours.height, ours.width) == (theirs.height, theirs.width)
        found = search(query, masks()["full"], remote, k=2)
        assert [m.index for m in found] == [7, 250] and found[0].score == pytest.approx(1.0, abs=1e-6)
        assert remote.labels.tolist() == local.labels.tolist() and np.array_equal(remote[3], local[3])
    finally:
        remote.close()


def test_unreachable_scheduler_is_a_clear_error_within_the_timeout():
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(ClusterError, match=address.replace(".", r"\.")):
        connect(address, timeout=2)
    assert time.monotonic() - started < 30  # a bound against a hang, not a speed check
    assert isinstance(ClusterError("x"), ConnectionError)


def start_worker(scheduler: str, **environ: str) -> subprocess.Popen:
    """A `dask worker` process (no nanny, one thread) that joins `scheduler`, with `environ` added."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), **environ)
    return subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", scheduler, "--nthreads", "1",
                             "--no-nanny", "--host", "127.0.0.1", "--no-dashboard"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for_workers(client, count: int, *, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(client.ncores()) != count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the cluster has {len(client.ncores())} workers, expected {count}")
        time.sleep(0.2)


def test_worker_that_joins_is_used_then_killed_mid_query_still_exact(cluster, caches):
    local_cluster, client = cluster
    local = vfs.open_cache(caches["float16"], in_memory=True)
    remote = open_cluster_cache(caches["float16"], scheduler=client)
    query, weights = np.asarray(local[7], np.float32), masks()["3x3"]
    expected = search(query, weights, local, k=15, exclude=[7])
    worker = start_worker(local_cluster.scheduler_address)
    try:
        wait_for_workers(client, 3)
        assert search(query, weights, remote, k=15, exclude=[7]) == expected
        pids = client.run(os.getpid)
        joined = next(address for address, pid in pids.items() if pid == worker.pid)
        held = {key for key, where in client.who_has(list(remote._shards.values())).items() if joined in where}
        assert held, "the worker that joined holds no shard after the next query"

        gather = remote.client.gather

        def kill_then_gather(futures, *args, **kwargs):  # the scoring tasks are out: kill a worker holding shards
            os.kill(worker.pid, signal.SIGKILL)
            return gather(futures, *args, **kwargs)

        remote.client.gather = kill_then_gather
        try:
            assert search(query, weights, remote, k=15, exclude=[7]) == expected
        finally:
            remote.client.gather = gather
        wait_for_workers(client, 2)
        assert search(query, weights, remote, k=15, exclude=[7]) == expected
    finally:
        worker.kill()
        worker.wait()
        remote.close()


def test_search_command_on_a_cache_here_and_on_the_cluster(cluster, caches, capsys):
    """`python -m vfs search CACHE --index --box --json`, in this process and with --scheduler: vfs.search's answer."""
    local_cluster, _ = cluster
    local = vfs.open_cache(caches["float16"], in_memory=True)
    weights = vfs.box_to_grid((2, 2, 6, 7), (8, 8), GRID, preprocess=local.meta.make_preprocess())
    expected = search(np.asarray(local[7], np.float32), weights, local, k=4, exclude=[7, 250], per_image=2)
    assert len({(m.height, m.width) for m in expected}) == 1 and expected[0].height < GRID[0]  # a real box
    argv = [str(caches["float16"]), "--index", "7", "--box", "2,2,6,7", "-k", "4", "--exclude", "250",
            "--per-image", "2", "--json"]
    for extra in ([], ["--scheduler", local_cluster.scheduler_address]):
        assert search_command(argv + extra) == 0
        found = json.loads(capsys.readouterr().out)["matches"]
        assert [(m["index"], m["row"], m["col"], m["score"]) for m in found] == [
            (m.index, m.row, m.col, m.score) for m in expected]
        assert [m["label"] for m in found] == [local.label_names[m.index % 3] for m in expected]


def test_search_command_bad_input_is_a_clear_error(caches, capsys):
    from vfs.__main__ import main

    cache = str(caches["float16"])
    assert main(["search", cache, "--index", str(COUNT), "-k", "3"]) == 1
    assert "outside the cache's 300 images" in capsys.readouterr().err
    assert main(["search", cache, "--index", "1", "--box", "1,2,3"]) == 1
    assert "top,left,bottom,right" in capsys.readouterr().err
    assert main(["search", cache, "--index", "1", "--exclude", "a,b"]) == 1
    assert "comma-separated" in capsys.readouterr().err


def test_app_library_with_a_scheduler_searches_on_the_cluster(cluster, caches, tmp_path):
    """`python -m app --scheduler`: the app's search (handlers.run_search) gives the one-process outcome."""
    from app.handlers import run_search
    from app.library import CacheLibrary
    from app.state import Query, SearchOptions
    from vfs.retrieval.cluster import ClusterCache

    local_cluster, _ = cluster
    (tmp_path / "caches").mkdir()
    (tmp_path / "caches" / "synthetic").symlink_to(caches["float32"])
    mask = np.zeros((8, 8), bool)
    mask[1:6, 2:7] = True
    query = Query(cache_key="synthetic", image=np.zeros((8, 8, 3), np.uint8), mask=mask, index=7)
    outcomes = []
    for scheduler in (None, local_cluster.scheduler_address):
        library = CacheLibrary(tmp_path / "caches", hub=False, scheduler=scheduler)
        library.refresh()
        outcome = run_search(library, query, SearchOptions(k=6, only_label="b"))
        assert isinstance(library.open("synthetic"), ClusterCache) == (scheduler is not None)
        outcomes.append(outcome)
    here, there = outcomes
    assert here.matches == there.matches and len(here.matches) == 6
    for field in ("indices", "scores", "rows", "cols"):  # the box plot's per-image best scores too
        assert np.array_equal(getattr(here.best, field), getattr(there.best, field))
    library.open("synthetic").close()


BUILD = {"layer": "blocks.3", "dataset": "fashion-mnist:test[:48]", "input_size": 64, "shard_size": 16,
         "batch_size": 8}
needs_fashion_mnist = pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                                         reason="needs `apt-get install dataset-fashion-mnist`")


def build_here(out: Path, **options) -> Path:
    """The one-process oracle, with the workers' one torch thread (convolutions round differently with more)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return vfs.build_cache("efficientnet_lite0", out=out, progress=False, **{**BUILD, **options})
    finally:
        torch.set_num_threads(threads)


@needs_fashion_mnist
def test_cluster_build_is_byte_identical_and_resumes(cluster, tmp_path):
    """Blocks built by the workers (one torch thread each) == a one-process build with one torch thread."""
    local_cluster, _ = cluster
    one = build_here(tmp_path / "one")
    two = vfs.build_cache("efficientnet_lite0", out=tmp_path / "two", progress=False,
                          scheduler=local_cluster.scheduler_address, **BUILD)
    assert_same_cache(one, two)

    group = zarr.open_group(two, mode="r+")  # as if the build had stopped before blocks 0 and 2 were done
    attrs = dict(group.attrs["vfs_cache"], status="building", finished=None)
    group.attrs.update({"vfs_cache": attrs})
    progress = group["progress"][:]
    progress[[0, 2]] = 0
    group["progress"][:] = progress
    for shard in (two / "features" / "c").glob("[02]/**/*"):  # features/c/BLOCK/0/0/0
        if shard.is_file():
            shard.unlink()
    done = []
    vfs.build_cache("efficientnet_lite0", out=two, progress=lambda fraction, message: done.append(fraction),
                    scheduler=local_cluster.scheduler_address, **BUILD)
    assert done[0] == pytest.approx(16 / 48) and done[-1] == 1.0  # resumed at block 1 done, two blocks built
    assert_same_cache(one, two)


@needs_fashion_mnist
def test_cluster_build_worker_killed_mid_block_is_redone_elsewhere(cluster, tmp_path):
    """A worker SIGKILLed in the middle of a block: the block is built again on another worker, nothing is
    left torn or stray, and the cache is still byte-identical to a one-process build."""
    from stalling import StallingDataset

    local_cluster, client = cluster
    data = StallingDataset(vfs.open_dataset(BUILD["dataset"]), shard_size=8, at=5)  # 6 blocks of 8
    one = build_here(tmp_path / "one", dataset=data, shard_size=8)
    marks = tmp_path / "marks"
    marks.mkdir()
    worker = start_worker(local_cluster.scheduler_address, VFS_TEST_STALL=str(marks))  # stalls at image 5 of a block
    killed: list[str] = []

    def kill_when_stalled() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and worker.poll() is None:
            stalled = list(marks.iterdir())
            if stalled:
                os.kill(worker.pid, signal.SIGKILL)
                killed.append(stalled[0].read_text())
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_when_stalled)
    try:
        wait_for_workers(client, 3)
        watcher.start()
        two = vfs.build_cache("efficientnet_lite0", out=tmp_path / "two", progress=False,
                              scheduler=local_cluster.scheduler_address, **{**BUILD, "dataset": data, "shard_size": 8})
    finally:
        worker.kill()
        worker.wait()
        watcher.join()
    assert killed, "the stalling worker never started a block, so nothing was killed mid-block"
    assert_same_cache(one, two)  # the killed worker's block included; no temporary file left behind
    wait_for_workers(client, 2)


@needs_fashion_mnist
def test_cluster_build_dataset_the_workers_cannot_read_or_see_differently(cluster, tmp_path):
    """The dataset spec must name the same files on every worker: missing or other files are a DatasetError
    naming the worker, raised before a block is written."""
    from vfs.cache.cluster_build import BuildJob, build_block
    from vfs.errors import DatasetError

    _, client = cluster
    for name, count in (("photos", 3), ("other", 4)):  # another file list (a folder's fingerprint: names, sizes)
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.new("RGB", (20, 20), (40 + i, 0, 0)).save(tmp_path / name / f"{i}.png")
    cache = vfs.build_cache("efficientnet_lite0", out=tmp_path / "cache", progress=False,
                            **{**BUILD, "dataset": f"folder:{tmp_path / 'photos'}"})
    meta = vfs.open_cache(cache).meta
    before = {p: p.read_bytes() for p in cache.rglob("*") if p.is_file()}
    for spec, message in ((f"folder:{tmp_path / 'missing'}", "cannot read the dataset"),
                          (f"folder:{tmp_path / 'other'}", "finds another dataset")):
        job = BuildJob(model="efficientnet_lite0", layer=BUILD["layer"], dataset=spec, out=str(cache),
                       preprocess=meta.make_preprocess(), batch_size=8, device="cpu")
        with pytest.raises(DatasetError, match=rf"worker tcp://127\.0\.0\.1:\d+ {message}"):
            client.submit(build_block, job, 0, pure=False).result()
    assert {p: p.read_bytes() for p in cache.rglob("*") if p.is_file()} == before  # nothing written


def assert_same_cache(one: Path, two: Path) -> None:
    """Every file byte for byte, but the times and library versions in the attributes."""
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    for name in files:
        if name.name != "zarr.json" or name.parent != Path("."):
            assert (one / name).read_bytes() == (two / name).read_bytes(), name
    attrs = [dict(zarr.open_group(path, mode="r").attrs) for path in (one, two)]
    for value in attrs:
        value["vfs_cache"] = {k: v for k, v in value["vfs_cache"].items() if k not in ("created", "finished")}
    assert attrs[0] == attrs[1]
