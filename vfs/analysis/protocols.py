"""The papers' quantitative figures, one command each, on any caches and queries.

| command | paper figure | what it measures |
| --- | --- | --- |
| `v1-fig6 REF OTHER...` | VFS v1 Fig. 6 | distinct classes in each cache's top k; top-k images shared with REF |
| `v1-fig8 CACHE...` | VFS v1 Fig. 8 | IoU of the matched windows with ground-truth boxes, by query box area |
| `v2-fig2b CACHE...` | VFS v2 Fig. 2b | scores of the top k overall vs the top k over distinct domains |
| `v2-fig3 CACHE` | VFS v2 Fig. 3 | scores of every image by label, region query vs whole-image query, AUROC |

Each writes `OUT/NAME.md` (the table, means ± standard error), `OUT/NAME.png` (matplotlib, with
standard error bars) and `OUT/NAME.json` (every row, with 95 % intervals, and the command's arguments).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vfs.analysis import figures, metrics
from vfs.analysis.experiment import (
    QUANTILES,
    check_same_dataset,
    iou_rows,
    open_cache,
    queries_for,
    search_options,
)
from vfs.analysis.statistics import clustered_auroc, estimate
from vfs.analysis.tables import format_table, markdown_table, write_json
from vfs.errors import VFSError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from vfs.cache.reader import FeatureCache


def features_name(cache: FeatureCache) -> str:
    """A short name of a cache's features: model, layer."""
    return f"{cache.meta.model} {cache.meta.layer}"


def run_v1_fig6(args: argparse.Namespace) -> dict[str, Any]:
    """Distinct classes in each cache's top k (whole images unless --boxes) and images shared with the first."""
    caches = [open_cache(path) for path in args.caches]
    check_same_dataset(caches)
    sets = [queries_for(args, cache, position=i) for i, cache in enumerate(caches)]
    if any(not np.array_equal(qs.indices, sets[0].indices) for qs in sets):
        raise VFSError("the query sets of the caches differ: give the same --queries for every cache")
    found = [metrics.neighbours(c, qs.indices, k=args.k, **search_options(qs, c, boxes=args.boxes))
             for c, qs in zip(caches, sets)]
    k, rows = args.k, []
    for i, (cache, qs, nb) in enumerate(zip(caches, sets, found)):
        row = {"features": features_name(cache), "queries": len(qs.indices),
               **estimate(metrics.distinct_labels(nb, cache.labels)).columns(f"distinct@{k}"),
               **estimate(metrics.same_label_fraction(nb, cache.labels, qs.labels)).columns(f"precision@{k}")}
        if i > 0:
            row |= estimate(metrics.shared_neighbours(found[0], nb)).columns(f"shared@{k} with reference")
        rows.append(row)
    return {"rows": rows, "columns": ["features", "queries", f"distinct@{k}", f"precision@{k}",
                                      f"shared@{k} with reference"],
            "note": f"reference: {rows[0]['features']}; queries from {sets[0].name}", "k": k}


def run_v1_fig8(args: argparse.Namespace) -> dict[str, Any]:
    """IoU of each cache's matched windows with the matched images' boxes, by query box area."""
    caches = [open_cache(path) for path in args.caches]
    rows, notes = [], []
    for i, cache in enumerate(caches):
        if cache.boxes is None:
            raise VFSError(f"{cache.where} has no ground-truth boxes: v1-fig8 needs a searched dataset with boxes")
        qs = queries_for(args, cache, position=i, need_boxes=True)
        result = iou_rows(cache, qs, k=args.k, bins=args.bins, bin_by=args.bin_by)
        rows += [{"features": features_name(cache), **row} for row in result["rows"]]
        notes.append(f"{features_name(cache)}: {result['note']}")
    columns = ["features", *[c for c in result["columns"]]]
    return {"rows": rows, "columns": columns, "note": "\n".join(notes), "k": args.k, "bin_by": args.bin_by}


def run_v2_fig2b(args: argparse.Namespace) -> dict[str, Any]:
    """Scores at each rank of the top k overall and of the top k over distinct domains (one image per domain)."""
    rows, k = [], args.k
    for i, path in enumerate(args.caches):
        cache = open_cache(path)
        if cache.domains is None:
            raise VFSError(f"{cache.where} has no domains: v2-fig2b needs a searched dataset with domains")
        qs = queries_for(args, cache, position=i)
        options = search_options(qs, cache, boxes=args.boxes)
        domains = np.asarray(cache.domains)
        for kind, nb in (("overall", metrics.neighbours(cache, qs.indices, k=k, **options)),
                         ("distinct domains", metrics.domain_neighbours(cache, qs.indices, cache.domains, k=k,
                                                                        **options))):
            row = {"features": features_name(cache), "top k": kind, "queries": len(qs.indices)}
            for rank in range(k):
                row |= estimate(nb.scores[:, rank]).columns(f"score {rank + 1}")
            row |= estimate(metrics.same_label_fraction(nb, cache.labels, qs.labels)).columns(f"precision@{k}")
            row |= estimate([len(set(r)) for r in domains[nb.indices]]).columns(f"domains in top {k}")
            if qs.domains is not None:
                own = domains[nb.indices] == np.asarray(qs.domains)[qs.indices][:, None]  # (Q, k)
                row |= estimate(own.mean(axis=1)).columns("own domain share")
            rows.append(row)
    columns = ["features", "top k", "queries", *[f"score {r + 1}" for r in range(k)], f"precision@{k}",
               f"domains in top {k}", "own domain share"]
    return {"rows": rows, "columns": columns, "k": k}


