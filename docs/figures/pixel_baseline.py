"""Raw-pixel baseline for docs/experiments.md: the same queries as `python -m vfs experiment
labels|auroc CACHE --queries Q --seed S`, scored by the cosine of the raw grey pixels of whole images.

    PYTHONPATH=. python docs/figures/pixel_baseline.py --dataset 'fashion-mnist:test[:2000]' --queries 500
    PYTHONPATH=. python docs/figures/pixel_baseline.py --dataset lfw-subset --queries 0
"""

from __future__ import annotations

import argparse

import numpy as np

from vfs.analysis.experiment import choose_queries
from vfs.analysis.metrics import Neighbours, auroc, distinct_labels, same_label_fraction
from vfs.datasets import open_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion-mnist:test[:2000]", help="dataset spec of the cache")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()
    data = open_dataset(args.dataset)
    items = [data[i] for i in range(len(data))]
    count = len(items)
    pixels = np.stack([np.asarray(item.image.convert("L"), np.float64).ravel() for item in items])  # (N, H*W)
    pixels /= np.maximum(np.linalg.norm(pixels, axis=1, keepdims=True), 1e-12)  # an all-black image stays 0
    labels = np.array([item.label for item in items])
    queries = choose_queries(count, args.queries, seed=args.seed)
    scores = pixels[queries] @ pixels.T  # (Q, N)
    rows = np.arange(len(queries))
    scores[rows, queries] = -np.inf  # leave the query out
    top = np.argsort(-scores, axis=1, kind="stable")[:, : args.k]  # (Q, k)
    zeros = np.zeros_like(top)
    ones = np.ones(len(queries), np.int64)
    nb = Neighbours(queries, top, scores[rows[:, None], top].astype(np.float32), zeros, zeros, ones, ones)
    keep = [np.arange(count) != q for q in queries]
    aurocs = [auroc(scores[i, keep[i]], labels[keep[i]] == labels[q]) for i, q in enumerate(queries)]
    print(f"raw pixels of {args.dataset}, {len(queries)} queries over {count} images: "
          f"distinct@{args.k} {distinct_labels(nb, labels).mean():.3f}, "
          f"precision@{args.k} {same_label_fraction(nb, labels).mean():.3f}, "
          f"mean per-query AUROC {np.mean(aurocs):.3f}")
    shares = np.bincount(labels, minlength=len(data.label_names)) / count
    print(f"random top {args.k}: expected distinct labels {sum(1 - (1 - p) ** args.k for p in shares):.3f}, "
          f"precision {np.sum(shares ** 2):.3f}")


if __name__ == "__main__":
    main()
