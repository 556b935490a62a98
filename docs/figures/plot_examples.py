"""Draw the qualitative figures of docs/experiments.md: synchronised similarity overlays over two layers,
the similarity decomposition of a Fashion-MNIST match, and rotation/scale sensitivity of photo cells.

    PYTHONPATH=. python docs/figures/plot_examples.py FASHION_MNIST_CACHE docs/figures

Uses efficientnet_lite0 (bundled weights, offline) on scikit-image photos, and a Fashion-MNIST cache
of blocks.5 built by `python -m vfs index` (see docs/experiments.md). Needs matplotlib.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import skimage.data
import torch
from PIL import Image

from vfs.analysis.decompose import decompose
from vfs.analysis.overlays import layer_similarity_grids, map_cell
from vfs.analysis.sensitivity import transform_sensitivity
from vfs.cache.reader import open_cache
from vfs.models.features import FeatureExtractor
from vfs.models.loading import load_model
from vfs.retrieval.window import search

PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")
LAYERS = ("blocks.3", "blocks.5")


def view(image: np.ndarray, preprocess, side: int = 224) -> np.ndarray:
    """The centre crop the model sees, side x side."""
    picture = Image.fromarray(image).convert("RGB")
    top, left, bottom, right = preprocess.crop_box(picture.height, picture.width)
    return np.asarray(picture.resize((side, side), Image.Resampling.BICUBIC, box=(left, top, right, bottom)))


def overlays(model, out: Path) -> None:
    images = [getattr(skimage.data, name)() for name in PHOTOS]
    features = {layer: FeatureExtractor(model.module, layer, preprocess=model.preprocess)(images)
                for layer in LAYERS}
    pointed = (5, 3)  # the cat's left eye on the 14x14 grid of blocks.3
    grids = layer_similarity_grids(features, 0, *pointed, grid=(14, 14))
    views = [view(image, model.preprocess) for image in images]
    fig, axes = plt.subplots(len(LAYERS), len(PHOTOS), figsize=(3 * len(PHOTOS), 3.1 * len(LAYERS)))
    for row, layer in enumerate(LAYERS):
        grid = grids[layer]  # (N, h, w)
        h, w = grid.shape[-2:]
        cell = map_cell(*pointed, (14, 14), (h, w))
        low = grid.min()
        for col, name in enumerate(PHOTOS):
            ax = axes[row, col]
            ax.imshow(views[col])
            dark = np.clip((1 - grid[col]) / (1 - low), 0, 1) * 0.9
            ax.imshow(np.zeros((h, w)), cmap="gray", alpha=dark, extent=(0, 224, 224, 0), vmin=0, vmax=1)
            if col == 0:
                size = 224 / h
                ax.add_patch(plt.Rectangle((cell[1] * size, cell[0] * size), size, size, fill=False,
                                           edgecolor="yellow", linewidth=2))
            best = np.unravel_index(np.argmax(grid[col]), grid[col].shape)
            ax.set_title(f"{name}: max {grid[col].max():.2f} at {tuple(int(v) for v in best)}", fontsize=9)
            ax.axis("off")
        axes[row, 0].text(-12, 112, f"{layer} {h}x{w}", rotation=90, va="center", ha="right", fontsize=10)
    fig.suptitle("Similarity overlays: every cell shaded by cosine to the cat's eye (yellow); "
                 "black = lowest cosine shown, untouched = 1", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "overlays-photos.png", dpi=100)


def decomposition(cache_path: str, out: Path) -> None:
    cache = open_cache(cache_path)
    query = 0  # the first test image
    features = np.asarray(cache[query : query + 1], dtype=np.float32)[0]
    match = search(features, np.ones(features.shape[1:], np.float32), cache, k=1, exclude=[query])[0]
    other = np.asarray(cache[match.index : match.index + 1], dtype=np.float32)[0]
    fig, axes = plt.subplots(2, 3, figsize=(9, 6.2))
    for row, pooling in enumerate(("avg", "max")):
        map_a, map_b, score = decompose(features, other, pooling=pooling)
        scale = max(np.abs(map_a).max(), np.abs(map_b).max())
        for col, (index, values) in enumerate(((query, map_a), (match.index, map_b))):
            ax = axes[row, col]
            thumb = np.asarray(cache.thumbnail(index).convert("L").resize((224, 224), Image.Resampling.NEAREST))
            ax.imshow(thumb, cmap="gray")
            ax.imshow(values, cmap="bwr", vmin=-scale, vmax=scale, alpha=0.6, extent=(0, 224, 224, 0),
                      interpolation="bilinear")
            name = cache.label_names[int(cache.labels[index])]
            ax.set_title(f"{'query' if col == 0 else 'match'} #{index} ({name})\nmap sums to {values.sum():.3f}",
                         fontsize=9)
            ax.axis("off")
        ax = axes[row, 2]
        ax.bar(["query map", "match map", "cosine"], [map_a.sum(), map_b.sum(), score], color="#4a7fc1")
        ax.set_title(f"{pooling} pooling: cosine {score:.3f}", fontsize=9)
    fig.suptitle(f"Similarity decomposition (Stylianou et al.), {cache.meta.layer}: red adds, blue subtracts",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "decomposition-fmnist.png", dpi=100)


def sensitivity(model, out: Path) -> None:
    extractor = FeatureExtractor(model.module, "blocks.3")
    cells = {"cat's eye (5, 3)": ("chelsea", (5, 3)), "cat's fur (11, 2)": ("chelsea", (11, 2)),
             "astronaut's face (2, 8)": ("astronaut", (2, 8)), "flag (2, 1)": ("astronaut", (2, 1))}
    angles, scales = list(range(-45, 46, 15)), [0.5, 0.71, 1.0, 1.41, 2.0]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, (name, (row, col)) in cells.items():
        pixels = model.preprocess(getattr(skimage.data, name)())[0]  # (3, 224, 224)
        with torch.inference_mode():
            rotated = transform_sensitivity(pixels, extractor, row, col, angles=angles)
            scaled = transform_sensitivity(pixels, extractor, row, col, scales=scales)
        axes[0].plot(rotated.steps, rotated.similarities, marker="o", label=label)
        axes[1].plot(scaled.steps, scaled.similarities, marker="o", label=label)
    axes[0].set_xlabel("rotation (degrees, counter-clockwise)")
    axes[1].set_xlabel("scale (zoom factor, log axis)")
    axes[1].set_xscale("log")
    axes[1].set_xticks(scales)
    axes[1].set_xticklabels([str(s) for s in scales])
    axes[1].minorticks_off()
    for ax in axes:
        ax.set_ylabel("cosine to the original cell")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle("Sensitivity of blocks.3 (14x14) cells to rotation and scale (corresponding cell in each copy)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "sensitivity-photos.png", dpi=100)


def main() -> None:
    cache_path, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    model = load_model("efficientnet_lite0")
    overlays(model, out)
    decomposition(cache_path, out)
    sensitivity(model, out)


if __name__ == "__main__":
    main()
