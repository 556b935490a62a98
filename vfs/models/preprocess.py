"""`Preprocess`: resize the shorter side, centre-crop, normalise; and the same geometry for masks.

The model sees a `crop x crop` square cut from the middle of the image after its shorter side was
resized to `size`. Everything that maps between the original image and the model input (masks,
boxes, feature windows) goes through `Preprocess.resized_size` and `Preprocess.crop_box`, so pixels
and features stay aligned. Resizing follows torchvision's `Resize(size)` + `CenterCrop(crop)`
exactly (the longer side is truncated to an int; the crop offset is rounded), which is also what
timm's eval transform does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from vfs.errors import DatasetError, MaskError, ModelError

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocess:
    """Shorter side -> `size` pixels, centre crop `crop x crop`, then `(x - mean) / std` on [0, 1]."""

    size: int  # shorter side resized to this many pixels
    crop: int  # then a centre crop of crop x crop
    mean: tuple[float, float, float]  # per-channel mean of [0, 1] pixels
    std: tuple[float, float, float]  # per-channel std of [0, 1] pixels
    interpolation: str = "bilinear"  # "nearest", "bilinear" or "bicubic"

    def __post_init__(self) -> None:
        if self.crop < 1 or self.size < self.crop:
            raise ModelError(
                f"Preprocess needs 1 <= crop <= size, got size={self.size}, crop={self.crop}: the shorter side is "
                "resized to `size` first, then a `crop` square is cut from its middle"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ModelError(f"interpolation {self.interpolation!r} is not one of {INTERPOLATIONS}: pick one of those")

    def __call__(self, images: Any) -> torch.Tensor:
        """PIL image(s), (H, W, 3) uint8 array(s), (B, H, W, 3) array, or (3, H, W) tensor(s) -> (B, 3, crop, crop).

        PIL images and uint8 arrays ((H, W), (H, W, 3) or RGBA) are resized with PIL, as timm and
        torchvision do; float arrays (in [0, 1]) and tensors (uint8, or float in [0, 1]) with torch
        (antialiased), which differs by a few 1/255 steps. The result is float32, normalised.
        """
        batch = [self._one(image) for image in _as_list(images)]  # each (3, crop, crop)
        if not batch:
            raise DatasetError("no images to preprocess: pass at least one image")
        pixels = torch.stack(batch)  # (B, 3, crop, crop) in [0, 1]
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return (pixels - mean) / std  # (B, 3, crop, crop)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after resizing the shorter side to `size` (longer side truncated, as torchvision)."""
        if height < 1 or width < 1:
            raise DatasetError(f"image size must be positive, got {height}x{width}: pass a non-empty image")
        if height <= width:
            return self.size, int(self.size * width / height)
        return int(self.size * height / width), self.size

    def crop_box(self, height: int, width: int) -> tuple[float, float, float, float]:
        """(top, left, bottom, right) in original pixels of the region the model sees."""
        resized_h, resized_w = self.resized_size(height, width)
        top, left = self._crop_offset(resized_h, resized_w)
        scale_y, scale_x = height / resized_h, width / resized_w
        return (top * scale_y, left * scale_x, (top + self.crop) * scale_y, (left + self.crop) * scale_x)

    def map_mask(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) mask on the original image -> (crop, crop) coverage in [0, 1] on the model input.

        Each model-input pixel gets the exact fraction of its footprint on the original image that
        the mask covers (area averaging), so thin strokes stay fractional instead of vanishing.
        """
        mask = np.asarray(mask, dtype=np.float64)
        if mask.ndim != 2:
            raise MaskError(f"map_mask takes an (H, W) mask, got shape {mask.shape}")
        return area_resample(mask, self.crop_box(*mask.shape), (self.crop, self.crop))

    def _crop_offset(self, resized_h: int, resized_w: int) -> tuple[int, int]:
        """Top-left corner of the centre crop in resized pixels (torchvision's rounding)."""
        return int(round((resized_h - self.crop) / 2.0)), int(round((resized_w - self.crop) / 2.0))

    def _one(self, image: Any) -> torch.Tensor:
        """One image -> (3, crop, crop) float32 in [0, 1]."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        mode = InterpolationMode(self.interpolation)
        if isinstance(image, np.ndarray) and image.dtype == np.uint8:
            image = Image.fromarray(image)
        elif isinstance(image, np.ndarray):  # float in [0, 1]: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)
            array = image[:, :, None] if image.ndim == 2 else image  # (H, W, c)
            array = np.repeat(array, 3, axis=2) if array.ndim == 3 and array.shape[2] == 1 else array[:, :, :3]
            image = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)  # (3, H, W)
        if isinstance(image, Image.Image):
            image = image.convert("RGB")
            resized_h, resized_w = self.resized_size(image.height, image.width)
            image = TF.resize(image, [resized_h, resized_w], interpolation=mode)
            top, left = self._crop_offset(resized_h, resized_w)
            image = image.crop((left, top, left + self.crop, top + self.crop))
            array = np.asarray(image, dtype=np.float32) / 255.0  # (crop, crop, 3)
            return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # (3, crop, crop)
        if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
            raise DatasetError(
                f"cannot preprocess {type(image).__name__} of shape {getattr(image, 'shape', None)}: "
                "pass PIL images, (H, W, 3) uint8 arrays or (3, H, W) tensors"
            )
        pixels = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()  # (3, H, W)
        resized_h, resized_w = self.resized_size(pixels.shape[1], pixels.shape[2])
        pixels = TF.resize(pixels, [resized_h, resized_w], interpolation=mode, antialias=True)  # (3, h', w')
        top, left = self._crop_offset(resized_h, resized_w)
        return pixels[:, top : top + self.crop, left : left + self.crop].clamp(0.0, 1.0)  # (3, crop, crop)


def area_resample(
    mask: np.ndarray, box: Sequence[float], shape: tuple[int, int]
) -> np.ndarray:
    """Average of `mask` over each cell of a regular `shape` grid laid over `box`.

    `box` is (top, left, bottom, right) in mask pixel coordinates (fractional allowed); pixels
    outside the mask count as 0. Exact area weighting, computed as `rows @ mask @ cols.T`.
    Returns (shape[0], shape[1]) float32.
    """
    top, left, bottom, right = (float(v) for v in box)
    rows = _overlap_matrix(top, bottom, shape[0], mask.shape[0])  # (h, H)
    cols = _overlap_matrix(left, right, shape[1], mask.shape[1])  # (w, W)
    return (rows @ np.asarray(mask, dtype=np.float64) @ cols.T).astype(np.float32)  # (h, w)


def _overlap_matrix(start: float, stop: float, n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in): fraction of output bin i (bins split [start, stop] evenly) covered by input pixel k."""
    edges = np.linspace(start, stop, n_out + 1)
    low, high = edges[:-1, None], edges[1:, None]  # (n_out, 1)
    pixel = np.arange(n_in, dtype=np.float64)[None, :]  # (1, n_in)
    overlap = np.clip(np.minimum(high, pixel + 1.0) - np.maximum(low, pixel), 0.0, None)  # (n_out, n_in)
    return overlap / (high - low)


def _as_list(images: Any) -> list[Any]:
    """A single image or a batch -> a list of single images."""
    if isinstance(images, Image.Image):
        return [images]
    if isinstance(images, np.ndarray):
        single = images.ndim == 2 or (images.ndim == 3 and images.shape[2] in (1, 3, 4))  # (H, W[, c])
        return [images] if single else list(images)  # else (B, H, W[, c])
    if isinstance(images, torch.Tensor):
        return [images] if images.ndim == 3 else list(images)
    return list(images)
