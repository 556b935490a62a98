"""`python -m vfs experiment NAME CACHE ...`: the neighbour metrics of `vfs.analysis.metrics` on caches,
and the papers' quantitative figures as one command each (`vfs.analysis.protocols`).

    python -m vfs experiment labels  CACHE [--k 5]          distinct labels and precision in the top k
    python -m vfs experiment shared  CACHE_A CACHE_B        top-k images shared by two layers/models
    python -m vfs experiment iou     CACHE                  matched window vs ground-truth boxes, by box area
    python -m vfs experiment domains CACHE [--k 3]          top k over distinct domains
    python -m vfs experiment auroc   CACHE                  score distributions by label, AUROC

    python -m vfs experiment v1-fig6  REFERENCE OTHER...    VFS v1 Fig. 6: distinct classes, shared neighbours
    python -m vfs experiment v1-fig8  CACHE...              VFS v1 Fig. 8: IoU by query box area (misses = 0)
    python -m vfs experiment v2-fig2b CACHE...              VFS v2 Fig. 2b: top k overall vs over distinct domains
    python -m vfs experiment v2-fig3  CACHE                 VFS v2 Fig. 3: scores by label, region vs whole image

Queries (`--queries`): a number of images of the searched cache (0 = every image; each left out of
its own results), another cache of the same model and layer, or a dataset spec whose features are
extracted with the cache's model (`--model/--module/--weights` when it is not loadable by name);
`--count` of them are drawn with `--seed`. Regions are whole images unless `--boxes` (each query's
first ground-truth box). Every mean is printed as `mean ± standard error`; the JSON also holds the
95 % interval. The `v*` protocols write NAME.md (table), NAME.png (figure) and NAME.json to `--out`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from vfs.analysis import metrics
from vfs.analysis.query_sets import QuerySet, choose_queries, open_query_set
from vfs.analysis.statistics import clustered_auroc, estimate
from vfs.analysis.tables import format_table, label_name, per_label, write_json
from vfs.errors import VFSError, positive_int

if TYPE_CHECKING:
    from vfs.cache.reader import FeatureCache

__all__ = ["choose_queries", "experiment_command", "format_table"]

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
HISTOGRAM_BINS = np.linspace(-1.0, 1.0, 101)
AREA_BINS = (0.0, 1000.0, 5000.0, 20000.0, float("inf"))  # VFS v1 Fig. 8: small, medium, large, extra large
SIZE_BINS = (0.0, 0.25, 0.5, 0.75, 1.01)


def open_cache(path: str) -> FeatureCache:
    from vfs.cache.reader import open_cache as open_

    return open_(path)


def queries_for(args: argparse.Namespace, cache: FeatureCache, *, position: int = 0, need_boxes: bool | None = None) -> QuerySet:
    """The query set of `args.queries` for the searched cache at `position` (one value, or one per cache)."""
    values = args.queries
    if len(values) not in (1, len(args.caches)):
        raise VFSError(f"--queries has {len(values)} values for {len(args.caches)} caches: give one for all, "
                       "or one per cache in the same order")
    given = values[position] if len(values) > 1 else values[0]
    count = args.count if not given.strip().isdigit() else int(given)
    return open_query_set(given, cache, count=count, seed=args.seed,
                          need_boxes=args.boxes if need_boxes is None else need_boxes, model_args=args)


def search_options(queries: QuerySet, cache: FeatureCache, *, boxes: bool) -> dict[str, Any]:
    return queries.options(use_boxes=boxes, preprocess=cache.meta.make_preprocess())


def run_labels(args: argparse.Namespace) -> dict[str, Any]:
    cache = open_cache(args.caches[0])
    qs = queries_for(args, cache)
    nb = metrics.neighbours(cache, qs.indices, k=args.k, **search_options(qs, cache, boxes=args.boxes))
    k = args.k
    rows = per_label(cache.label_names, qs.labels[qs.indices], {
        f"distinct@{k}": metrics.distinct_labels(nb, cache.labels).astype(float),
        f"precision@{k}": metrics.same_label_fraction(nb, cache.labels, qs.labels),
        "top1 score": nb.scores[:, 0].astype(float)})
    return {"rows": rows, "columns": ["label", "queries", f"distinct@{k}", f"precision@{k}", "top1 score"],
            "queries_from": qs.name}


def run_shared(args: argparse.Namespace) -> dict[str, Any]:
    if len(args.caches) != 2:
        raise VFSError("shared compares two caches: python -m vfs experiment shared CACHE_A CACHE_B")
    a, b = open_cache(args.caches[0]), open_cache(args.caches[1])
    check_same_dataset([a, b])
    qa, qb = queries_for(args, a), queries_for(args, b, position=1)
    shared = metrics.shared_neighbours(
        metrics.neighbours(a, qa.indices, k=args.k, **search_options(qa, a, boxes=args.boxes)),
        metrics.neighbours(b, qb.indices, k=args.k, **search_options(qb, b, boxes=args.boxes)))
    rows = per_label(a.label_names, qa.labels[qa.indices], {f"shared@{args.k}": shared.astype(float)})
    return {"rows": rows, "columns": ["label", "queries", f"shared@{args.k}"],
            "note": f"{a.meta.model} {a.meta.layer} vs {b.meta.model} {b.meta.layer}", "queries_from": qa.name,
            "histogram": np.bincount(shared, minlength=args.k + 1).tolist()}


def check_same_dataset(caches: list[FeatureCache]) -> None:
    first = caches[0]
    for other in caches[1:]:
        if other.meta.dataset_fingerprint != first.meta.dataset_fingerprint:
            raise VFSError(f"{first.where} and {other.where} were built from different datasets "
                           f"({first.meta.dataset} vs {other.meta.dataset}): compare caches of the same images")


def iou_rows(cache: FeatureCache, qs: QuerySet, *, k: int, bins: Sequence[float] | None,
             bin_by: str) -> dict[str, Any]:
    """Top-1 and top-k IoU of the matched windows by query box area (or relative size); misses count 0."""
    if cache.boxes is None:
        raise VFSError(f"{cache.where} has no ground-truth boxes: IoU needs a searched dataset with boxes")
    nb = metrics.neighbours(cache, qs.indices, k=k, **search_options(qs, cache, boxes=True))
    ious = metrics.top_k_ious(nb, cache.boxes, cache.image_sizes, cache.meta.grid,
                              preprocess=cache.meta.make_preprocess())  # (Q, k)
    misses = ~np.stack([metrics.matched_boxed(nb, cache.boxes, rank=r) for r in range(k)], axis=1)  # (Q, k)
    miss = misses[:, 0]  # (Q,)
    boxes = cast("list[np.ndarray]", qs.boxes)  # a set opened with need_boxes has them (`_chosen`)
    first_boxes = [boxes[q][0] for q in qs.indices]
    if bin_by == "area":
        keys = np.array([metrics.box_area(box) for box in first_boxes])
    else:
        keys = np.array([metrics.relative_box_size(box, qs.image_sizes[q]) for box, q in zip(first_boxes, qs.indices)])
    edges = list(bins) if bins else list(AREA_BINS if bin_by == "area" else SIZE_BINS)
    rows: list[dict[str, Any]] = []
    for low, high in [*zip(edges[:-1], edges[1:]), (edges[0], edges[-1])]:
        inside = (keys >= low) & (keys < high)
        rows.append({"low": float(low), "high": float(high), "queries": int(inside.sum()),
                     "top1 misses": int(miss[inside].sum()), f"top{k} misses": int(misses[inside].sum()),
                     **estimate(ious[inside, 0]).columns("top1 IoU"),
                     **estimate(ious[inside].mean(axis=1) if inside.any() else []).columns(f"top{k} IoU")})
    rows[-1]["bin"] = "all"
    return {"rows": rows, "ious": ious, "keys": keys, "misses": miss,
            "columns": ["low", "high", "queries", "top1 misses", *([f"top{k} misses"] if k > 1 else []), "top1 IoU",
                        f"top{k} IoU"],
            "note": (f"bins by query box {'area in square pixels of the query image' if bin_by == 'area' else 'size: sqrt(box area / image area)'}; "
                     f"a match to an image without a box is a miss with IoU 0 ({int(miss.sum())} of {len(miss)} top-1 matches, "
                     f"{int(misses.sum())} of {misses.size} top-{k} matches)")}


def run_iou(args: argparse.Namespace) -> dict[str, Any]:
    cache = open_cache(args.caches[0])
    if cache.boxes is None:
        raise VFSError(f"{cache.where} has no ground-truth boxes: IoU needs a searched dataset with boxes")
    qs = queries_for(args, cache, need_boxes=True)
    result = iou_rows(cache, qs, k=args.k, bins=args.bins, bin_by=args.bin_by)
    return {key: result[key] for key in ("rows", "columns", "note")} | {"queries_from": qs.name}


def run_domains(args: argparse.Namespace) -> dict[str, Any]:
    cache = open_cache(args.caches[0])
    if cache.domains is None:
        raise VFSError(f"{cache.where} has no domains: build a cache of a dataset with domains")
    qs = queries_for(args, cache)
    nb = metrics.domain_neighbours(cache, qs.indices, cache.domains, k=args.k,
                                   **search_options(qs, cache, boxes=args.boxes))
    values = {f"precision@{args.k}": metrics.same_label_fraction(nb, cache.labels, qs.labels),
              "top1 score": nb.scores[:, 0].astype(float), f"top{args.k} score": nb.scores[:, -1].astype(float)}
    if qs.domains is not None:
        own = np.asarray(cache.domains)[nb.indices[:, 0]] == np.asarray(qs.domains)[qs.indices]  # (Q,)
        values["own domain first"] = own.astype(float)
    rows = per_label(cache.label_names, qs.labels[qs.indices], values)
    return {"rows": rows, "columns": ["label", "queries", *values], "queries_from": qs.name}


def run_auroc(args: argparse.Namespace) -> dict[str, Any]:
    cache = open_cache(args.caches[0])
    qs = queries_for(args, cache)
    result = metrics.label_scores(cache, qs.indices, cache.labels, query_labels=qs.labels,
                                  **search_options(qs, cache, boxes=args.boxes))
    valid = ~np.isnan(result.scores)
    same, other = result.scores[valid & result.same], result.scores[valid & ~result.same]
    pooled = clustered_auroc(result.scores, result.same)  # the queries as clusters
    med_same = np.array([np.nanmedian(np.where(s, r, np.nan)) if s.any() else np.nan
                         for s, r in zip(result.same, result.scores)])
    med_other = np.array([np.nanmedian(np.where(s, np.nan, r)) for s, r in zip(result.same, result.scores)])
    query_labels = qs.labels[qs.indices]
    rows = per_label(cache.label_names, query_labels,
                     {"auroc": result.aurocs, "median same": med_same, "median other": med_other})
    distributions = {}
    for label in np.unique(query_labels):
        mask = query_labels == label
        s, o = result.scores[mask], result.same[mask]
        distributions[label_name(cache.label_names, int(label))] = {
            "same": np.nanquantile(np.where(o, s, np.nan), QUANTILES).tolist() if o.any() else None,
            "other": np.nanquantile(np.where(o, np.nan, s), QUANTILES).tolist()}
    return {"rows": rows, "columns": ["label", "queries", "auroc", "median same", "median other"],
            "note": f"pooled AUROC over all (query, image) pairs: {pooled.mean:.3f} ± {pooled.se:.3f} "
                    f"(standard error with each query a cluster, Obuchowski 1997; 95 % interval "
                    f"{pooled.low:.3f}-{pooled.high:.3f})",
            **{key.replace(" ", "_"): value for key, value in pooled.columns("pooled auroc").items()},
            "queries_from": qs.name, "quantiles": list(QUANTILES), "distributions": distributions,
            "histogram": {"edges": HISTOGRAM_BINS.tolist(), "same": np.histogram(same, HISTOGRAM_BINS)[0].tolist(),
                          "other": np.histogram(other, HISTOGRAM_BINS)[0].tolist()}}


METRICS = {"labels": (run_labels, "distinct labels and precision in the top k"),
           "shared": (run_shared, "top-k images shared between two caches of the same dataset"),
           "iou": (run_iou, "IoU of the matched windows with ground-truth boxes, by query box area"),
           "domains": (run_domains, "top k over distinct domains"),
           "auroc": (run_auroc, "score distributions by label and AUROC of 'score predicts same label'")}


def _edges(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def _parser() -> argparse.ArgumentParser:
    from vfs.analysis.protocols import PROTOCOLS
    from vfs.models.arguments import add_model_arguments

    parser = argparse.ArgumentParser(prog="python -m vfs experiment", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="metric", required=True, metavar="NAME")
    for name, (_, help_) in {**METRICS, **{n: (p.run, p.help) for n, p in PROTOCOLS.items()}}.items():
        sub = commands.add_parser(name, help=help_, description=help_)
        many = name in ("shared",) or name in PROTOCOLS and name != "v2-fig3"
        sub.add_argument("caches", nargs="+" if many else 1, metavar="CACHE",
                         help="finished feature cache(s)" + (" (the first is the reference)" if name == "v1-fig6" else ""))
        default_k = 3 if name in ("domains", "v2-fig2b") else 1 if name == "v1-fig8" else 5
        sub.add_argument("--k", type=positive_int, default=default_k, help=f"neighbours per query (default {default_k})")
        sub.add_argument("--queries", nargs="+", default=["500"], metavar="N_OR_SET",
                         help="a number of images of the searched cache (0 = all), or another cache / a dataset "
                              "spec to draw queries from (one value, or one per cache)")
        sub.add_argument("--count", type=int, default=0, help="queries drawn from another set (0 = all of it)")
        sub.add_argument("--seed", type=int, default=0, help="seed of the query sample")
        sub.add_argument("--boxes", action="store_true", help="query each image's first ground-truth box")
        sub.add_argument("--bins", type=_edges, default=None, help="bin edges for iou / v1-fig8 (comma separated; "
                         "default 0,1000,5000,20000,inf square pixels, as VFS v1)")
        sub.add_argument("--bin-by", choices=("area", "size"), default="area",
                         help="bin IoU by query box area in pixels (default) or sqrt(area / image area)")
        sub.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
        if name in PROTOCOLS:
            sub.add_argument("--out", type=Path, required=True, help="folder for NAME.md, NAME.png and NAME.json")
        add_model_arguments(sub, default=None)
    return parser


def experiment_command(argv: list[str]) -> int:
    """Entry point of `python -m vfs experiment`; returns the exit code."""
    from vfs.analysis.protocols import PROTOCOLS

    args = _parser().parse_args(argv)
    args.argv = list(argv)
    if args.metric in PROTOCOLS:
        return PROTOCOLS[args.metric].run(args)
    result = METRICS[args.metric][0](args)
    print(format_table(result["rows"], result["columns"]))
    if "note" in result:
        print(result["note"])
    if args.json is not None:
        record = {"metric": args.metric, **{k: v for k, v in vars(args).items() if k != "json"}}
        write_json(args.json, {**record, "json": str(args.json), **result})
    return 0
