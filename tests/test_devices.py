"""`device=` of load_model, FeatureExtractor and search: CPU given as a string or a torch.device gives
the same results as the default, and a device this machine lacks is a DeviceError that says what it has."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vfs
from vfs import DeviceError, FeatureExtractor, Preprocess, load_model, search

HALF = (0.5, 0.5, 0.5)
MISSING = "meta" if torch.cuda.is_available() else "cuda"  # a device torch knows that cannot compute here


def tiny_model(**options):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 4, stride=4), torch.nn.ReLU())
    preprocess = Preprocess(size=16, crop=16, mean=HALF, std=HALF)
    return load_model("tiny", module=net, weights="random", preprocess=preprocess, **options)


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_cpu_as_string_or_device_matches_the_default(device):
    images = np.random.default_rng(0).integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)
    model = tiny_model(device=device)
    assert next(model.module.parameters()).device == torch.device("cpu")
    default = FeatureExtractor(model.module, "1", preprocess=model.preprocess)(images)  # (3, 4, 4, 4)
    extractor = FeatureExtractor(model.module, "1", preprocess=model.preprocess, device=device)
    assert extractor.device == torch.device("cpu")
    torch.testing.assert_close(extractor(images), default)
    weights = np.zeros((4, 4), np.float32)  # (h, w) of the 16 px input at stride 4
    weights[1:3, 1:3] = 1.0
    expected = search(default[0], weights, default, k=3)
    assert search(default[0], weights, default, k=3, device=device) == expected
    assert vfs.best_windows(default[0], weights, default, device=device).scores.tolist() == [
        m.score for m in sorted(expected, key=lambda m: m.index)]


@pytest.mark.parametrize("device", [MISSING, "gpu", "cuda:99"])
def test_an_unavailable_device_is_a_clear_error(device):
    features = torch.rand(2, 4, 3, 3)
    with pytest.raises(DeviceError, match=rf"device '{device}' cannot be used here.*this machine has cpu"):
        search(features[0], torch.ones(3, 3), features, device=device)
    with pytest.raises(DeviceError, match="this machine has cpu"):
        FeatureExtractor(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1)), "0", device=device)
    with pytest.raises(DeviceError, match="this machine has cpu"):
        tiny_model(device=device)
    assert isinstance(DeviceError("x"), ValueError)
