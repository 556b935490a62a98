"""The app's GPU wiring, tested on the CPU: `@spaces.GPU` wraps the search when `spaces` is importable,
the cache moves to the device inside that call, and without `spaces` the decorator is a no-op."""

from __future__ import annotations

import importlib
import sys
import types

import numpy as np
import pytest
import torch

import vfs
from vfs.retrieval.prepared import PreparedSource


@pytest.fixture
def fake_spaces(monkeypatch):
    """A stand-in for the `spaces` package on ZeroGPU: records calls and whether one is in progress."""
    module = types.ModuleType("spaces")
    module.calls, module.inside = [], False

    def GPU(task=None, *, duration=None):  # noqa: N802 -- the real name
        def wrap(function):
            def decorated(*args, **kwargs):
                module.calls.append((function.__name__, duration))
                module.inside = True
                try:
                    return function(*args, **kwargs)
                finally:
                    module.inside = False
            return decorated
        return wrap(task) if callable(task) else wrap

    module.GPU = GPU
    monkeypatch.setitem(sys.modules, "spaces", module)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    yield module
    monkeypatch.delitem(sys.modules, "spaces")
    monkeypatch.delenv("SPACES_ZERO_GPU")
    importlib.reload(importlib.import_module("app.gpu"))  # back to this machine's own wiring


def features_and_query():
    features = torch.randn(12, 6, 5, 5, generator=torch.Generator().manual_seed(0)).relu_().half()
    weights = np.zeros((5, 5), np.float32)
    weights[1:3, 2:4] = 1
    return features, features[3].float(), weights


def test_on_zerogpu_the_search_runs_inside_spaces_gpu_and_moves_the_cache_there(fake_spaces, monkeypatch):
    gpu = importlib.reload(importlib.import_module("app.gpu"))
    assert gpu.ZERO_GPU
    moves = []
    original_to = PreparedSource.to
    monkeypatch.setattr(PreparedSource, "to", lambda self, device, **kw: (
        moves.append((str(device), fake_spaces.inside)), original_to(self, device, **kw))[1])
    features, query, weights = features_and_query()
    expected = vfs.best_windows(query, weights, features)
    for _ in range(2):  # on ZeroGPU nothing stays on the device between calls: moved every time
        best = gpu.best_windows_on_gpu(query, weights, features, None, "cpu")  # "cpu" stands in for the GPU
        np.testing.assert_array_equal(best.scores, expected.scores)
    assert fake_spaces.calls == [("best_windows_on_gpu", gpu.GPU_SECONDS)] * 2
    assert moves == [("cpu", True), ("cpu", True)]  # each move happened inside the decorated call


def test_without_spaces_the_decorator_is_a_no_op_and_the_device_copy_is_kept(monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", None)  # `import spaces` raises ImportError
    gpu = importlib.reload(importlib.import_module("app.gpu"))
    try:
        assert gpu.spaces is None and not gpu.ZERO_GPU

        def function():
            return 1

        assert gpu.gpu_task(function) is function
        features, query, weights = features_and_query()
        first = gpu.held_on(features, "cpu", keep=True)
        assert gpu.held_on(features, "cpu", keep=True) is first  # kept between searches
        assert isinstance(first, PreparedSource) and first.dtype == torch.float16
    finally:
        monkeypatch.delitem(sys.modules, "spaces")
        importlib.reload(gpu)


def test_cpu_searches_skip_the_gpu_task(fake_spaces):
    gpu = importlib.reload(importlib.import_module("app.gpu"))
    features, query, weights = features_and_query()
    best = gpu.best_windows(query, weights, features, device="cpu")
    np.testing.assert_array_equal(best.scores, vfs.best_windows(query, weights, features).scores)
    assert fake_spaces.calls == []


def test_app_refuses_a_device_this_machine_lacks(capsys):
    from app.__main__ import main

    if torch.cuda.is_available():
        pytest.skip(reason="this machine has a GPU: the refusal is for machines without one")
    assert main(["--device", "cuda", "--no-default", "--no-hub"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on the CPU CI machine)")
def test_app_search_on_cuda_equals_cpu():
    gpu = importlib.import_module("app.gpu")
    features, query, weights = features_and_query()
    cpu = gpu.best_windows(query, weights, features, device="cpu")
    cuda = gpu.best_windows(query, weights, features, device="cuda")
    np.testing.assert_allclose(cuda.scores, cpu.scores, atol=1e-5)
    np.testing.assert_array_equal(cuda.rows, cpu.rows)
