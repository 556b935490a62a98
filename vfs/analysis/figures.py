"""Matplotlib figures of the paper protocols (`vfs.analysis.protocols`), drawn from their results:
bars with standard error bars as in VFS v1 Figs. 6 and 8, and box plots as in VFS v2 Fig. 3.

matplotlib is imported only here, when a figure is drawn (`pip install matplotlib`).
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from vfs.errors import VFSError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _pyplot() -> ModuleType:
    try:
        import matplotlib
    except ImportError as error:
        raise VFSError("the experiment figures need matplotlib, which is not installed: pip install matplotlib") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _se(row: dict[str, Any], key: str) -> float:
    value = row.get(f"{key} se")
    return 0.0 if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _value(row: dict[str, Any], key: str) -> float:
    value = row.get(key)
    return float("nan") if value is None else float(value)


def _finish_figure(fig: Figure, ax: Axes, title: str, *, ylabel: str, xlabel: str | None = None,
                   legend_size: int | None = None, title_size: int = 9) -> Figure:
    """The end of every one-panel figure: axis labels, a legend (font size `legend_size`, None: no legend),
    the title (font size `title_size`), a tight layout. Returns `fig`."""
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if legend_size is not None:
        ax.legend(fontsize=legend_size)
    ax.set_title(title, fontsize=title_size)
    fig.tight_layout()
    return fig


def plot_v1_fig6(result: dict[str, Any], title: str) -> Figure:
    """Left: distinct classes in the top k per cache; right: images shared with the reference."""
    plt = _pyplot()
    k, rows = result["k"], result["rows"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = [row["features"] for row in rows]
    left.bar(range(len(rows)), [_value(r, f"distinct@{k}") for r in rows],
             yerr=[_se(r, f"distinct@{k}") for r in rows], capsize=4, color="tab:blue")
    left.set_xticks(range(len(rows)), names, rotation=15, ha="right")
    left.set_ylabel(f"distinct classes in top {k}")
    others = rows[1:]
    key = f"shared@{k} with reference"
    right.bar(range(len(others)), [_value(r, key) for r in others], yerr=[_se(r, key) for r in others],
              capsize=4, color="tab:orange")
    right.set_xticks(range(len(others)), [r["features"] for r in others], rotation=15, ha="right")
    right.set_ylabel(f"images of the top {k} shared")
    right.set_title(f"shared with the reference, {rows[0]['features']}", fontsize=9)
    right.set_ylim(0, k)
    fig.suptitle(f"{title}\n(n = {rows[0]['queries']} queries, bars: standard error)", fontsize=9)
    fig.tight_layout()
    return fig


def _bin_label(row: dict[str, Any]) -> str:
    if row.get("bin") == "all":
        return "all"
    high = "" if math.isinf(row["high"]) else f"{row['high']:g}"
    return f">{row['low']:g}" if not high else f"{row['low']:g}-{high}"


def plot_v1_fig8(result: dict[str, Any], title: str) -> Figure:
    """Mean top-1 IoU by query box bin, one bar per cache, standard error bars."""
    plt = _pyplot()
    rows = result["rows"]
    names = list(dict.fromkeys(row["features"] for row in rows))
    bins = [_bin_label(row) for row in rows if row["features"] == names[0]]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(bins)), 3.8))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        mine = [row for row in rows if row["features"] == name]
        positions = np.arange(len(bins)) + (i - (len(names) - 1) / 2) * width
        ax.bar(positions, [_value(r, "top1 IoU") for r in mine], width, yerr=[_se(r, "top1 IoU") for r in mine],
               capsize=3, label=name)
        for x, r in zip(positions, mine):
            ax.text(x, 0.01, f"n={r['queries']}\nmiss={r['top1 misses']}", ha="center", va="bottom", fontsize=6)
    unit = "square pixels" if result.get("bin_by") == "area" else "sqrt(area / image area)"
    ax.set_xticks(range(len(bins)), bins)
    ax.set_ylim(0, 1)
    return _finish_figure(fig, ax, title, xlabel=f"query box ({unit})", ylabel="mean IoU of the top match (misses = 0)",
                   legend_size=8)


def plot_v2_fig2b(result: dict[str, Any], title: str) -> Figure:
    """Mean score at each rank, top k overall (solid) vs over distinct domains (dashed), per cache."""
    plt = _pyplot()
    k, rows = result["k"], result["rows"]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ranks = np.arange(1, k + 1)
    colors: dict[str, str] = {}  # features -> line color
    for row in rows:
        color = colors.setdefault(row["features"], f"C{len(colors)}")
        ax.errorbar(ranks, [_value(row, f"score {r}") for r in ranks], yerr=[_se(row, f"score {r}") for r in ranks],
                    color=color, linestyle="-" if row["top k"] == "overall" else "--", marker="o", capsize=3,
                    label=f"{row['features']}, {row['top k']}")
    ax.set_xticks(ranks)
    return _finish_figure(fig, ax, title, xlabel="rank", ylabel="cosine similarity", legend_size=7)


def plot_v2_fig3(result: dict[str, Any], title: str) -> Figure:
    """Box plots (5-25-50-75-95 %) of every image's score, same label vs other labels, per query kind."""
    plt = _pyplot()
    quantiles = result["quantiles"]
    at = {q: i for i, q in enumerate(quantiles)}
    stats, colors = [], []
    for kind, parts in result["distributions"].items():
        for part, color in (("same", "tab:blue"), ("other", "tab:orange")):
            values = parts[part]
            if values is None:
                continue
            stats.append({"label": f"{kind}\n{part} label", "whislo": values[at[0.05]], "q1": values[at[0.25]],
                          "med": values[at[0.5]], "q3": values[at[0.75]], "whishi": values[at[0.95]], "fliers": []})
            colors.append(color)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    boxes = ax.bxp(stats, patch_artist=True, showfliers=False)
    for patch, color in zip(boxes["boxes"], colors):
        patch.set_facecolor(color)
        patch.set_alpha(0.6)
    aurocs = ", ".join(f"{row['query']}: AUROC {_value(row, 'AUROC'):.3f} ± {_se(row, 'AUROC'):.3f}"
                       for row in result["rows"])
    return _finish_figure(fig, ax, f"{title}\n{aurocs}", ylabel="best-window cosine to the query", title_size=8)
