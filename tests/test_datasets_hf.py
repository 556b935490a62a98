"""`hf:` dataset specs on Hugging Face datasets the tests make offline: save_to_disk, parquet, imagefolder."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vfs.datasets import open_dataset
from vfs.errors import DatasetError

datasets = pytest.importorskip("datasets", reason="the hf: spec needs `pip install datasets` (requirements-dev.txt)")


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No network, and the datasets cache in tmp_path."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)


def images(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((20, 30, 3)) * 255).astype(np.uint8)) for _ in range(count)]


@pytest.fixture
def faces(tmp_path):
    """6 images (30 wide, 20 high), ClassLabel `fine`, a domain, COCO boxes under `faces.bbox` (every other empty)."""
    features = datasets.Features({
        "img": datasets.Image(), "fine": datasets.ClassLabel(names=["a", "b", "c"]),
        "domain": datasets.Value("string"),
        "faces": {"bbox": datasets.List(datasets.List(datasets.Value("float32")))}})
    return datasets.Dataset.from_dict(
        {"img": images(6), "fine": [0, 1, 2, 0, 1, 2], "domain": ["x", "y"] * 3,
         "faces": [{"bbox": [[1, 2, 3, 4], [0, 0, 5, 5]]}, {"bbox": []}] * 3}, features=features)


def test_saved_dataset_gives_images_labels_domains_and_boxes(faces, tmp_path):
    faces.save_to_disk(str(tmp_path / "saved"))
    data = open_dataset(f"hf:{tmp_path / 'saved'}")
    assert len(data) == 6 and data.label_names == ["a", "b", "c"]
    assert data.has_domains and data.has_boxes
    first = data[0]
    assert first.label == 0 and first.domain == "x" and first.image.size == (30, 20)
    assert np.asarray(first.image).tolist() == np.asarray(faces[0]["img"].convert("RGB")).tolist()
    # COCO (x, y, w, h) -> vfs (top, left, bottom, right)
    np.testing.assert_array_equal(first.boxes, [[2, 1, 6, 4], [0, 0, 5, 5]])
    assert data[1].boxes is None and data[2].label == 2
    as_corners = open_dataset(f"hf:{tmp_path / 'saved'}?box=faces.bbox&box_format=xyxy")
    np.testing.assert_array_equal(as_corners[0].boxes, [[2, 1, 4, 3], [0, 0, 5, 5]])
    sliced = open_dataset(f"hf:{tmp_path / 'saved'}[2:5]")
    assert len(sliced) == 3 and sliced[0].label == 2


def test_dataset_dict_split_and_parquet(faces, tmp_path):
    datasets.DatasetDict({"train": faces, "test": faces.select([3, 4])}).save_to_disk(str(tmp_path / "dict"))
    test = open_dataset(f"hf:{tmp_path / 'dict'}:test")
    assert len(test) == 2 and test[1].label == 1
    assert len(open_dataset(f"hf:{tmp_path / 'dict'}")) == 6  # train by default
    with pytest.raises(DatasetError, match="has splits"):
        open_dataset(f"hf:{tmp_path / 'dict'}:validation")
    faces.to_parquet(str(tmp_path / "data.parquet"))
    parquet = open_dataset(f"hf:{tmp_path / 'data.parquet'}")
    assert len(parquet) == 6 and parquet[5].label == 2
    np.testing.assert_array_equal(parquet[0].boxes, [[2, 1, 6, 4], [0, 0, 5, 5]])
    # the same content twice: same fingerprint; other rows: another
    faces.save_to_disk(str(tmp_path / "again"))
    assert open_dataset(f"hf:{tmp_path / 'again'}").fingerprint() == open_dataset(f"hf:{tmp_path / 'dict'}").fingerprint()
    assert test.fingerprint() != parquet.fingerprint()


def test_imagefolder_labels_come_from_sub_folders(tmp_path):
    for name, picture in zip(["cat", "cat", "dog"], images(3)):
        (tmp_path / "photos" / name).mkdir(parents=True, exist_ok=True)
        picture.save(tmp_path / "photos" / name / f"{len(list((tmp_path / 'photos' / name).iterdir()))}.png")
    data = open_dataset(f"hf:{tmp_path / 'photos'}")
    assert len(data) == 3 and data.label_names == ["cat", "dog"]
    assert sorted(data[i].label for i in range(3)) == [0, 0, 1]
    assert not data.has_boxes and not data.has_domains


def test_string_labels_and_named_columns(tmp_path):
    table = datasets.Dataset.from_dict({"picture": images(4), "kind": ["b", "a", "b", "c"], "site": list("pqpq")})
    table = table.cast_column("picture", datasets.Image())
    table.save_to_disk(str(tmp_path / "strings"))
    data = open_dataset(f"hf:{tmp_path / 'strings'}?label=kind&domain=site")
    assert data.label_names == ["a", "b", "c"] and [data[i].label for i in range(4)] == [1, 0, 1, 2]
    assert data[1].domain == "q"


def test_bad_specs_say_what_to_do(faces, tmp_path):
    faces.save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DatasetError, match="unknown option.*valid options"):
        open_dataset(f"hf:{tmp_path / 'saved'}?labels=fine")
    with pytest.raises(DatasetError, match="no column 'nope' for the label"):
        open_dataset(f"hf:{tmp_path / 'saved'}?label=nope")
    with pytest.raises(DatasetError, match="box_format"):
        open_dataset(f"hf:{tmp_path / 'saved'}?box_format=cxcywh")
    with pytest.raises(DatasetError, match="cannot open hf:"):
        open_dataset("hf:someone/no-such-dataset-here")  # the Hub path, offline: a clear error


def test_missing_datasets_package_is_a_clear_error(tmp_path):
    code = ("import sys; sys.modules['datasets'] = None\n"
            "from vfs.datasets import open_dataset\n"
            "try:\n    open_dataset('hf:x')\nexcept Exception as error:\n    print(type(error).__name__, error)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "DatasetError" in result.stdout and "pip install datasets" in result.stdout


STREAM = """
import hashlib, json
import numpy as np
from vfs.datasets import open_dataset
data = open_dataset({spec!r})
order = [0, 1, 4, 5, 2, 3]  # a step back restarts the stream (it reads forward only)
items = {{i: data[i] for i in order}}
print(json.dumps({{"streaming": data.streaming, "length": len(data), "names": data.label_names,
                  "labels": [items[i].label for i in range(len(data))],
                  "domains": [items[i].domain for i in range(len(data))],
                  "boxes": [None if items[i].boxes is None else items[i].boxes.tolist() for i in range(len(data))],
                  "pixels": [hashlib.sha256(np.asarray(items[i].image).tobytes()).hexdigest() for i in range(len(data))],
                  "fingerprint": data.fingerprint()}}))