def run_v2_fig3(args: argparse.Namespace) -> dict[str, Any]:
    """Every image's best score for a region query (the query's box) and for the whole query image, split
    by whether the image has the query's label; AUROC of "score predicts same label" for each."""
    cache = open_cache(args.caches[0])
    qs = queries_for(args, cache, need_boxes=True)
    rows, distributions = [], {}
    for kind, boxes in (("region", True), ("whole image", False)):
        result = metrics.label_scores(cache, qs.indices, cache.labels, query_labels=qs.labels,
                                      **search_options(qs, cache, boxes=boxes))
        valid = ~np.isnan(result.scores)
        same, other = result.scores[valid & result.same], result.scores[valid & ~result.same]
        distributions[kind] = {"same": np.quantile(same, QUANTILES).tolist() if len(same) else None,
                               "other": np.quantile(other, QUANTILES).tolist() if len(other) else None}
        gap = np.nanmean(np.where(result.same, result.scores, np.nan), axis=1) - np.nanmean(
            np.where(result.same, np.nan, result.scores), axis=1)  # (Q,)
        rows.append({"query": kind, "queries": len(qs.indices), **estimate(result.aurocs).columns("AUROC"),
                     **clustered_auroc(result.scores, result.same).columns("pooled AUROC"),
                     **estimate(gap).columns("mean same - other"),
                     "median same": float(np.median(same)) if len(same) else float("nan"),
                     "median other": float(np.median(other)) if len(other) else float("nan")})
    return {"rows": rows, "columns": ["query", "queries", "AUROC", "pooled AUROC", "mean same - other",
                                      "median same", "median other"],
            "quantiles": list(QUANTILES), "distributions": distributions,
            "note": f"{features_name(cache)}; queries from {qs.name}; AUROC per query, then mean ± se over "
                    "queries; pooled AUROC over every (query, image) pair, se with each query a cluster (Obuchowski 1997)"}


@dataclass(frozen=True)
class Protocol:
    """One paper figure as a command."""

    name: str  # command name, e.g. "v1-fig6"
    help: str  # one line for --help
    compute: Callable[[argparse.Namespace], dict[str, Any]]  # args -> result (rows, columns, note, plot data)
    plot: Callable[[dict[str, Any], str], Figure]  # (result, title) -> matplotlib figure

    def run(self, args: argparse.Namespace) -> int:
        """Compute, print the table, write NAME.md, NAME.json and NAME.png under `args.out`."""
        result = self.compute(args)
        print(format_table(result["rows"], result["columns"]))
        if "note" in result:
            print(result["note"])
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / self.name
        command = "python -m vfs experiment " + " ".join(_argv(args))
        (stem.with_suffix(".md")).write_text(f"{self.help}\n\n{markdown_table(result['rows'], result['columns'])}\n\n"
                                             f"{result.get('note', '')}\n\n`{command}`\n")
        record = {"protocol": self.name, "command": command,
                  **{k: v for k, v in vars(args).items() if k not in ("json", "out")}}
        write_json(stem.with_suffix(".json"), {**record, **result})
        if args.json is not None:
            write_json(args.json, {**record, **result})
        figure = self.plot(result, self.help)
        figure.savefig(stem.with_suffix(".png"), dpi=120, bbox_inches="tight")
        print(f"wrote {stem}.md, {stem}.json, {stem}.png")
        return 0


def _argv(args: argparse.Namespace) -> list[str]:
    return [arg for arg in getattr(args, "argv", [])] or [args.metric, *args.caches]


PROTOCOLS = {p.name: p for p in [
    Protocol("v1-fig6", "VFS v1 Fig. 6: distinct classes in the top k, and images shared with the reference",
             run_v1_fig6, figures.plot_v1_fig6),
    Protocol("v1-fig8", "VFS v1 Fig. 8: IoU of the matched window with ground-truth boxes, by query box area",
             run_v1_fig8, figures.plot_v1_fig8),
    Protocol("v2-fig2b", "VFS v2 Fig. 2b: scores of the top k overall vs over distinct domains",
             run_v2_fig2b, figures.plot_v2_fig2b),
    Protocol("v2-fig3", "VFS v2 Fig. 3: scores by label for a region query vs a whole-image query, AUROC",
             run_v2_fig3, figures.plot_v2_fig3),
]}
