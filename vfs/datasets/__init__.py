"""Image sources: folders, CSV/JSON label files, Fashion-MNIST, scikit-image photos, torchvision datasets.

Every dataset has `len()`, `dataset[i] -> ImageItem`, `label_names`, `name` and `fingerprint()` (a
hash of what identifies its content, so a cache can tell which dataset it was built from).
`open_dataset(spec)` understands:

    folder:PATH               images under PATH, recursively; labels from the first sub-folder, or
                              from PATH/labels.csv | PATH/labels.json (or PATH itself a .csv/.json)
    fashion-mnist:test        Debian `dataset-fashion-mnist` (10,000 test / 60,000 train images)
    skimage-photos            scikit-image's bundled photos, labelled by a small category
    lfw-subset                skimage.data.lfw_subset(): 100 faces then 100 non-faces, 25x25
    hf:NAME_OR_PATH[:split]   a Hugging Face dataset: saved to disk, parquet, an image folder, or on
                              the Hub (streamed); columns chosen by name (`vfs.datasets.huggingface`)

and any of them followed by a slice, e.g. `fashion-mnist:test[:500]` or `folder:photos[10:20]`.
Wrap a torchvision dataset (or any `(image, target)` sequence) with `from_torchvision`.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile

from vfs.errors import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# scikit-image photo -> category (the natural photographs it bundles; the rest are masks or synthetic)
SKIMAGE_PHOTOS = {
    "astronaut": "person", "camera": "person", "cat": "animal", "chelsea": "animal",
    "coffee": "object", "rocket": "object", "clock": "object", "coins": "object",
    "motorcycle": "object", "colorwheel": "object", "page": "text", "text": "text",
    "brick": "texture", "grass": "texture", "gravel": "texture", "moon": "science",
    "hubble_deep_field": "science", "immunohistochemistry": "science", "retina": "science",
}
_SHOW = 5  # how many skipped names a warning lists


@dataclass(frozen=True)
class ImageItem:
    image: Image.Image               # RGB, original size
    label: int                       # index into the dataset's label_names; -1 when unknown
    id: str                          # path relative to the dataset root, or a stable name
    domain: str | None = None        # e.g. "photo" / "sketch"; None when the dataset has none
    boxes: np.ndarray | None = None  # (k, 4) float32 (top, left, bottom, right) in original pixels


class ImageDataset:
    """Base of the datasets here: a sized sequence of `ImageItem`s with a name and a fingerprint."""

    name: str = ""
    label_names: list[str]  # label index -> name (set by every dataset)
    has_domains: bool = False  # items carry a domain (a cache then stores them)
    has_boxes: bool = False    # items carry boxes

    def __len__(self) -> int:
        raise NotImplementedError

    def item(self, index: int) -> ImageItem:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def __getitem__(self, index: int) -> ImageItem:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"image {index} is out of range for {self.name!r} ({n} images)")
        return self.item(int(index) % n)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {len(self)} images, {len(self.label_names)} labels>"


def _sha(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def _rgb(image: Any) -> Image.Image:
    """PIL image, (H, W[, 3|4]) array (uint8, bool or float in [0, 1]) or (3, H, W) tensor -> RGB PIL."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # (H, W, C)
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]  # (H, W)
    return Image.fromarray(array).convert("RGB")


class SlicedDataset(ImageDataset):
    """The images `indices` of another dataset, renumbered from 0."""

    def __init__(self, base: ImageDataset, indices: Sequence[int], *, name: str):
        self.base, self.indices, self.name = base, list(indices), name
        self.label_names = base.label_names
        self.has_domains, self.has_boxes = base.has_domains, base.has_boxes

    def __len__(self) -> int:
        return len(self.indices)

    def item(self, index: int) -> ImageItem:
        return self.base[self.indices[index]]

    def fingerprint(self) -> str:
        return _sha(self.base.fingerprint(), self.indices)


