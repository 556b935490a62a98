"""`vfs.prepare`: any source laid out channels-last with sq_norms, by copy or inside its own memory."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import zarr

from vfs.errors import SearchError
from vfs.retrieval.prepared import PreparedSource, prepare
from vfs.retrieval.window import best_windows, search
from vfs.source import as_tensor


def random_features(shape, dtype=torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(sum(shape))
    return torch.randn(shape, generator=generator).relu_().to(dtype)  # (N, C, H, W)


def zarr_of(features: np.ndarray) -> zarr.Array:
    array = zarr.create_array(store={}, shape=features.shape, dtype=features.dtype, chunks=(4, *features.shape[1:]))
    array[:] = features
    return array


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("kind", ["torch", "numpy", "zarr", "channels_last", "float64"])
def test_prepared_holds_the_same_values_channels_last_with_norms(kind, dtype):
    features = random_features((11, 6, 5, 4), dtype)  # non-square maps, 11 images in blocks of 3
    source = {"torch": features, "numpy": features.numpy(), "zarr": zarr_of(features.numpy()),
              "channels_last": features.contiguous(memory_format=torch.channels_last),
              "float64": features.double()}[kind]
    prepared = prepare(source, block=3)
    expected_dtype = torch.float32 if kind == "float64" else dtype
    assert isinstance(prepared, PreparedSource) and prepared.shape == (11, 6, 5, 4)
    assert prepared.dtype == expected_dtype and prepared.stored.is_contiguous()  # (N, H, W, C)
    torch.testing.assert_close(prepared[0:11], features.to(expected_dtype), rtol=0, atol=0)
    torch.testing.assert_close(prepared[7], features[7].to(expected_dtype), rtol=0, atol=0)
    norms = (features.to(expected_dtype).double() ** 2).sum(dim=1)  # (N, H, W)
    torch.testing.assert_close(prepared.sq_norms.double(), norms, rtol=1e-5, atol=1e-6)
    assert prepare(prepared) is prepared


def test_as_tensor_shares_memory_keeps_strides_and_checks_dims():
    features = random_features((3, 4, 2, 5))
    assert as_tensor(features).data_ptr() == features.data_ptr()
    channels_last = features.contiguous(memory_format=torch.channels_last)
    assert as_tensor(channels_last).stride() == channels_last.stride()
    array = features.numpy().copy()
    array.flags.writeable = False  # a read-only array (a zarr slice, a memory map) is only read: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shared = as_tensor(array, dims="(N, C, H, W)")
    assert shared.data_ptr() == array.ctypes.data and torch.equal(shared, features)
    assert torch.equal(as_tensor(zarr_of(features.numpy())[1:3]), features[1:3])
    with pytest.raises(SearchError, match=r"query must be 3-D \(C, H, W\), got shape \(3, 4, 2, 5\): pass one"):
        as_tensor(features, dims="(C, H, W)", name="query", hint="pass one image's features")


def test_a_channels_last_source_is_wrapped_without_a_copy():
    features = random_features((5, 8, 3, 3)).contiguous(memory_format=torch.channels_last)
    assert prepare(features).stored.data_ptr() == features.data_ptr()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_in_place_reuses_the_memory_and_the_tensor_reads_the_same_values(dtype):
    features = random_features((10, 6, 4, 5), dtype)
    expected = features.clone()
    pointer = features.data_ptr()
    prepared = prepare(features, in_place=True, block=3)  # blocks of 3, 3, 3 and 1 images
    assert prepared.stored.data_ptr() == pointer  # no second copy
    assert features.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(features, expected) and torch.equal(prepared[0:10], expected)


def test_in_place_on_numpy_is_read_through_the_prepared_source():
    features = random_features((7, 4, 3, 3))
    array = features.numpy().copy()
    prepared = prepare(array, in_place=True, block=2)
    assert np.shares_memory(prepared.stored.numpy(), array)
    assert torch.equal(prepared[0:7], features)


def test_prepared_keeps_a_caches_norms():
    features = random_features((6, 4, 3, 3))

    class Cache:  # a source with its own (here deliberately different) sq_norms
        shape = features.shape
        sq_norms = np.full((6, 3, 3), 7.0, np.float32)

        def __getitem__(self, index):
            return features[index]

    assert torch.equal(prepare(Cache()).sq_norms, torch.full((6, 3, 3), 7.0))


def test_search_over_a_prepared_source_equals_the_plain_source():
    features = random_features((30, 16, 7, 7), torch.float16)
    weights = np.zeros((7, 7), np.float32)
    weights[2:5, 1:3] = 1
    plain = best_windows(features[4], weights, features)
    for prepared in [prepare(features), prepare(features.clone(), in_place=True)]:
        fast = best_windows(features[4], weights, prepared)
        np.testing.assert_allclose(fast.scores, plain.scores, atol=1e-6)
        np.testing.assert_array_equal(fast.rows, plain.rows)
        np.testing.assert_array_equal(fast.cols, plain.cols)


def test_subset_and_exclude_over_a_prepared_source_equal_the_plain_source():
    features = random_features((40, 8, 6, 6))
    weights = np.zeros((6, 6), np.float32)
    weights[0:2, 0] = 1
    weights[1, 1] = 1
    prepared = prepare(features)
    for options in [dict(subset=[39, 3, 17, 18, 0]), dict(exclude=[5, 6]), dict(subset=[2, 30], exclude=[2])]:
        plain = search(features[5], weights, features, k=4, per_image=2, **options)
        fast = search(features[5], weights, prepared, k=4, per_image=2, **options)
        assert [(m.index, m.row, m.col) for m in fast] == [(m.index, m.row, m.col) for m in plain]
        np.testing.assert_allclose([m.score for m in fast], [m.score for m in plain], atol=1e-6)


def test_prepare_errors_say_what_to_do():
    features = random_features((4, 3, 2, 2))
    with pytest.raises(SearchError, match="in_place=False"):
        prepare(zarr_of(features.numpy()), in_place=True)
    with pytest.raises(SearchError, match="in_place=False"):
        prepare(features.transpose(2, 3), in_place=True)  # neither contiguous nor channels-last
    with pytest.raises(SearchError, match="in_place=False"):
        prepare(features.requires_grad_(), in_place=True)
    with pytest.raises(SearchError, match="floats"):
        prepare(torch.ones(2, 3, 2, 2, dtype=torch.int64))
    with pytest.raises(SearchError, match=r"\(N, C, H, W\)"):
        prepare(torch.ones(3, 2, 2))
    read_only = features.detach().numpy().copy()
    read_only.flags.writeable = False
    with pytest.raises(SearchError, match="writeable"):
        prepare(read_only, in_place=True)
    assert torch.equal(prepare(read_only)[0:4], features.detach())  # a copy is fine


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on the CPU CI machine)")
def test_prepared_source_on_the_gpu_equals_the_cpu():
    features = random_features((50, 8, 7, 7), torch.float16)
    weights = np.zeros((7, 7), np.float32)
    weights[1:4, 2:4] = 1
    on_gpu = prepare(features).to("cuda")
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.float16
    cpu = best_windows(features[3], weights, features)
    cuda = best_windows(features[3], weights, on_gpu)  # the device follows the source
    np.testing.assert_allclose(cuda.scores, cpu.scores, atol=1e-5)
    np.testing.assert_array_equal(cuda.rows, cpu.rows)
