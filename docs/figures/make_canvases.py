"""Make the "objects on canvases" dataset of docs/experiments.md: Fashion-MNIST items pasted at random
sizes and places on 256x256 backgrounds of three kinds (the domains), with their boxes.

    PYTHONPATH=. python docs/figures/make_canvases.py OUT_FOLDER [--count 600] [--seed 0] [--empty 0.0]

Writes OUT_FOLDER/NNNNN.png and OUT_FOLDER/labels.csv (path,label,domain,box), readable as
`folder:OUT_FOLDER`. Items come from the Fashion-MNIST *train* split, so they are not the test images
of the other experiments. Boxes are the tight box of the pasted item's visible pixels (intensity > 25).
`--empty F` leaves a share F of the canvases without an item (no label, no box): a box query that
retrieves one of them has found background, a miss (IoU 0) in `experiment iou` / `v1-fig8`.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

from vfs.datasets import FashionMNIST

SIDE = 256  # canvas side; the model's centre crop (224 of 256) keeps [16, 240)
MARGIN = 16


def background(kind: str, rng: np.random.Generator) -> np.ndarray:
    """(SIDE, SIDE) float32 in [0, 255]: flat grey, noise, or stripes at a random angle."""
    if kind == "flat":
        return np.full((SIDE, SIDE), rng.uniform(20, 120), np.float32)
    if kind == "noise":
        return np.clip(rng.normal(rng.uniform(40, 110), 35, (SIDE, SIDE)), 0, 255).astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(8, 24)
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    wave = np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period)
    return (70 + 45 * wave).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--empty", type=float, default=0.0, help="share of canvases left without an item")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    items = FashionMNIST("train")
    names = items.label_names
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in range(args.count):
        index = int(rng.integers(len(items)))
        domain = ("flat", "noise", "stripes")[n % 3]
        canvas = background(domain, rng)
        if args.empty > 0 and rng.random() < args.empty:  # no rng draw otherwise: --empty 0 keeps old canvases
            name = f"{n:05d}.png"
            Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).convert("RGB").save(args.out / name)
            rows.append({"path": name, "label": "", "domain": domain, "box": ""})
            continue
        side = int(rng.integers(40, 200))
        top = int(rng.integers(MARGIN, SIDE - MARGIN - side + 1))
        left = int(rng.integers(MARGIN, SIDE - MARGIN - side + 1))
        item = np.asarray(Image.fromarray(items.images[index]).resize((side, side), Image.Resampling.BILINEAR),
                          np.float32)  # (side, side)
        alpha = item / 255.0
        patch = canvas[top : top + side, left : left + side]
        canvas[top : top + side, left : left + side] = patch * (1 - alpha) + 255.0 * alpha
        ys, xs = np.nonzero(item > 25)
        box = (top + ys.min(), left + xs.min(), top + ys.max() + 1, left + xs.max() + 1)
        name = f"{n:05d}.png"
        Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).convert("RGB").save(args.out / name)
        rows.append({"path": name, "label": names[int(items.labels[index])], "domain": domain,
                     "box": " ".join(str(int(v)) for v in box)})
    with (args.out / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "domain", "box"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} canvases in {args.out}")


if __name__ == "__main__":
    main()
