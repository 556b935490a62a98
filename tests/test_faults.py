"""The fault suite: each input that once gave a plausible wrong answer (or a raw traceback) gets a
correct answer or a clear error. One test per case; each was run against the code before its fix
and failed there (see the README's "Reliability" section). Hub faults (HTTP 5xx) are in
test_hub_caches.py, next to the Hub test server.

Small and fast: tiny hand-made models and synthetic images, except the build-process cases that run
the real CLI (efficientnet_lite0 on 16 Fashion-MNIST images).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import vfs
import vfs.__main__
from vfs.cache.build import build_cache
from vfs.cache.commands import verify_command
from vfs.cache.reader import open_cache
from vfs.datasets import ArrayDataset
from vfs.errors import (
    CacheBusyError,
    CacheCorruptError,
    CacheIncompleteError,
    MaskError,
    ModelError,
    NonFiniteError,
    OptionError,
    SearchError,
    VFSError,
)
from vfs.models.preprocess import Preprocess
from vfs.retrieval.window import best_windows, search

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist").is_dir()
needs_fmnist = pytest.mark.skipif(not FMNIST, reason="needs `apt-get install dataset-fashion-mnist`")
PREPROCESS = Preprocess(size=16, crop=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def tiny_model(*, scale: float = 1.0) -> vfs.LoadedModel:
    """Two convolutions with seeded weights: 16 px in, (8, 4, 4) features out of layer "2"."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1))
    with torch.no_grad():
        net[2].weight.mul_(scale)
    return vfs.load_model("tiny", module=net, preprocess=PREPROCESS)


def tiny_images(count: int, seed: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(count)]
    return ArrayDataset(images, name=f"random-{count}-{seed}", labels=[i % 3 for i in range(count)],
                        label_names=["a", "b", "c"])


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory) -> Path:
    """12 images in blocks of 4, uncompressed: every block file of an array has the same size."""
    out = tmp_path_factory.mktemp("faults") / "tiny"
    return build_cache(tiny_model(), "2", tiny_images(12), out, shard_size=4, batch_size=4, codec="none",
                       progress=False)


def copy_of(cache: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(cache, tmp_path / "copy"))


# ---------------------------------------------------------------- non-finite numbers