class FolderDataset(ImageDataset):
    """Image files under a folder; labels from sub-folders or a CSV/JSON `path,label[,domain][,box]` file.

    A box column holds `top left bottom right` in pixels; several boxes are separated by `;`, or the
    same path is repeated on several rows. Files that are not images, or whose header cannot be read,
    are skipped (listed in `skipped`, with a warning).
    """

    def __init__(self, path: str | Path, *, labels_file: str | Path | None = None, name: str | None = None):
        path = Path(path).expanduser()
        if path.is_file() and path.suffix.lower() in (".csv", ".json"):
            path, labels_file = path.parent, path
        if not path.is_dir():
            raise DatasetError(f"no folder at {path}: give `folder:PATH` with PATH a folder of images "
                               "(or a labels .csv/.json beside them)")
        for candidate in ("labels.csv", "labels.json"):
            if labels_file is None and (path / candidate).is_file():
                labels_file = path / candidate
        self.root, self.name = path, name or f"folder:{path}"
        rows = self._read_labels(Path(labels_file)) if labels_file else self._scan()
        self.skipped: list[str] = []
        kept = [row for row in rows if self._readable(row[0])]
        if self.skipped:
            warnings.warn(f"{self.name}: skipped {len(self.skipped)} files that are not readable images "
                          f"(first: {', '.join(self.skipped[:_SHOW])})", stacklevel=3)
        if not kept:
            raise DatasetError(f"no readable images in {path} (looked for {', '.join(IMAGE_SUFFIXES)})")
        names = sorted({row[1] for row in kept if row[1] is not None})
        self.label_names = names
        lookup = {label: i for i, label in enumerate(names)}
        self._rows = [(rel, -1 if label is None else lookup[label], domain, boxes)
                      for rel, label, domain, boxes in kept]
        self.has_domains = any(row[2] is not None for row in self._rows)
        self.has_boxes = any(row[3] is not None for row in self._rows)
        self._sizes = [(self.root / row[0]).stat().st_size for row in self._rows]

    def _scan(self) -> list[tuple[str, str | None, None, None]]:
        rows = []
        for file in sorted(p for p in self.root.rglob("*") if p.is_file()):
            rel = file.relative_to(self.root)
            rows.append((rel.as_posix(), rel.parts[0] if len(rel.parts) > 1 else None, None, None))
        return rows

    def _read_labels(self, file: Path) -> list[tuple[str, str | None, str | None, list[list[float]] | None]]:
        try:
            if file.suffix.lower() == ".json":
                records = json.loads(file.read_text())
                if isinstance(records, dict):
                    records = [{"path": k, "label": v} for k, v in records.items()]
            else:
                with file.open(newline="") as handle:
                    records = list(csv.DictReader(handle))
        except (OSError, ValueError) as error:
            raise DatasetError(f"cannot read labels file {file}: {error}") from error
        merged: dict[str, list[Any]] = {}  # path -> [path, label, domain, boxes], filled record by record
        for number, record in enumerate(records, 1):
            if not isinstance(record, dict) or not record.get("path"):
                raise DatasetError(f"{file}, record {number}: needs a `path` column/key "
                                   "(columns: path,label[,domain][,box])")
            label = record.get("label")
            boxes = record.get("boxes", record.get("box"))
            if isinstance(boxes, str):
                boxes = [[float(v) for v in part.split()] for part in boxes.split(";") if part.strip()]
            if boxes is not None and any(len(box) != 4 for box in boxes):
                raise DatasetError(f"{file}, record {number}: a box is `top left bottom right` (4 numbers)")
            row = merged.setdefault(record["path"], [record["path"], None, None, None])
            row[1] = None if label in (None, "") else str(label)
            row[2] = record.get("domain") or None
            if boxes:
                row[3] = (row[3] or []) + boxes
        return [tuple(row) for row in merged.values()]

    def _readable(self, rel: str) -> bool:
        file = self.root / rel
        try:
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                raise OSError("not an image suffix")
            with Image.open(file):  # reads and checks the header only
                return True
        except OSError:
            self.skipped.append(rel)
            return False

    def __len__(self) -> int:
        return len(self._rows)

    def item(self, index: int) -> ImageItem:
        rel, label, domain, boxes = self._rows[index]
        try:
            with Image.open(self.root / rel) as image:
                rgb = image.convert("RGB")
        except OSError:  # a body damaged past a good header: keep what decodes, say so
            warnings.warn(f"{self.root / rel} is damaged; using the part that decodes", stacklevel=2)
            try:
                rgb = _decode_truncated(self.root / rel)
            except OSError as error:  # not even its header reads now: changed since the folder was scanned
                raise DatasetError(f"cannot read {self.root / rel} ({error}): it was readable when the dataset was "
                                   "opened; restore the file, or open the dataset again to skip it") from error
        box_array = None if boxes is None else np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        return ImageItem(rgb, label, rel, domain, box_array)

    def fingerprint(self) -> str:
        return _sha([(row[0], row[1], row[2], row[3], size) for row, size in zip(self._rows, self._sizes)],
                    self.label_names)