"""


def test_a_hub_dataset_is_streamed_from_a_local_hub_server(faces, tmp_path):
    """`hf:user/name:split` on the real streaming path (`load_dataset(..., streaming=True)` and the
    forward-only reader) against tests/hub_server.py holding a parquet shard and a dataset card, as
    the Hub serves them: nothing leaves 127.0.0.1."""
    import hashlib
    import json
    import os
    from pathlib import Path

    from hub_server import HubServer
    from huggingface_hub import DatasetCardData, HfApi

    faces.to_parquet(str(tmp_path / "test.parquet"))
    info = datasets.DatasetInfo(features=faces.features, splits=datasets.SplitDict(
        {"test": datasets.SplitInfo("test", num_bytes=(tmp_path / "test.parquet").stat().st_size, num_examples=6)}))
    card = DatasetCardData(configs=[{"config_name": "default", "data_files": [{"split": "test", "path": "data/test-*"}]}])
    datasets.info.DatasetInfosDict({"default": info}).to_dataset_card_data(card)
    root = Path(__file__).resolve().parents[1]
    with HubServer(tmp_path / "hub") as hub:
        api = HfApi(endpoint=hub.endpoint, token="test")
        for name, files in (("user/faces", {"data/test-00000-of-00001.parquet": (tmp_path / "test.parquet").read_bytes(),
                                            "README.md": f"---\n{card.to_yaml()}\n---\n".encode()}),
                            ("user/unsized", {"data/test-00000-of-00001.parquet": (tmp_path / "test.parquet").read_bytes()})):
            api.create_repo(name, repo_type="dataset")
            for path, content in files.items():
                api.upload_file(path_or_fileobj=content, path_in_repo=path, repo_id=name, repo_type="dataset")
        hub.stats.reset()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(root), "HF_ENDPOINT": hub.endpoint,
               "HF_HOME": str(tmp_path / "home"), "NO_PROXY": "127.0.0.1", "HF_HUB_DISABLE_TELEMETRY": "1"}

        def stream(spec: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-c", STREAM.format(spec=spec)], env=env, cwd=tmp_path,
                                  capture_output=True, text=True, timeout=300)

        found = stream("hf:user/faces:test?box=faces.bbox")
        assert found.returncode == 0, found.stderr
        record = json.loads(found.stdout.strip().splitlines()[-1])
        served = hub.stats.downloads()
        unsized = stream("hf:user/unsized:test")
        missing = stream("hf:user/no-such-dataset:test")
    assert record["streaming"] and record["length"] == 6 and record["names"] == ["a", "b", "c"]
    assert record["labels"] == [0, 1, 2, 0, 1, 2] and record["domains"] == ["x", "y"] * 3
    assert record["boxes"][0] == [[2, 1, 6, 4], [0, 0, 5, 5]] and record["boxes"][1] is None  # COCO -> tlbr
    expected = [hashlib.sha256(np.asarray(faces[i]["img"].convert("RGB")).tobytes()).hexdigest() for i in range(6)]
    assert record["pixels"] == expected
    assert any(path.endswith("data/test-00000-of-00001.parquet") for path in served)  # read from the server
    assert not list((tmp_path / "home").rglob("*.parquet"))  # streamed: no copy of the data was kept
    assert unsized.returncode != 0 and "size of this streamed split is not known" in unsized.stderr
    assert missing.returncode != 0 and "DatasetError: cannot open hf:user/no-such-dataset" in missing.stderr