def test_nonfinite_query_region_is_refused():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    weights = np.ones((3, 3), np.float32)
    for value in (np.nan, np.inf):
        query = features[0].copy()
        query[1, 2, 2] = value
        with pytest.raises(NonFiniteError, match="query's features hold NaN or inf"):
            search(query, weights, features, k=3)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_inf_in_a_dataset_image_is_named_not_dropped(dtype, layout):
    rng = np.random.default_rng(1)
    features = rng.standard_normal((40, 4, 5, 5)).astype(dtype)
    features[17, 2, 4, 4] = np.inf  # one cell of one image, outside some windows
    features[30, 0, 0, 0] = np.nan
    if layout == "channels_last":
        features = np.ascontiguousarray(features.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    weights = np.zeros((5, 5), np.float32)
    weights[1:3, 1:3] = 1
    query = features[3].astype(np.float32)
    with pytest.raises(NonFiniteError, match=r"image\(s\) \[17, 30\].*exclude=\[17, 30\]"):
        search(query, weights, features, k=10)
    with pytest.raises(NonFiniteError, match=r"\[17, 30\]"):
        best_windows(query, weights, features)
    matches = search(query, weights, features, k=10, exclude=[17, 30])  # as the message says: a full answer
    assert len(matches) == 10 and not {17, 30} & {m.index for m in matches}
    assert all(np.isfinite(m.score) for m in matches)
    best = best_windows(query, weights, features, subset=[i for i in range(40) if i not in (17, 30)])
    assert np.isfinite(best.scores).all()


def test_float16_overflow_is_refused_at_build(tmp_path):
    model = tiny_model(scale=1e5)  # features reach about 1e5, above float16's 65,504
    with pytest.raises(NonFiniteError, match=r"image\(s\) \[\d.*65,504.*--dtype float32"):
        build_cache(model, "2", tiny_images(6), tmp_path / "half", shard_size=4, progress=False)
    cache = open_cache(build_cache(model, "2", tiny_images(6), tmp_path / "full", dtype="float32", shard_size=4,
                                   progress=False))
    assert np.isfinite(cache[:]).all() and np.abs(cache[:]).max() > 65504


# ---------------------------------------------------------------- zero query, grid mismatch


def test_all_zero_query_region_says_what_to_try():
    rng = np.random.default_rng(2)
    features = np.maximum(rng.standard_normal((6, 4, 5, 5)), 0).astype(np.float32)
    query = features[0].copy()
    query[:, :2, :2] = 0  # no activation under the mask (post-ReLU features do this)
    weights = np.zeros((5, 5), np.float32)
    weights[:2, :2] = 1
    with pytest.raises(MaskError, match="all zero under the mask.*larger region.*another layer"):
        search(query, weights, features)
    features[4, :, 1:3, 1:3] = 0  # a zero window in the dataset scores 0 (documented), never NaN
    best = best_windows(features[1], weights, features)
    assert np.isfinite(best.scores).all()


def test_query_of_another_grid_is_refused_naming_both(tiny_cache):
    cache = open_cache(tiny_cache)
    big = tiny_model()
    query = vfs.FeatureExtractor(big.module, "2")(torch.rand(1, 3, 32, 32))[0]  # (8, 8, 8): 32 px input
    weights = np.zeros((8, 8), np.float32)
    weights[:2, :2] = 1
    with pytest.raises(SearchError, match=r"grid is 8x8 but the source's is 4x4 \(built at 16 px input\)"):
        search(query, weights, cache)
    with pytest.raises(SearchError, match="any_grid=True"):
        best_windows(query, weights, cache)
    assert len(search(query, weights, cache, k=3, any_grid=True)) == 3  # asked for explicitly


# ---------------------------------------------------------------- position-bound blocks, metadata


@pytest.mark.parametrize("array", ["features", "sq_norms", "labels", "thumbnails"])
def test_block_copied_over_another_is_detected(tiny_cache, tmp_path, array, capsys):
    from vfs.cache.format import block_key

    copy = copy_of(tiny_cache, tmp_path)
    source = open_cache(tiny_cache)._arrays[array].array
    first, second = copy / block_key(source, 0), copy / block_key(source, 1)
    if first.stat().st_size != second.stat().st_size:
        pytest.skip("compressed to different sizes: the size check alone catches this copy")
    shutil.copyfile(second, first)
    with pytest.raises(CacheCorruptError, match=rf"'{array}' block file '{block_key(source, 0)}'.*another block"):
        open_cache(copy, in_memory=False).verify()
    if array == "features":  # also when loading into memory, and when reading one image
        with pytest.raises(CacheCorruptError, match="another block"):
            open_cache(copy, in_memory=True)
        with pytest.raises(CacheCorruptError, match="another block"):
            open_cache(copy, in_memory=False)[0]  # noqa: B018
    assert vfs.__main__.main(["verify", str(copy)]) == 1
    assert f"'{block_key(source, 0)}'" in capsys.readouterr().err


def test_cache_without_block_digests_still_verifies_and_says_what_it_lacks(tiny_cache, tmp_path, capsys):
    copy = copy_of(tiny_cache, tmp_path)
    meta = json.loads((copy / "zarr.json").read_text())
    del meta["attributes"]["block_xxh3"]  # as written before digests existed
    (copy / "zarr.json").write_text(json.dumps(meta))
    assert not open_cache(copy).positions_bound
    assert verify_command([str(copy)]) == 0
    assert "cannot be detected; rebuild it" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["group-invalid", "array-deleted", "array-invalid"])
