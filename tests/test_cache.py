"""Feature caches on small real data: efficientnet_lite0 over 64 Fashion-MNIST images and the skimage photos.

Oracles: features written == features extracted directly; metadata round trips; a build killed with
SIGKILL and resumed == an uninterrupted build; every kind of damage is named; search over a
streamed cache == search over the same values in memory.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

import vfs
from vfs.cache.build import build_cache
from vfs.cache.format import block_count, thumbnail_size
from vfs.cache.reader import open_cache
from vfs.datasets import ArrayDataset, FolderDataset, open_dataset
from vfs.errors import CacheCorruptError, CacheIncompleteError, CacheMismatchError

SPEC, LAYER, SIZE, SHARD, BATCH = "fashion-mnist:test[:64]", "blocks.3", 64, 16, 8
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                                reason="needs `apt-get install dataset-fashion-mnist`")


@pytest.fixture(scope="module")
def model():
    return vfs.load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def built(model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("caches") / "fmnist"
    return build_cache(model, LAYER, SPEC, out, input_size=SIZE, shard_size=SHARD, batch_size=BATCH, progress=False)


def _damaged_copy(built: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    return copy


def test_features_written_equal_features_extracted(model, built):
    cache = open_cache(built, in_memory=False)
    data = open_dataset(SPEC)
    preprocess = cache.meta.make_preprocess()
    extractor = vfs.FeatureExtractor(model.module, LAYER)
    expected = torch.cat([extractor(preprocess([data[i].image for i in range(first, first + BATCH)]))
                          for first in range(0, len(data), BATCH)]).to(torch.float16)  # (64, C, H, W)
    assert cache.shape == tuple(expected.shape) == (64, 80, 4, 4)
    np.testing.assert_array_equal(cache[:], expected.numpy())
    stored = expected.float().permute(0, 2, 3, 1)  # (64, H, W, C)
    np.testing.assert_allclose(cache.sq_norms[:], stored.pow(2).sum(-1).numpy(), rtol=1e-6)  # summation order
    np.testing.assert_array_equal(cache[7], expected[7].numpy())
    np.testing.assert_array_equal(cache[[9, 3, 40]], expected[[9, 3, 40]].numpy())
    assert cache[10:20].flags.c_contiguous is False  # a transposed view of channels-last storage
    assert torch.from_numpy(cache[10:20]).permute(0, 2, 3, 1).is_contiguous()


@pytest.mark.parametrize(("count", "shard_size"), [(1, 1), (7, 3), (9, 3), (10, 4), (5, 8)])
def test_block_spans_cover_every_image_once(built, count, shard_size):
    meta = dataclasses.replace(open_cache(built).meta, count=count, shard_size=shard_size)
    spans = [meta.span(b) for b in range(meta.blocks)]
    assert [i for start, stop in spans for i in range(start, stop)] == list(range(count))  # in order, once each
    assert meta.blocks == block_count(count, shard_size) == len({i // shard_size for i in range(count)})
    rng = np.random.default_rng(count)
    for _ in range(5):
        blocks = [int(b) for b in rng.permutation(meta.blocks)[: rng.integers(0, meta.blocks + 1)]]
        assert meta.images_in(blocks) == sum(1 for i in range(count) if i // shard_size in blocks)


def test_metadata_round_trip(model, built):
    cache = open_cache(built, model="efficientnet_lite0", layer=LAYER)
    data = open_dataset(SPEC)
    assert cache.in_memory
    assert cache.labels.dtype == np.int64
    assert cache.labels.tolist() == [data[i].label for i in range(64)]
    assert cache.ids == [data[i].id for i in range(64)]
    assert cache.label_names == data.label_names
    assert cache.image_sizes.tolist() == [[28, 28]] * 64
    assert cache.domains is None and cache.boxes is None
    meta = cache.meta
    assert (meta.model, meta.layer, meta.weights_id, meta.dtype) == ("efficientnet_lite0", LAYER, model.weights_id,
                                                                     "float16")
    assert (meta.grid, meta.channels, meta.count, meta.status) == ((4, 4), 80, 64, "complete")
    assert meta.dataset == SPEC and meta.dataset_fingerprint == data.fingerprint()
    assert meta.make_preprocess().crop == SIZE and meta.make_preprocess().mean == model.preprocess.mean
    np.testing.assert_array_equal(np.asarray(cache.thumbnail(5)), np.asarray(data[5].image))  # 28 px: kept as is


def test_photos_of_many_sizes_with_domains_and_boxes(model, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = ["path,label,domain,box"]
    for i, (height, width) in enumerate([(40, 200), (120, 90), (64, 64), (30, 31), (300, 100)]):
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{'ab'[i % 2]},{'photo' if i < 3 else 'sketch'},{'' if i == 2 else f'1 2 {i + 5} 9'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows))
    data = FolderDataset(tmp_path)
    cache = open_cache(build_cache(model, LAYER, data, tmp_path / "cache", input_size=SIZE, shard_size=2,
                                   progress=False))
    assert cache.domains == ["photo", "photo", "photo", "sketch", "sketch"]
    assert [b.tolist() for b in cache.boxes] == [[[1, 2, 5, 9]], [[1, 2, 6, 9]], [], [[1, 2, 8, 9]], [[1, 2, 9, 9]]]
    assert cache.image_sizes.tolist() == [[40, 200], [120, 90], [64, 64], [30, 31], [300, 100]]
    for i, (height, width) in enumerate(cache.image_sizes):
        thumb = cache.thumbnail(i)
        assert (thumb.height, thumb.width) == thumbnail_size(height, width, 96) and max(thumb.size) <= 96
        expected = data[i].image.resize((thumb.width, thumb.height), Image.Resampling.LANCZOS)
        if (thumb.height, thumb.width) == (height, width):
            expected = data[i].image
        np.testing.assert_array_equal(np.asarray(thumb), np.asarray(expected))


def _build_and_die(out: Path, *, after: int) -> None:
    """Run the build in a subprocess that SIGKILLs itself half-way through writing block `after`."""
    script = f"""
