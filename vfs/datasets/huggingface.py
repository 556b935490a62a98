"""Hugging Face `datasets` as image sources: the spec `hf:NAME_OR_PATH[:split][?option=value&...]`.

    hf:./faces_saved                  a dataset saved with `save_to_disk` (a Dataset or a DatasetDict)
    hf:./data/*.parquet:test          parquet files, or a folder of them
    hf:./photos                       an image folder (`imagefolder`, metadata.csv/jsonl columns kept)
    hf:user/iwildcam:test             a dataset on the Hub, streamed (nothing downloaded up front)
    hf:PATH?label=fine_label&domain=location&box=faces.bbox&box_format=xywh

Options choose columns by name: `image`, `label`, `domain`, `box` (a dotted path reaches into a
struct or a list of structs, e.g. `objects.bbox`), and `box_format`: `xywh` (COCO, the Hub's usual
`bbox`: left, top, width, height; the default), `xyxy` (left, top, right, bottom) or `tlbr` (vfs's
own top, left, bottom, right). `config` and `revision` pick a Hub configuration and commit. Unnamed
columns are found by type or name: the first `Image` column; the first `ClassLabel` column, else one
named `label`/`labels`; a column named `domain`; `boxes`, `bbox`, `objects.bbox` or `faces.bbox`.

`datasets` is imported only when such a spec is opened (`pip install datasets`); it is optional.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl

import numpy as np

from vfs.datasets import ImageDataset, ImageItem, _rgb
from vfs.errors import DatasetError

OPTIONS = ("image", "label", "domain", "box", "box_format", "config", "revision")
BOX_FORMATS = ("xywh", "xyxy", "tlbr")
BOX_GUESSES = ("boxes", "bbox", "objects.bbox", "faces.bbox")


def open_huggingface(argument: str) -> HuggingFaceDataset:
    """The dataset of `hf:` + `argument` (see the module docstring)."""
    where, _, query = argument.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise DatasetError(f"unknown option(s) {', '.join(unknown)} in hf:{argument}: valid options are "
                           f"{', '.join(OPTIONS)} (e.g. hf:PATH:test?label=fine_label&box=objects.bbox)")
    if options.get("box_format", "xywh") not in BOX_FORMATS:
        raise DatasetError(f"box_format={options['box_format']!r}: use one of {', '.join(BOX_FORMATS)}")
    name, split = where, None
    head, colon, tail = where.rpartition(":")
    if colon and head and tail and "/" not in tail and not Path(where).expanduser().exists():
        name, split = head, tail
    if not name:
        raise DatasetError("hf: needs a dataset: hf:NAME_OR_PATH[:split], e.g. hf:./saved_dataset:test")
    datasets = _import_datasets()
    data, streaming = _load(datasets, name, split, options)
    return HuggingFaceDataset(data, spec=f"hf:{argument}", options=options, streaming=streaming)


def _import_datasets() -> ModuleType:
    try:
        import datasets
    except ImportError as error:
        raise DatasetError("hf: dataset specs need the Hugging Face `datasets` package, which is not installed: "
                           "pip install datasets") from error
    return datasets


def _load(datasets: ModuleType, name: str, split: str | None, options: dict[str, str]) -> tuple[Any, bool]:
    """(dataset, streaming): local data read whole (memory-mapped arrow), a Hub name streamed."""
    path = Path(name).expanduser()
    try:
        if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
            return _pick_split(datasets.load_from_disk(str(path)), split, name), False
        if path.exists() or any(c in name for c in "*?["):
            if path.suffix == ".parquet" or (not path.exists() and name.endswith(".parquet")):
                loaded = datasets.load_dataset("parquet", data_files=str(path))
            else:
                loaded = datasets.load_dataset(str(path))
            return _pick_split(loaded, split, name), False
        loaded = datasets.load_dataset(name, options.get("config"), split=split or "train", streaming=True,
                                       revision=options.get("revision"))
        return loaded, True
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as error:
        raise DatasetError(f"cannot open hf:{name}{':' + split if split else ''}: {error}. Give a folder saved with "
                           "save_to_disk, parquet files, an image folder, or a Hub dataset name") from error


def _pick_split(loaded: Any, split: str | None, name: str) -> Any:
    if not hasattr(loaded, "keys"):  # a single Dataset
        return loaded
    splits = list(loaded.keys())
    chosen = split or ("train" if "train" in splits else splits[0] if len(splits) == 1 else None)
    if chosen not in splits:
        raise DatasetError(f"hf:{name} has splits {', '.join(splits)}: name one, e.g. hf:{name}:{splits[0]}")
    return loaded[chosen]


class HuggingFaceDataset(ImageDataset):
    """A Hugging Face `Dataset` (random access) or streamed `IterableDataset` (read in order) of images."""

    def __init__(self, data: Any, *, spec: str, options: dict[str, str], streaming: bool):
        self.data, self.name, self.streaming = data, spec, streaming
        features = dict(data.features or {}) if data.features is not None else {}
        image_column = options.get("image") or _first_image_column(features)
        if image_column is None:
            raise DatasetError(f"{spec}: no image column found among {', '.join(features) or 'its columns'}: "
                               "name it with ?image=COLUMN")
        self.image_column: str = image_column
        self.label_column = options.get("label") or _guess_label(features)
        self.domain_column = options.get("domain") or ("domain" if "domain" in features else None)
        self.box_column = options.get("box") or next((c for c in BOX_GUESSES if _has_path(features, c)), None)
        self.box_format = options.get("box_format", "xywh")
        for role, column in (("image", self.image_column), ("label", self.label_column),
                             ("domain", self.domain_column), ("box", self.box_column)):
            if column is not None and features and not _has_path(features, column):
                raise DatasetError(f"{spec}: no column {column!r} for the {role}; columns: {', '.join(features)}")
        self.label_names, self._label_codes = self._labels(features)
        self.has_domains, self.has_boxes = self.domain_column is not None, self.box_column is not None
        self._length = self._count()
        self._iterator: Iterator[dict[str, Any]] | None = None  # the stream, read up to row _position
        self._position = 0

    def _labels(self, features: dict[str, Any]) -> tuple[list[str], dict[str, int] | None]:
        """Label names, and a value -> index map for labels that are not ClassLabel integers."""
        column = self.label_column
        if column is None:
            return [], None
        feature: Any = features.get(column)  # a `datasets` feature type, or None
        if hasattr(feature, "names"):  # ClassLabel
            return list(feature.names), None
        if self.streaming:
            return [], None  # integer labels pass through; names are not known without reading everything
        values = sorted({str(v) for v in self.data[column]})
        return values, {v: i for i, v in enumerate(values)}

    def _count(self) -> int:
        if not self.streaming:
            return len(self.data)
        splits = getattr(self.data.info, "splits", None) or {}
        split = splits.get(str(self.data.split)) if self.data.split is not None else None
        if split is None or not split.num_examples:
            raise DatasetError(f"{self.name}: the size of this streamed split is not known, so it cannot be indexed; "
                               "save it locally (load_dataset(...).save_to_disk(PATH)) and use hf:PATH")
        return int(split.num_examples)

    def __len__(self) -> int:
        return self._length

    def _row(self, index: int) -> dict[str, Any]:
        if not self.streaming:
            return self.data[index]
        if self._iterator is None or index < self._position:  # streams read forward only: restart
            self._iterator, self._position = iter(self.data), 0
        while self._position < index:
            next(self._iterator)
            self._position += 1
        self._position += 1
        return next(self._iterator)

    def item(self, index: int) -> ImageItem:
        row = self._row(index)
        label = -1
        if self.label_column is not None:
            value = _get(row, self.label_column)
            if self._label_codes is not None:
                label = self._label_codes[str(value)]
            elif value is not None and int(value) >= 0:
                label = int(value)
        domain = None if self.domain_column is None else str(_get(row, self.domain_column))
        boxes = None if self.box_column is None else _boxes(_get(row, self.box_column), self.box_format)
        return ImageItem(_rgb(_get(row, self.image_column)), label, f"{index:07d}", domain, boxes)

    def fingerprint(self) -> str:
        content = getattr(self.data, "_fingerprint", None)  # set by `datasets` from the data files' content
        if self.streaming or content is None:
            info = self.data.info
            content = [info.dataset_name, info.config_name, str(info.version), str(self.data.split),
                       getattr(info, "download_checksums", None)]
        columns = [self.image_column, self.label_column, self.domain_column, self.box_column, self.box_format]
        where = self.name if self.streaming else None  # local data: the content, not the path, identifies it
        text = json.dumps([where, len(self), content, columns, self.label_names], default=str)
        return hashlib.sha256(text.encode()).hexdigest()


def _first_image_column(features: dict[str, Any]) -> str | None:
    for name, feature in features.items():
        if type(feature).__name__ == "Image":
            return name
    return next((c for c in ("image", "img") if c in features), None)


def _guess_label(features: dict[str, Any]) -> str | None:
    for name, feature in features.items():
        if hasattr(feature, "names") and type(feature).__name__ == "ClassLabel":
            return name
    return next((c for c in ("label", "labels") if c in features), None)


def _has_path(features: Any, path: str) -> bool:
    """Whether the dotted `path` names a column or a field of a struct / list of structs."""
    node = features
    for part in path.split("."):
        node = getattr(node, "feature", node)  # a List/Sequence of structs: look inside
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    return True


def _get(row: dict[str, Any], path: str) -> Any:
    """The value at a dotted `path`; a list of structs gives the list of that field."""
    value: Any = row
    for part in path.split("."):
        if isinstance(value, list):
            value = [entry[part] for entry in value]
        else:
            value = value[part]
    return value


def _boxes(value: Any, box_format: str) -> np.ndarray | None:
    """(k, 4) float32 (top, left, bottom, right) from boxes in `box_format`; None when there are none."""
    if value is None:
        return None
    array = np.asarray(value, dtype=np.float32).reshape(-1, 4)  # (k, 4)
    if len(array) == 0:
        return None
    if box_format == "tlbr":
        return array
    x, y, a, b = array.T
    right, bottom = (x + a, y + b) if box_format == "xywh" else (a, b)
    return np.stack([y, x, bottom, right], axis=1).astype(np.float32)  # (k, 4)