def test_damaged_metadata_names_the_file_and_the_way_out(tiny_cache, tmp_path, damage):
    copy = copy_of(tiny_cache, tmp_path)
    file = {"group-invalid": "zarr.json", "array-deleted": "sq_norms/zarr.json",
            "array-invalid": "features/zarr.json"}[damage]
    if damage == "array-deleted":
        (copy / file).unlink()
    else:
        (copy / file).write_text('{"zarr_format": 3, "node_type": "gro')  # cut short
    with pytest.raises(CacheCorruptError, match=rf"metadata file '{file}' .*restore that file.*download"):
        open_cache(copy)


def test_narrow_excepts_let_bugs_through(tiny_cache, monkeypatch):
    import vfs.cache.blocks as blocks

    def broken(*args, **kwargs):
        raise MemoryError  # not damage: must not be reported as "damaged: rebuild it"

    monkeypatch.setattr(blocks, "read_shard", broken)
    with pytest.raises(MemoryError):
        open_cache(tiny_cache, in_memory=True)


def test_the_apps_cache_list_skips_a_damaged_cache_but_lets_a_bug_through(tiny_cache, tmp_path, monkeypatch):
    from app.library import CacheLibrary

    root = tmp_path / "caches"
    shutil.copytree(tiny_cache, root / "good")
    shutil.copytree(tiny_cache, root / "damaged")
    (root / "damaged" / "zarr.json").write_text("{not json")
    library = CacheLibrary(root, hub=False)
    assert [entry.key for entry in library.refresh()] == ["good"]  # damage: skipped (and logged)

    def broken(*args, **kwargs):
        raise MemoryError  # a bug or exhaustion, not damage: must not be skipped as a bad cache

    monkeypatch.setattr(vfs, "open_cache", broken)
    with pytest.raises(MemoryError):
        library.refresh()


# ---------------------------------------------------------------- builds: killed, concurrent, durable


def _run(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)


BUILD = ("'efficientnet_lite0', 'blocks.3', 'fashion-mnist:test[:16]', {out!r}, input_size=32, shard_size=8, "
         "batch_size=8, thumbnail=48, checksum=False, codec='none', progress=False")


@needs_fmnist
def test_build_killed_at_start_is_unfinished_and_its_resume_command_works(tmp_path):
    out = tmp_path / "my caches" / "fmnist $HOME"  # spaces and a dollar sign, non-default options
    died = _run(f"""
import os, signal
import vfs.cache.build as cb
cb._create_digests = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # killed while creating arrays
cb.build_cache({BUILD.format(out=str(out))})
""")
    assert died.returncode == -9, died.stderr
    with pytest.raises(CacheIncompleteError, match="unfinished cache: 0 of 16 images done; resume with") as raised:
        open_cache(out)
    command = str(raised.value).split("resume with: ", 1)[1].removesuffix(" (same command)")
    assert "--thumbnail 48" in command and "--no-checksum" in command and "--codec none" in command
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "vfs"] and argv[argv.index("--out") + 1] == str(out)
    resumed = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    cache = open_cache(out)
    cache.verify()
    assert (cache.meta.thumbnail, cache.meta.checksum, cache.meta.codec, cache.meta.count) == (48, False, "none", 16)
    assert cache.positions_bound


@needs_fmnist
def test_second_build_on_the_same_out_refuses_at_once(tmp_path):
    out, started, go = tmp_path / "cache", tmp_path / "started", tmp_path / "go"
    script = f"""
import time
from pathlib import Path
import vfs.cache.build as cb
original = cb._write_block
def slow(*args, **kwargs):
    Path({str(started)!r}).touch()
    while not Path({str(go)!r}).exists():
        time.sleep(0.05)
    original(*args, **kwargs)
cb._write_block = slow
cb.build_cache({BUILD.format(out=str(out))})
"""
    first = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not started.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started.exists(), first.stderr.read() if first.poll() is not None else "no block started"
        with pytest.raises(CacheBusyError, match=rf"being built right now by pid {first.pid} .*another --out"):
            build_cache("efficientnet_lite0", "blocks.3", "fashion-mnist:test[:16]", out, input_size=32,
                        shard_size=8, batch_size=8, thumbnail=48, checksum=False, codec="none", progress=False)
        with pytest.raises(CacheIncompleteError, match=f"being built right now by pid {first.pid}"):
            open_cache(out)
        go.touch()
        assert first.wait(timeout=240) == 0, first.stderr.read()
    finally:
        go.touch()
        first.kill()
        first.wait()
    open_cache(out).verify()  # nothing corrupted
    assert not (out / ".vfs-build.lock").exists()


