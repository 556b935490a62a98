"""build_cache's `overwrite=True`, and the warning when a build is resumed with another batch size."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from vfs import (
    ArrayDataset,
    CacheIncompleteError,
    CacheMismatchError,
    Preprocess,
    build_cache,
    load_model,
    open_cache,
)

HALF = (0.5, 0.5, 0.5)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 4, stride=4), torch.nn.ReLU(), torch.nn.Conv2d(6, 5, 2, stride=2))
    return load_model("tiny", module=net, weights="random", preprocess=Preprocess(size=16, crop=16, mean=HALF, std=HALF))


def noise(seed: int, n: int = 6) -> ArrayDataset:
    images = np.random.default_rng(seed).integers(0, 255, (n, 16, 16, 3), dtype=np.uint8)
    return ArrayDataset(images, name=f"noise{seed}", labels=[i % 2 for i in range(n)], label_names=["a", "b"])


def build(tiny, layer, data, out, **options):
    return build_cache(tiny, layer, data, out, progress=False, dtype="float32", shard_size=4, **options)


def test_overwrite_replaces_a_cache_built_otherwise_with_a_fresh_build(tiny, tmp_path):
    build(tiny, "0", noise(1), tmp_path / "cache")
    with pytest.raises(CacheMismatchError, match="overwrite=True"):
        build(tiny, "2", noise(2), tmp_path / "cache")
    build(tiny, "2", noise(2), tmp_path / "cache", overwrite=True)
    fresh = open_cache(build(tiny, "2", noise(2), tmp_path / "fresh"))  # the oracle: a build into a new folder
    replaced = open_cache(tmp_path / "cache")
    assert replaced.meta.layer == "2" and replaced.shape == fresh.shape == (6, 5, 2, 2)
    np.testing.assert_array_equal(replaced[0:6], fresh[0:6])
    np.testing.assert_array_equal(replaced.labels, fresh.labels)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a cache")
    with pytest.raises(CacheMismatchError, match="not a feature cache"):
        build(tiny, "2", noise(2), tmp_path / "other")
    build(tiny, "2", noise(2), tmp_path / "other", overwrite=True)
    np.testing.assert_array_equal(open_cache(tmp_path / "other")[0:6], fresh[0:6])


def test_resuming_with_another_batch_size_warns_and_the_same_one_does_not(tiny, tmp_path):
    build(tiny, "0", noise(3), tmp_path / "cache", batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same batch size: silent
        build(tiny, "0", noise(3), tmp_path / "cache", batch_size=4)
    with pytest.warns(UserWarning, match=r"with batch size 2, it was started with 4: features will differ"):
        build(tiny, "0", noise(3), tmp_path / "cache", batch_size=2)


class FailsOnce(ArrayDataset):
    """`noise(seed)` whose image `at` cannot be read the first time: a build stops after the blocks before it."""

    def __init__(self, seed: int, at: int):
        self.base, self.at, self.failed = noise(seed), at, False
        self.name, self.label_names = self.base.name, self.base.label_names

    def __len__(self) -> int:
        return len(self.base)

    def fingerprint(self) -> str:
        return self.base.fingerprint()  # the same images: a resume with the base dataset is the same build

    def item(self, index: int):
        if index == self.at and not self.failed:
            self.failed = True
            raise OSError("the disk went away")
        return self.base.item(index)


def test_an_unfinished_build_resumed_with_another_batch_size_warns_and_finishes_the_same(tiny, tmp_path):
    data = FailsOnce(4, at=4)  # shard_size 4: block 0 is written, block 1 fails
    with pytest.raises(OSError, match="the disk went away"):
        build(tiny, "0", data, tmp_path / "cache", batch_size=4)
    with pytest.raises(CacheIncompleteError, match="4 of 6 images done"):
        open_cache(tmp_path / "cache")
    with pytest.warns(UserWarning, match=r"resuming .* with batch size 2, it was started with 4"):
        build(tiny, "0", data, tmp_path / "cache", batch_size=2)
    fresh = open_cache(build(tiny, "0", noise(4), tmp_path / "fresh", batch_size=4))  # the oracle
    resumed = open_cache(tmp_path / "cache")
    assert resumed.meta.status == "complete" and resumed.meta.batch_size == 4  # the batch size it was started with
    np.testing.assert_allclose(resumed[0:6], fresh[0:6], rtol=1e-5, atol=1e-6)  # batches differ, rounding may
