"""Draw the figures of docs/experiments.md from the JSON files `python -m vfs experiment ... --json` wrote.

    python docs/figures/plot_experiments.py RESULTS_FOLDER docs/figures

Needs matplotlib (only for these figures; the library does not use it). Each figure is drawn only
when its JSON files are present.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def load(folder: Path, name: str) -> dict | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def distributions(ax, record: dict, title: str) -> None:
    """Box per label and kind (same label / other labels): whiskers 5-95 %, box 25-75 %, line median."""
    q = record["quantiles"]
    at = {v: i for i, v in enumerate(q)}
    stats, positions, colors = [], [], []
    labels = list(record["distributions"])
    for i, label in enumerate(labels):
        for j, kind in enumerate(("same", "other")):
            values = record["distributions"][label][kind]
            stats.append({"med": values[at[0.5]], "q1": values[at[0.25]], "q3": values[at[0.75]],
                          "whislo": values[at[0.05]], "whishi": values[at[0.95]], "fliers": []})
            positions.append(i * 3 + j)
            colors.append("#4a7fc1" if kind == "same" else "#d9893b")
    boxes = ax.bxp(stats, positions=positions, widths=0.8, patch_artist=True, showfliers=False)
    for patch, color in zip(boxes["boxes"], colors):
        patch.set_facecolor(color)
    auroc = {row["label"]: row["auroc"] for row in record["rows"]}
    ax.set_xticks([i * 3 + 0.5 for i in range(len(labels))])
    ax.set_xticklabels([f"{label}\nAUROC {auroc[label]:.2f}" for label in labels], rotation=45, ha="right",
                       fontsize=8)
    ax.set_ylabel("best-window cosine to the query")
    ax.set_title(title, fontsize=10)
    ax.legend(boxes["boxes"][:2], ["same label as the query", "other labels"], fontsize=8, loc="best", framealpha=0.9)


def histogram(ax, record: dict, title: str) -> None:
    edges = np.asarray(record["histogram"]["edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    for kind, color in (("same", "#4a7fc1"), ("other", "#d9893b")):
        counts = np.asarray(record["histogram"][kind], dtype=float)
        ax.plot(centres, counts / counts.sum() / np.diff(edges), color=color,
                label="same label" if kind == "same" else "other labels")
    filled = np.flatnonzero(np.asarray(record["histogram"]["same"]) + np.asarray(record["histogram"]["other"]))
    ax.set_xlim(edges[filled[0]] - 0.05, min(1.0, edges[filled[-1] + 1] + 0.05))
    ax.set_xlabel("best-window cosine to the query")
    ax.set_ylabel("density")
    ax.set_title(f"{title}\npooled AUROC {record['pooled_auroc']:.3f}", fontsize=10)
    ax.legend(fontsize=8)


def main() -> None:
    results, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    pairs = [("fmnist-b3-auroc", "Fashion-MNIST, blocks.3 (14x14x80)"),
             ("fmnist-b5-auroc", "Fashion-MNIST, blocks.5 (7x7x192)")]
    records = [(load(results, name), title) for name, title in pairs]
    records = [(r, t) for r, t in records if r is not None]
    if records:
        fig, axes = plt.subplots(1, len(records), figsize=(7 * len(records), 4.8), squeeze=False)
        for ax, (record, title) in zip(axes[0], records):
            distributions(ax, record, title)
        fig.tight_layout()
        fig.savefig(out / "fmnist-scores-by-label.png", dpi=110)
        fig, axes = plt.subplots(1, len(records), figsize=(5 * len(records), 3.6), squeeze=False)
        for ax, (record, title) in zip(axes[0], records):
            histogram(ax, record, title)
        fig.tight_layout()
        fig.savefig(out / "fmnist-score-histograms.png", dpi=110)
    shared = load(results, "fmnist-shared")
    if shared is not None:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        counts = np.asarray(shared["histogram"])
        ax.bar(np.arange(len(counts)), counts, color="#4a7fc1")
        ax.set_xlabel(f"top-{len(counts) - 1} images shared by blocks.3 and blocks.5")
        ax.set_ylabel("queries")
        ax.set_title(f"{shared['rows'][-1]['queries']} Fashion-MNIST queries", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "fmnist-shared.png", dpi=110)
    lfw = [(load(results, f"lfw-{layer}-auroc"), layer) for layer in ("b3", "b5")]
    lfw = [(r, t) for r, t in lfw if r is not None]
    if lfw:
        fig, axes = plt.subplots(1, len(lfw), figsize=(5 * len(lfw), 3.6), squeeze=False)
        names = {"b3": "blocks.3", "b5": "blocks.5"}
        for ax, (record, layer) in zip(axes[0], lfw):
            histogram(ax, record, f"lfw_subset, {names[layer]}")
        fig.tight_layout()
        fig.savefig(out / "lfw-score-histograms.png", dpi=110)
    iou = [(load(results, f"canvas-{layer}-iou"), layer) for layer in ("b3", "b5")]
    iou = [(r, t) for r, t in iou if r is not None]
    if iou:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        width = 0.8 / len(iou)
        for i, (record, layer) in enumerate(iou):
            rows = record["rows"][:-1]
            x = np.arange(len(rows)) + i * width
            ax.bar(x, [r["mean"] for r in rows], width, label={"b3": "blocks.3 (14x14)", "b5": "blocks.5 (7x7)"}[layer])
            for xi, r in zip(x, rows):
                ax.text(xi, (r["mean"] if r["mean"] == r["mean"] else 0) + 0.01, f"n={r['count']}", ha="center",
                        fontsize=7)
        ax.set_xticks(np.arange(len(rows)) + width * (len(iou) - 1) / 2)
        ax.set_xticklabels([f"{r['low']:.2f}-{min(r['high'], 1):.2f}" for r in rows])
        ax.set_xlabel("query box size: sqrt(box area / image area)")
        ax.set_ylabel("mean IoU of the top match")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "canvas-iou-by-size.png", dpi=110)


if __name__ == "__main__":
    main()