def test_every_file_a_build_writes_is_synced_before_it_is_renamed(tmp_path, monkeypatch):
    import os

    events: list[tuple[str, object]] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                  real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda src, dst: (events.append(("replace", str(src))),
                                                         real_replace(src, dst))[1])
    build_cache(tiny_model(), "2", tiny_images(8), tmp_path / "cache", shard_size=4, progress=False)
    renamed = [path for kind, path in events if kind == "replace"]
    assert len(renamed) > 20  # every array's block files and every metadata file
    for path in renamed:
        synced = events.index(("fsync", path)) if ("fsync", path) in events else None
        assert synced is not None and synced < events.index(("replace", path)), path


# ---------------------------------------------------------------- options and inputs


def test_bad_build_options_are_project_errors(tmp_path, capsys):
    for options in ({"batch_size": 0}, {"shard_size": -1}, {"thumbnail": 1.5}, {"codec": "gzip"},
                    {"dtype": "int8"}, {"input_size": 0}):
        with pytest.raises(OptionError) as raised:
            build_cache(tiny_model(), "2", tiny_images(2), tmp_path / "x", progress=False, **options)
        assert isinstance(raised.value, VFSError) and isinstance(raised.value, ValueError)
    with pytest.raises(SystemExit) as exited:  # argparse: exit 2 with a message, no traceback
        vfs.__main__.main(["index", "--layer", "2", "--dataset", "x", "--out", str(tmp_path), "--batch-size", "0"])
    assert exited.value.code == 2 and "not a positive integer" in capsys.readouterr().err


def test_rerank_region_validates_as_search_does():
    from vfs.analysis.decompose import rerank_region

    rng = np.random.default_rng(3)
    features = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    weights = np.ones((3, 3), np.float32)
    for options, message in (({"exclude": [-1]}, "outside"), ({"exclude": [6]}, "outside"),
                             ({"k": True}, "k must"), ({"k": 2.5}, "k must"), ({"block": 0}, "block must")):
        with pytest.raises(SearchError, match=message):
            rerank_region(features[0], weights, features, **options)
        if "k" not in options and "block" not in options:
            with pytest.raises(SearchError, match=message):
                search(features[0], weights, features, **options)
    features[4, 1, 1, 1] = np.inf
    with pytest.raises(NonFiniteError, match=r"\[4\]"):
        rerank_region(features[0], weights, features)


def test_feature_extractor_preprocesses_float_pixels_in_unit_range():
    model = tiny_model()
    extractor = vfs.FeatureExtractor(model.module, "2", preprocess=Preprocess(size=24, crop=16, mean=(0.5,) * 3,
                                                                                std=(0.25,) * 3))
    pixels = torch.rand(2, 3, 30, 40)  # what torchvision's ToTensor() gives: [0, 1], any size
    features = extractor(pixels)
    assert features.shape == (2, 8, 4, 4)  # resized and cropped to 16 px, not run at 30x40
    torch.testing.assert_close(features, extractor(extractor.preprocess(pixels), preprocessed=True))
    with pytest.raises(ModelError, match=r"preprocessed=True"):
        extractor(extractor.preprocess(pixels))  # normalised model input without saying so
    with pytest.raises(ModelError, match="preprocess="):
        vfs.FeatureExtractor(model.module, "2")([np.zeros((16, 16, 3), np.uint8)])
