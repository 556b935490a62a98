"""Feature extraction: the hook returns the layer's output, later layers never run, tokens become grids.

Oracles: hand-set convolutions computed by hand; call counters on the layers after the target; a
change planted in one patch changes exactly one grid cell (token order and prefix dropping); the
raw token output reshaped by hand; channels-last outputs permuted back; batch split == one batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vfs.errors import LayerError
from vfs.models.features import FeatureExtractor, layer_shapes, layers_command, list_layers
from vfs.models.preprocess import Preprocess


class Count(nn.Module):
    """Identity that counts its calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x


def tiny_net() -> nn.Sequential:
    """0: 1x1 conv 3->2 with known weights; 1: counter; 2: 2x2 stride-2 conv 2->4; 3: counter."""
    first = nn.Conv2d(3, 2, 1)
    second = nn.Conv2d(2, 4, 2, stride=2)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, -1.0]]).view(2, 3, 1, 1))
        first.bias.copy_(torch.tensor([0.5, 0.0]))
        second.weight.fill_(0.25)
        second.bias.zero_()
    return nn.Sequential(first, Count(), second, Count())


def test_extractors_sharing_a_module_across_threads_equal_one_call_at_a_time():
    import sys
    from concurrent.futures import ThreadPoolExecutor

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 4, 3, stride=2, padding=1))
    extractors = {layer: FeatureExtractor(net, layer) for layer in ("1", "3", "4")}  # hooks on one module
    images = torch.rand(12, 1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    tasks = [(layer, i) for layer in extractors for i in range(len(images))] * 3
    alone = {task: extractors[task[0]](images[task[1]], preprocessed=True) for task in tasks}  # the oracle
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads all the time: a hook firing for another thread's pass shows
    try:
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(lambda task: extractors[task[0]](images[task[1]], preprocessed=True), tasks))
    finally:
        sys.setswitchinterval(before)
    for task, features in zip(tasks, together):
        assert torch.equal(features, alone[task]), task


def test_hook_returns_the_layer_output_and_later_layers_never_run():
    net = tiny_net()
    images = torch.randn(2, 3, 8, 6)
    features = FeatureExtractor(net, "0")(images)
    expected = torch.stack([images[:, 0] + 0.5, 2 * images[:, 1] - images[:, 2]], dim=1)  # (2, 2, 8, 6)
    torch.testing.assert_close(features, expected)
    assert net[1].calls == 0 and net[3].calls == 0
    assert not net[0]._forward_hooks  # the hook lived exactly one call
    deeper = FeatureExtractor(net, "2")(images)
    assert deeper.shape == (2, 4, 4, 3) and net[1].calls == 1 and net[3].calls == 0
    torch.testing.assert_close(deeper[:, 0, 0, 0], expected[:, :, :2, :2].sum(dim=(1, 2, 3)) * 0.25)
    assert deeper.dtype == torch.float32 and deeper.device.type == "cpu"


def test_hook_is_removed_when_the_forward_pass_fails():
    net = tiny_net()
    with pytest.raises(RuntimeError):
        FeatureExtractor(net, "2")(torch.randn(1, 5, 8, 8))  # wrong channel count: conv 0 fails first
    assert not net[2]._forward_hooks


