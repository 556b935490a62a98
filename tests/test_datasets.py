"""Image sources: oracles are the raw files (idx bytes, PNGs written here) and skimage's own arrays."""

from __future__ import annotations

import contextlib
import gzip
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vfs.datasets import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_LABELS,
    FashionMNIST,
    FolderDataset,
    from_torchvision,
    open_dataset,
)
from vfs.errors import DatasetError

needs_fmnist = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="needs `apt-get install dataset-fashion-mnist`")


def _png(path: Path, color: tuple[int, int, int], size=(12, 9)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_folder_labels_from_subfolders_skips_non_images(tmp_path):
    _png(tmp_path / "dog" / "a.png", (255, 0, 0))
    _png(tmp_path / "cat" / "deep" / "b.png", (0, 255, 0))
    _png(tmp_path / "loose.png", (0, 0, 255))
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "cat" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.warns(UserWarning, match=r"skipped 2 files .*cat/broken.png"):
        data = open_dataset(f"folder:{tmp_path}")
    assert len(data) == 3 and sorted(data.skipped) == ["cat/broken.png", "dog/notes.txt"]
    assert data.label_names == ["cat", "dog"]
    items = {data[i].id: data[i] for i in range(len(data))}
    assert {k: v.label for k, v in items.items()} == {"cat/deep/b.png": 0, "dog/a.png": 1, "loose.png": -1}
    assert items["dog/a.png"].image.mode == "RGB" and items["dog/a.png"].image.getpixel((0, 0)) == (255, 0, 0)
    assert not data.has_domains and not data.has_boxes and data[-1].id == data[2].id


@pytest.mark.parametrize("setting", [False, True])
def test_a_damaged_image_decodes_in_part_and_leaves_pils_flag_as_it_was(tmp_path, setting, monkeypatch):
    from PIL import ImageFile

    pixels = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    (tmp_path / "cat").mkdir()
    Image.fromarray(pixels).save(tmp_path / "cat" / "whole.jpg")
    data = (tmp_path / "cat" / "whole.jpg").read_bytes()
    (tmp_path / "cat" / "damaged.jpg").write_bytes(data[: len(data) // 2])  # a good header, half a body
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", setting)  # the caller's own choice
    dataset = open_dataset(f"folder:{tmp_path}")
    items = {dataset[i].id: i for i in range(len(dataset))}
    if not setting:
        with pytest.warns(UserWarning, match="damaged.jpg is damaged; using the part that decodes"):
            damaged = dataset[items["cat/damaged.jpg"]]
    else:  # the caller already reads truncated files: PIL decodes it without complaint
        damaged = dataset[items["cat/damaged.jpg"]]
    assert damaged.image.size == (30, 40) and damaged.image.mode == "RGB"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is setting  # not switched off (or left on) for the whole process
    with pytest.raises(OSError, match="truncated") if not setting else contextlib.nullcontext():
        Image.open(tmp_path / "cat" / "damaged.jpg").convert("RGB")  # others still see a damaged file as such


@pytest.mark.parametrize("setting", [False, True])
def test_an_image_spoiled_after_the_scan_is_a_dataset_error_and_pils_flag_stays(tmp_path, setting, monkeypatch):
    from PIL import ImageFile

    (tmp_path / "cat").mkdir()
    _png(tmp_path / "cat" / "a.png", (9, 9, 9))
    _png(tmp_path / "cat" / "b.png", (1, 2, 3))
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", setting)
    dataset = open_dataset(f"folder:{tmp_path}")
    (tmp_path / "cat" / "b.png").write_bytes(b"not an image any more")  # after the scan found it readable
    with pytest.raises(DatasetError, match=r"cannot read .*b.png .*open the dataset again"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "is damaged; using the part that decodes" comes first
            dataset[1]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is setting  # put back even though the decode failed
    assert dataset[0].image.getpixel((0, 0)) == (9, 9, 9)


def test_folder_csv_labels_domains_boxes(tmp_path):
    for name in ("x.png", "y.png", "z.png"):
        _png(tmp_path / name, (9, 9, 9))
    (tmp_path / "labels.csv").write_text("path,label,domain,box\nx.png,bird,photo,1 2 3 4;5 6 7 8\n"
                                         "y.png,fish,sketch,\nz.png,bird,photo,0 0 9 12\nz.png,bird,photo,1 1 2 2\n"
                                         "gone.png,fish,photo,\n")
    with pytest.warns(UserWarning, match="skipped 1 files"):
        data = FolderDataset(tmp_path)
    assert data.has_domains and data.has_boxes and data.label_names == ["bird", "fish"]
    x, y, z = (data[i] for i in range(3))
    assert (x.label, x.domain, y.label, y.domain) == (0, "photo", 1, "sketch")
    assert x.boxes.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]] and y.boxes is None
    assert z.boxes.tolist() == [[0, 0, 9, 12], [1, 1, 2, 2]]  # repeated rows add boxes


def test_folder_json_labels_and_fingerprint_tracks_content(tmp_path):
    _png(tmp_path / "p.png", (1, 2, 3))
    _png(tmp_path / "q.png", (4, 5, 6))
    (tmp_path / "labels.json").write_text(json.dumps({"p.png": "one", "q.png": "two"}))
    data = open_dataset(f"folder:{tmp_path}")
    assert [data[i].label for i in range(2)] == [0, 1] and data.label_names == ["one", "two"]
    before = data.fingerprint()
    assert open_dataset(f"folder:{tmp_path}").fingerprint() == before
    _png(tmp_path / "q.png", (4, 5, 6), size=(30, 30))  # content changed: different size on disk
    assert open_dataset(f"folder:{tmp_path}").fingerprint() != before


def test_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="no folder"):
        open_dataset(f"folder:{tmp_path / 'missing'}")
    with pytest.raises(DatasetError, match="no readable images"):
        open_dataset(f"folder:{tmp_path}")
    (tmp_path / "labels.csv").write_text("file,label\na.png,x\n")
    with pytest.raises(DatasetError, match="needs a `path` column"):
        open_dataset(f"folder:{tmp_path}")


@needs_fmnist
def test_fashion_mnist_matches_raw_idx_files():
    data = open_dataset("fashion-mnist:test")
    raw = gzip.open(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").read()
    labels = gzip.open(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read()
    assert len(data) == 10_000 and data.label_names == FASHION_MNIST_LABELS
    for index in (0, 1234, 9999):
        pixels = np.frombuffer(raw, np.uint8, 784, 16 + 784 * index).reshape(28, 28)
        item = data[index]
        np.testing.assert_array_equal(np.asarray(item.image), np.repeat(pixels[..., None], 3, axis=2))
        assert item.label == labels[8 + index] and item.id == f"test/{index:05d}"


@needs_fmnist
def test_slices_select_the_same_items():
    base, part = open_dataset("fashion-mnist:test"), open_dataset("fashion-mnist:test[100:164:2]")
    assert len(part) == 32 and part.name == "fashion-mnist:test[100:164:2]"
    assert part[3].id == base[106].id and part.label_names == base.label_names
    assert part.fingerprint() != open_dataset("fashion-mnist:test[100:164]").fingerprint()
    assert len(open_dataset("lfw-subset[-10:]")) == 10
    with pytest.raises(DatasetError, match="selects no images"):
        open_dataset("lfw-subset[300:]")


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        FashionMNIST("test", root=tmp_path)
    with pytest.raises(DatasetError, match="fashion-mnist:train"):
        open_dataset("fashion-mnist:validation")


def test_skimage_photos_and_lfw():
    import skimage.data

    photos = open_dataset("skimage-photos")
    ids = [photos[i].id for i in range(len(photos))]
    assert {"astronaut", "chelsea", "coffee", "rocket", "motorcycle", "camera"} <= set(ids)
    astronaut = photos[ids.index("astronaut")]
    np.testing.assert_array_equal(np.asarray(astronaut.image), skimage.data.astronaut())
    assert photos.label_names[astronaut.label] == "person"
    camera = photos[ids.index("camera")].image  # grey -> RGB
    assert camera.mode == "RGB" and np.asarray(camera)[..., 0].tolist() == skimage.data.camera().tolist()
    lfw = open_dataset("lfw-subset")
    assert len(lfw) == 200 and lfw.label_names == ["face", "not face"]
    assert [lfw[i].label for i in (0, 99, 100, 199)] == [0, 0, 1, 1] and lfw[0].image.size == (25, 25)


def test_torchvision_wrapper():
    import torch
    from torchvision.datasets import FakeData

    fake = FakeData(size=6, image_size=(3, 10, 14), num_classes=3, random_offset=7)
    data = from_torchvision(fake, name="fake")
    assert len(data) == 6 and data[2].image.size == (14, 10) and data[2].label == int(fake[2][1])
    pairs = [(torch.rand(3, 8, 8), i % 2) for i in range(4)]  # any (image, target) sequence
    other = from_torchvision(pairs, name="pairs")
    assert other[1].label == 1 and other[1].image.mode == "RGB"
    assert data.fingerprint() != other.fingerprint()


def test_unknown_spec_lists_valid_forms():
    with pytest.raises(DatasetError, match="valid forms are folder:PATH"):
        open_dataset("imagenet")