# PIL reads truncated files only under a process-wide flag: one decode at a time flips it, then puts
# back whatever it was (a caller's own True included)
_TRUNCATED_LOCK = threading.Lock()


def _decode_truncated(file: Path) -> Image.Image:
    """The part of a damaged image file that decodes, as RGB."""
    with _TRUNCATED_LOCK:
        before = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            with Image.open(file) as image:
                return image.convert("RGB")
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = before


def _read_idx(file: Path) -> np.ndarray:
    """An idx file (the MNIST format: magic, sizes, then big-endian data) -> numpy array."""
    with gzip.open(file, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    shape = tuple(int(v) for v in np.frombuffer(data, ">u4", count=ndim, offset=4))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


class FashionMNIST(ImageDataset):
    """Fashion-MNIST from the Debian package `dataset-fashion-mnist`: 28x28 grey images, 10 classes."""

    def __init__(self, split: str = "test", *, root: Path = FASHION_MNIST_DIR):
        if split not in ("test", "train"):
            raise DatasetError(f"unknown Fashion-MNIST split {split!r}: use fashion-mnist:test or fashion-mnist:train")
        prefix = "t10k" if split == "test" else "train"
        self._files = [root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"]
        missing = [str(f) for f in self._files if not f.is_file()]
        if missing:
            raise DatasetError(f"Fashion-MNIST files missing ({', '.join(missing)}): "
                               "install them with `apt-get install dataset-fashion-mnist`")
        self.name, self.split, self.label_names = f"fashion-mnist:{split}", split, list(FASHION_MNIST_LABELS)
        self.images = _read_idx(self._files[0])  # (N, 28, 28) uint8
        self.labels = _read_idx(self._files[1]).astype(np.int64)  # (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def item(self, index: int) -> ImageItem:
        return ImageItem(Image.fromarray(self.images[index]).convert("RGB"), int(self.labels[index]),
                         f"{self.split}/{index:05d}")

    def fingerprint(self) -> str:
        return _sha(self.name, [hashlib.sha256(f.read_bytes()).hexdigest() for f in self._files])


class ArrayDataset(ImageDataset):
    """Images held in memory (PIL images or arrays) with labels and ids."""

    def __init__(self, images: Sequence[Any], *, name: str, labels: Sequence[int] | None = None,
                 label_names: Sequence[str] = (), ids: Sequence[str] | None = None):
        self.name, self.label_names = name, list(label_names)
        self._images = list(images)
        self._labels = [-1] * len(self._images) if labels is None else [int(v) for v in labels]
        self._ids = [f"{i:05d}" for i in range(len(self._images))] if ids is None else list(ids)
        if not len(self._images) == len(self._labels) == len(self._ids):
            raise DatasetError(f"{len(self._images)} images, {len(self._labels)} labels and "
                               f"{len(self._ids)} ids: give one label and one id per image")

    def __len__(self) -> int:
        return len(self._images)

    def item(self, index: int) -> ImageItem:
        return ImageItem(_rgb(self._images[index]), self._labels[index], self._ids[index])

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for index in range(len(self)):
            digest.update(np.ascontiguousarray(np.asarray(self.item(index).image)).tobytes())
        return _sha(self.name, self._labels, self._ids, self.label_names, digest.hexdigest())


def skimage_photos() -> ArrayDataset:
    """scikit-image's bundled natural photos as RGB, labelled by category (person, animal, object...)."""
    import skimage.data

    names = sorted(SKIMAGE_PHOTOS)
    # skimage ships py.typed but leaves its data loaders unannotated: each returns an ndarray
    images = [skimage.data.stereo_motorcycle()[0] if n == "motorcycle"  # type: ignore[no-untyped-call]
              else getattr(skimage.data, n)()
              for n in names]
    categories = sorted(set(SKIMAGE_PHOTOS.values()))
    return ArrayDataset(images, name="skimage-photos", ids=names, label_names=categories,
                        labels=[categories.index(SKIMAGE_PHOTOS[n]) for n in names])


def lfw_subset() -> ArrayDataset:
    """skimage.data.lfw_subset(): 200 grey 25x25 images, the first 100 faces, the other 100 not."""
    import skimage.data

    images = skimage.data.lfw_subset()  # type: ignore[no-untyped-call]  # unannotated; (200, 25, 25) float64 in [0, 1]
    return ArrayDataset(list(images), name="lfw-subset", labels=[0] * 100 + [1] * 100,
                        label_names=["face", "not face"])


class TorchvisionDataset(ImageDataset):
    """A torchvision dataset (or any sequence of `(image, target)` pairs) as an `ImageDataset`."""

    def __init__(self, dataset: Any, *, name: str, label_names: Sequence[str] | None = None):
        self.dataset, self.name = dataset, name
        self.label_names = list(label_names if label_names is not None else getattr(dataset, "classes", []))

    def __len__(self) -> int:
        return len(self.dataset)

    def item(self, index: int) -> ImageItem:
        sample = self.dataset[index]
        image, target = (sample[0], sample[1]) if isinstance(sample, (tuple, list)) else (sample, -1)
        label = int(target) if isinstance(target, (int, np.integer)) or getattr(target, "ndim", 1) == 0 else -1
        files = getattr(self.dataset, "samples", None)
        return ImageItem(_rgb(image), label, str(files[index][0]) if files else f"{index:06d}")

    def fingerprint(self) -> str:
        content: Any = getattr(self.dataset, "samples", None)
        data = getattr(self.dataset, "data", None)
        if content is None and data is not None and hasattr(data, "__array__"):
            content = hashlib.sha256(np.ascontiguousarray(np.asarray(data)).tobytes()).hexdigest()
        return _sha(self.name, len(self), self.label_names, content if content is not None else repr(self.dataset))


def from_torchvision(dataset: Any, *, name: str | None = None) -> TorchvisionDataset:
    """Wrap a torchvision dataset object; `name` defaults to its class name."""
    return TorchvisionDataset(dataset, name=name or f"torchvision:{type(dataset).__name__}")


_SLICE = re.compile(r"^(?P<base>.*?)\[(?P<start>-?\d*):(?P<stop>-?\d*)(?::(?P<step>-?\d*))?\]$")
SPECS = ("folder:PATH, fashion-mnist:test, fashion-mnist:train, skimage-photos, lfw-subset, "
         "hf:NAME_OR_PATH[:split][?label=COLUMN&box=COLUMN...] (each may end in [a:b])")


def open_dataset(spec: str) -> ImageDataset:
    """Open a dataset from a spec string (see the module docstring), e.g. `fashion-mnist:test[:500]`."""
    match = _SLICE.match(spec.strip())
    if match:
        base = open_dataset(match["base"])
        bounds = slice(*(int(match[k]) if match[k] else None for k in ("start", "stop", "step")))
        indices = range(len(base))[bounds]
        if not indices:
            raise DatasetError(f"{spec!r} selects no images ({match['base']} has {len(base)})")
        return SlicedDataset(base, indices, name=spec.strip())
    kind, _, argument = spec.strip().partition(":")
    if kind == "folder" and argument:
        return FolderDataset(argument, name=spec.strip())
    if kind == "fashion-mnist":
        return FashionMNIST(argument or "test")
    if kind == "skimage-photos" and not argument:
        return skimage_photos()
    if kind == "lfw-subset" and not argument:
        return lfw_subset()
    if kind == "hf" and argument:
        from vfs.datasets.huggingface import open_huggingface

        return open_huggingface(argument)
    raise DatasetError(f"unknown dataset spec {spec!r}: valid forms are {SPECS}")