def test_layer_typo_suggests_names_and_the_listing_function():
    net = nn.Sequential()
    net.add_module("features", nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    with pytest.raises(LayerError) as raised:
        FeatureExtractor(net, "feature.0")
    message = str(raised.value)
    assert "'features.0'" in message and "vfs.list_layers" in message and "python -m vfs layers" in message
    assert isinstance(raised.value, KeyError)
    assert list_layers(net) == ["features", "features.0", "features.1"]


def test_eval_mode_and_pil_uint8_tensor_inputs_agree():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Conv2d(4, 4, 3))
    net.train()
    preprocess = Preprocess(size=40, crop=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    arrays = [np.random.default_rng(i).integers(0, 256, (50 + 10 * i, 60, 3), dtype=np.uint8) for i in range(3)]
    extractor = FeatureExtractor(net, "2", preprocess=preprocess)
    from_arrays = extractor(arrays)
    assert not net.training
    torch.testing.assert_close(extractor([Image.fromarray(a) for a in arrays]), from_arrays)
    torch.testing.assert_close(extractor(preprocess(arrays), preprocessed=True), from_arrays)  # model input as is
    torch.testing.assert_close(FeatureExtractor(net, "2", preprocess=preprocess, batch_size=2)(arrays), from_arrays)
    assert from_arrays.shape == (3, 4, 15, 15)


def test_tuple_outputs_give_their_first_tensor_and_channels_last_is_detected():
    class Pair(nn.Module):
        def forward(self, x):
            return x * 2, "extra"

    class ChannelsLast(nn.Module):
        def forward(self, x):  # (B, C, H, W) -> (B, H, W, C), as timm swin / convnext-style blocks
            return x.permute(0, 2, 3, 1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 96, 4, stride=4)
            self.pair = Pair()
            self.nhwc = ChannelsLast()

        def forward(self, x):
            x = self.stem(x)
            return self.nhwc(self.pair(x)[0])

    net = Net()
    images = torch.randn(1, 3, 64, 48)
    stem = FeatureExtractor(net, "stem")(images)  # (1, 96, 16, 12)
    torch.testing.assert_close(FeatureExtractor(net, "pair")(images), stem * 2)
    torch.testing.assert_close(FeatureExtractor(net, "nhwc")(images), stem * 2)


def tiny_vit(**kwargs) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    options = dict(img_size=56, patch_size=14, embed_dim=32, depth=2, num_heads=2, num_classes=5, reg_tokens=4)
    return VisionTransformer(**{**options, **kwargs}).eval()


@pytest.mark.parametrize("size", [(56, 56), (56, 42), (42, 70)])
def test_register_tokens_are_dropped_and_patches_stay_in_place(size):
    vit = tiny_vit(dynamic_img_size=True)
    assert vit.num_prefix_tokens == 5  # class token + 4 registers
    rows, cols = size[0] // 14, size[1] // 14
    images = torch.randn(1, 3, *size)
    extractor = FeatureExtractor(vit, "norm_pre")  # tokens after position embedding, before any mixing
    base = extractor(images)
    assert base.shape == (1, 32, rows, cols)
    changed = images.clone()
    changed[:, :, 14:28, 0:14] += 1.0  # patch (row 1, col 0)
    diff = (extractor(changed) - base).abs().sum(dim=1)[0]  # (rows, cols)
    assert diff[1, 0] > 0 and (diff > 0).sum() == 1


def test_timm_block_tokens_reshape_to_the_grid():
    vit = tiny_vit(dynamic_img_size=True)
    images = torch.randn(2, 3, 56, 42)
    raw = {}
    handle = vit.blocks[1].register_forward_hook(lambda module, inputs, output: raw.setdefault("tokens", output))
    with torch.inference_mode():
        vit(images)
    handle.remove()
    expected = raw["tokens"][:, 5:].reshape(2, 4, 3, 32).permute(0, 3, 1, 2)  # (2, 32, 4, 3)
    torch.testing.assert_close(FeatureExtractor(vit, "blocks.1")(images), expected)
    assert layer_shapes(vit, input_size=56, layers=["blocks.1", "patch_embed"]) == {
        "blocks.1": (32, 4, 4), "patch_embed": (32, 4, 4)}


def test_torchvision_vit_b_16_tokens_become_a_14x14_grid():
    import torchvision

    torch.manual_seed(0)
    vit = torchvision.models.vit_b_16(weights=None).eval()
    head_calls = []
    vit.heads.register_forward_pre_hook(lambda module, inputs: head_calls.append(1))
    raw = {}
    handle = vit.encoder.layers.encoder_layer_3.register_forward_hook(lambda m, i, o: raw.setdefault("tokens", o))
    images = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        vit(images)
    handle.remove()
    head_calls.clear()
    features = FeatureExtractor(vit, "encoder.layers.encoder_layer_3")(images)
    assert features.shape == (1, 768, 14, 14) and not head_calls
    torch.testing.assert_close(features, raw["tokens"][:, 1:].reshape(1, 14, 14, 768).permute(0, 3, 1, 2))


def test_layer_shapes_of_a_tiny_net_and_unknown_layers():
    net = tiny_net()
    assert layer_shapes(net, input_size=8) == {"0": (2, 8, 8), "1": (2, 8, 8), "2": (4, 4, 4), "3": (4, 4, 4)}
    with pytest.raises(LayerError, match="Did you mean '2'"):
        layer_shapes(net, input_size=8, layers=["2 "])


def test_layers_command_marks_suggested_layers(capsys):
    assert layers_command(["efficientnet_lite0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    marked = [line.split()[1:3] for line in lines if line.startswith("*")]
    assert marked == [["blocks.3", "80x14x14"], ["blocks.5", "192x7x7"]]
    assert any(line.split()[:2] == ["conv_stem", "32x112x112"] for line in lines)
    assert any(line.endswith("(stage 6: 192x7x7, stride 32 at 224 px)") for line in lines if line.startswith("*"))
    from vfs.__main__ import main
    from vfs.cli import LIBRARY_ERROR

    assert main(["layers", "resnet5"]) == LIBRARY_ERROR
    assert "Did you mean 'resnet50'" in capsys.readouterr().err


def test_tokens_of_a_later_stage_get_their_grid_from_the_count():
    from vfs.models.features import to_grid

    class Swinish(nn.Module):  # patch size 4, but a later stage holds 28x28 tokens of a 224 input
        def __init__(self):
            super().__init__()
            self.patch_embed = nn.Module()
            self.patch_embed.patch_size = (4, 4)

    tokens = torch.arange(2 * 784 * 3, dtype=torch.float32).reshape(2, 784, 3)  # (B, 784, C)
    grid = to_grid(tokens, (224, 224), module=Swinish())
    torch.testing.assert_close(grid, tokens.reshape(2, 28, 28, 3).permute(0, 3, 1, 2))
    with pytest.raises(LayerError, match="do not hold a patch grid"):
        to_grid(torch.zeros(1, 1000, 3), (224, 224))


def test_mixed_precision_is_off_on_the_cpu_and_a_missing_gpu_is_a_device_error():
    from vfs.errors import DeviceError

    extractor = FeatureExtractor(tiny_net(), "2")
    assert extractor.device.type == "cpu" and not extractor.mixed_precision
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            FeatureExtractor(tiny_net(), "2", device="cuda")
    with pytest.raises(DeviceError, match="not a device"):
        FeatureExtractor(tiny_net(), "2", device="gpu please")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on the CPU CI machine)")
def test_extraction_on_cuda_in_mixed_precision_matches_the_cpu():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU())
    pixels = torch.rand(9, 3, 32, 32)  # (B, 3, H, W)
    cpu = FeatureExtractor(module, "3", batch_size=4)(pixels)  # (B, 32, h, w) float32
    gpu_extractor = FeatureExtractor(module, "3", device="cuda", batch_size=4)
    assert gpu_extractor.mixed_precision
    cuda = gpu_extractor(pixels)  # float16 autocast on the device, float32 on the CPU out
    assert cuda.device.type == "cpu" and cuda.dtype == torch.float32 and cuda.shape == cpu.shape
    torch.testing.assert_close(cuda, cpu, rtol=1e-2, atol=1e-2)
