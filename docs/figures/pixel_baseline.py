"""Raw-pixel baseline for docs/experiments.md: the same Fashion-MNIST queries as `python -m vfs
experiment labels|auroc ... --queries 500 --seed 0`, scored by the cosine of the raw 28x28 pixels.

    PYTHONPATH=. python docs/figures/pixel_baseline.py [--count 2000] [--queries 500] [--seed 0] [--k 5]
"""

from __future__ import annotations

import argparse

import numpy as np

from vfs.datasets import FashionMNIST
from vfs.experiment import choose_queries
from vfs.metrics import Neighbours, auroc, distinct_labels, same_label_fraction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()
    data = FashionMNIST("test")
    pixels = data.images[: args.count].reshape(args.count, -1).astype(np.float64)  # (N, 784)
    pixels /= np.linalg.norm(pixels, axis=1, keepdims=True)
    labels = data.labels[: args.count]
    queries = choose_queries(args.count, args.queries, seed=args.seed)
    scores = pixels[queries] @ pixels.T  # (Q, N)
    rows = np.arange(len(queries))
    scores[rows, queries] = -np.inf  # leave the query out
    top = np.argsort(-scores, axis=1, kind="stable")[:, : args.k]  # (Q, k)
    zeros = np.zeros_like(top)
    ones = np.ones(len(queries), np.int64)
    nb = Neighbours(queries, top, scores[rows[:, None], top].astype(np.float32), zeros, zeros, ones, ones)
    keep = [np.arange(args.count) != q for q in queries]
    aurocs = [auroc(scores[i, keep[i]], labels[keep[i]] == labels[q]) for i, q in enumerate(queries)]
    print(f"raw pixels, {len(queries)} queries over {args.count} images: "
          f"distinct@{args.k} {distinct_labels(nb, labels).mean():.3f}, "
          f"precision@{args.k} {same_label_fraction(nb, labels).mean():.3f}, "
          f"mean per-query AUROC {np.mean(aurocs):.3f}")
    shares = np.bincount(labels, minlength=len(data.label_names)) / args.count
    print(f"random top {args.k}: expected distinct labels {sum(1 - (1 - p) ** args.k for p in shares):.3f}, "
          f"precision {np.sum(shares ** 2):.3f}")


if __name__ == "__main__":
    main()