import os, signal, torch
torch.set_num_threads(2)
import vfs.cache.build as cb
original, calls = cb._write_block, []
def write_then_die(group, meta, block, items, features, thumbnails):
    calls.append(block)
    if len(calls) == {after + 1}:  # a torn block: garbage features written, no progress row
        start = block * meta.shard_size
        group["features"][start:start + len(items)] = features.numpy() * 0 + 7
        os.kill(os.getpid(), signal.SIGKILL)
    original(group, meta, block, items, features, thumbnails)
cb._write_block = write_then_die
cb.build_cache("efficientnet_lite0", "{LAYER}", "{SPEC}", r"{out}", input_size={SIZE}, shard_size={SHARD},
               batch_size={BATCH}, progress=False)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == -9, result.stderr


@pytest.mark.slow
def test_killed_build_resumes_to_identical_cache(built, tmp_path):
    out = tmp_path / "resumed"
    _build_and_die(out, after=2)
    with pytest.raises(CacheIncompleteError, match=r"32 of 64 images done; resume with: python -m vfs index"):
        open_cache(out)
    command = [sys.executable, "-m", "vfs", "index", "--model", "efficientnet_lite0", "--layer", LAYER,
               "--dataset", SPEC, "--out", str(out), "--input-size", str(SIZE), "--shard-size", str(SHARD),
               "--batch-size", str(BATCH), "--threads", "2"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "32/64" in result.stderr  # the bar started where the killed build stopped
    resumed, whole = zarr.open_group(out, mode="r"), zarr.open_group(built, mode="r")
    assert sorted(resumed.array_keys()) == sorted(whole.array_keys())
    for name in whole.array_keys():
        np.testing.assert_array_equal(resumed[name][:], whole[name][:], err_msg=name)
    times = ("created", "finished")

    def strip(attrs):
        return {**attrs, "vfs_cache": {k: v for k, v in attrs["vfs_cache"].items() if k not in times}}

    assert strip(dict(resumed.attrs)) == strip(dict(whole.attrs))
    open_cache(out).verify()


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "empty"])
@pytest.mark.parametrize("key", ["features/c/1/0/0/0", "sq_norms/c/2/0/0", "labels/c/3", "thumbnails/c/0/0/0/0"])
def test_damage_is_detected_and_named(built, tmp_path, damage, key):
    copy = _damaged_copy(built, tmp_path)
    file = copy / key
    data = bytearray(file.read_bytes())
    if damage == "flip":
        data[len(data) // 3] ^= 0x10
        file.write_bytes(data)
    elif damage == "truncate":
        file.write_bytes(data[: len(data) - 7])
    elif damage == "empty":
        file.write_bytes(b"")
    else:
        file.unlink()
    array = key.split("/")[0]
    pattern = rf"array '{array}' block file '{key}'"
    with pytest.raises(CacheCorruptError, match=pattern):
        open_cache(copy, in_memory=False).verify()
    cache = open_cache(copy, in_memory=False)
    with pytest.raises(CacheCorruptError, match=pattern):
        if array == "features":
            cache[:]
        elif array == "sq_norms":
            cache.sq_norms[:]
        elif array == "labels":
            _ = cache.labels  # the property reads the array
        else:
            [cache.thumbnail(i) for i in range(SHARD)]  # one image reads one chunk: read them all


def test_verify_command_reads_a_cache_whole_and_names_a_damaged_block(built, tmp_path, capsys):
    from vfs.__main__ import main

    assert main(["verify", str(built)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok: {built}: 64 images") and f"{open_cache(built).verify()} blocks read" in out
    copy = _damaged_copy(built, tmp_path)
    (copy / "sq_norms/c/1/0/0").unlink()
    assert main(["verify", str(copy)]) == 1
    assert "array 'sq_norms' block file 'sq_norms/c/1/0/0' is missing" in capsys.readouterr().err


def test_damage_is_found_when_loading_into_memory(built, tmp_path):
    copy = _damaged_copy(built, tmp_path)
    (copy / "features/c/3/0/0/0").unlink()
    with pytest.raises(CacheCorruptError, match="features/c/3/0/0/0' is missing"):
        open_cache(copy, in_memory=True)


def test_mismatch_is_refused(model, built):
    with pytest.raises(CacheMismatchError, match="layer 'blocks.3'"):
        open_cache(built, layer="blocks.5")
    with pytest.raises(CacheMismatchError, match="model 'efficientnet_lite0'"):
        open_cache(built, model="resnet50")
    for change in ({"layer": "blocks.2"}, {"dtype": "float32"}, {"input_size": 32}):
        options = {"layer": LAYER, "dtype": "float16", "input_size": SIZE, **change}
        layer = options.pop("layer")
        with pytest.raises(CacheMismatchError, match=next(iter(change)).replace("input_size", "preprocess")):
            build_cache(model, layer, SPEC, built, shard_size=SHARD, batch_size=BATCH, progress=False, **options)
    with pytest.raises(CacheMismatchError, match="dataset"):
        build_cache(model, LAYER, "fashion-mnist:test[1:65]", built, input_size=SIZE, shard_size=SHARD,
                    progress=False)


def test_finished_cache_is_reused_not_rebuilt(model, built):
    before = {p: p.stat().st_mtime_ns for p in built.rglob("*") if p.is_file()}
    assert build_cache(model, LAYER, SPEC, built, input_size=SIZE, shard_size=SHARD, batch_size=BATCH,
                       progress=False) == built
    assert {p: p.stat().st_mtime_ns for p in built.rglob("*") if p.is_file()} == before


def test_search_over_streamed_cache_equals_in_memory(built):
    streamed, loaded = open_cache(built, in_memory=False), open_cache(built, in_memory=True)
    assert not streamed.in_memory and loaded.in_memory
    array = np.ascontiguousarray(loaded[:])  # (64, C, H, W) float16, no sq_norms
    query = torch.from_numpy(loaded[5].astype(np.float32))  # (C, H, W)
    for weights in (np.ones((4, 4), np.float32), np.pad(np.ones((2, 2), np.float32), ((1, 1), (0, 2)))):
        expected = vfs.search(query, weights, loaded, k=10)
        assert expected[0].index == 5 and expected[0].score == pytest.approx(1.0, abs=1e-3)
        for block in (None, 5, 16, 64):
            assert vfs.search(query, weights, streamed, k=10, block=block) == expected
        plain = vfs.search(query, weights, array, k=10)
        assert [(m.index, m.row, m.col) for m in plain] == [(m.index, m.row, m.col) for m in expected]
        np.testing.assert_allclose([m.score for m in plain], [m.score for m in expected], atol=1e-5)


def test_skimage_photos_cache(model, tmp_path):
    data = open_dataset("skimage-photos")
    cache = open_cache(build_cache(model, LAYER, data, tmp_path / "photos", input_size=SIZE, shard_size=8,
                                   progress=False))
    assert cache.ids == [data[i].id for i in range(len(data))]
    assert [cache.label_names[v] for v in cache.labels] == [data.label_names[data[i].label] for i in range(len(data))]
    assert cache.image_sizes.tolist() == [[data[i].image.height, data[i].image.width] for i in range(len(data))]
    assert cache.verify() == 6 * 3
    group = zarr.open_group(cache.where, mode="r")  # zarr's own decoding == the shard-file fast path
    np.testing.assert_array_equal(cache[:], group["features"][:].transpose(0, 3, 1, 2))  # last shard: 3 of 8
    np.testing.assert_array_equal(np.asarray(cache.thumbnail(18)), group["thumbnails"][18][:37, :96])  # "text"


def test_array_dataset_build_is_deterministic(model, tmp_path):
    rng = np.random.default_rng(1)
    images = list(rng.integers(0, 255, (10, 20, 30, 3), dtype=np.uint8))
    first = build_cache(model, LAYER, ArrayDataset(images, name="noise"), tmp_path / "a", input_size=SIZE,
                        shard_size=4, dtype="float32", progress=False)
    second = build_cache(model, LAYER, ArrayDataset(images, name="noise"), tmp_path / "b", input_size=SIZE,
                         shard_size=3, dtype="float32", progress=False)
    a, b = open_cache(first), open_cache(second)
    assert a.dtype == np.float32
    np.testing.assert_allclose(a[:], b[:], rtol=1e-4, atol=1e-4)  # other batches: rounding only
    np.testing.assert_allclose(a.sq_norms[:], (a[:].astype(np.float64) ** 2).sum(1), rtol=1e-5)


def test_default_caches_build_once_then_reuse(tmp_path, monkeypatch):
    from vfs.cache import defaults as default_cache

    monkeypatch.setattr(default_cache, "DEFAULTS", {
        "fashion-mnist": default_cache.DefaultCache("fashion-mnist:test[:24]", "blocks.4", 64, 64),
        "skimage-photos": default_cache.DefaultCache("skimage-photos[:3]", "blocks.4", 64, None),
    })
    monkeypatch.setenv("VFS_CACHE_DIR", str(tmp_path / "env-root"))
    assert default_cache.default_root() == tmp_path / "env-root"
    calls = []
    paths = default_cache.ensure_default_caches(tmp_path, progress=lambda f, m: calls.append((f, m)))
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(calls) > 3
    fmnist = open_cache(paths["fashion-mnist"], model="efficientnet_lite0", layer="blocks.4")
    assert fmnist.shape == (24, 112, 4, 4) and fmnist.meta.preprocess["size"] == 64  # whole 28 px images
    assert len(open_cache(paths["skimage-photos"])) == 3
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    calls.clear()
    assert default_cache.ensure_default_caches(tmp_path, progress=lambda f, m: calls.append((f, m))) == paths
    assert calls == [(1.0, "default caches ready")]
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == stamps


@pytest.mark.parametrize("codec", ["none", "lz4", "zstd"])
@pytest.mark.parametrize("checksum", [True, False])
def test_shard_file_fast_paths_match_zarr_byte_for_byte(tmp_path, codec, checksum):
    from vfs.cache.format import compressors
    from vfs.cache.shard_file import read_shard, write_shard

    rng = np.random.default_rng(3)
    values = np.maximum(rng.normal(size=(13, 3, 2, 5)), 0).astype(np.float16)  # post-ReLU-like, 13 rows
    options = dict(shape=(21, 3, 2, 5), chunks=(1, 3, 2, 5), shards=(8, 3, 2, 5), dtype="float16",
                   compressors=compressors(codec, dtype=np.dtype("float16"), checksum=checksum))
    with zarr.config.set({"array.write_empty_chunks": True}):
        by_zarr = zarr.create_array(tmp_path / "zarr", **options)
        by_zarr[8:16], by_zarr[16:21] = values[:8], values[8:]  # a full and a partial (last) shard
    ours = zarr.create_array(tmp_path / "ours", **options)
    assert write_shard(ours, 1, values[:8]) and write_shard(ours, 2, values[8:])
    for key in ("c/1/0/0/0", "c/2/0/0/0"):
        assert (tmp_path / "ours" / key).read_bytes() == (tmp_path / "zarr" / key).read_bytes()
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "ours")[8:21], values)
    data = (tmp_path / "zarr" / "c/2/0/0/0").read_bytes()
    decoded = read_shard(data, rows=5, per_shard=8, row_shape=(3, 2, 5), dtype=np.dtype("float16"),
                         compressed=codec != "none", checksum=checksum)
    np.testing.assert_array_equal(decoded, values[8:])


def test_scattered_take_reads_blocks_at_once_and_names_a_damaged_chunk(built, tmp_path):
    """take() over rows in every block (the sparse path, files read in parallel) == the rows of the whole
    cache; a flipped byte in one row's chunk is a CacheCorruptError naming its file."""
    from vfs.cache.shard_file import read_index

    rows = np.array([1, 2, 17, 30, 33, 49, 63])  # at most 4 per block of 16: read chunk by chunk
    whole = open_cache(built, in_memory=True)
    streamed = open_cache(built, in_memory=False)
    np.testing.assert_array_equal(streamed.take(rows), whole.take(rows))
    copy = _damaged_copy(built, tmp_path)
    key = "features/c/1/0/0/0"  # block 1: rows 16-31
    with open(copy / key, "rb") as file:
        offset, length = (int(v) for v in read_index(file, per_shard=SHARD)[17 - SHARD])
    data = bytearray((copy / key).read_bytes())
    data[offset + length // 2] ^= 0x10  # inside row 17's chunk; the file keeps its size
    (copy / key).write_bytes(data)
    damaged = open_cache(copy, in_memory=False)
    np.testing.assert_array_equal(damaged.take(np.array([1, 30, 33])), whole.take(np.array([1, 30, 33])))
    with pytest.raises(CacheCorruptError, match=rf"block file '{key}'"):
        damaged.take(rows)
