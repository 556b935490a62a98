"""`python -m vfs experiment METRIC CACHE ...`: the neighbour metrics of `vfs.analysis.metrics` on caches,
printed as tables (and optionally written as JSON).

    python -m vfs experiment labels  CACHE [--k 5]          distinct labels and precision in the top k
    python -m vfs experiment shared  CACHE_A CACHE_B        top-k images shared by two layers/models
    python -m vfs experiment iou     CACHE                  matched window vs ground-truth boxes, by box size
    python -m vfs experiment domains CACHE [--k 3]          top k over distinct domains
    python -m vfs experiment auroc   CACHE                  score distributions by label, AUROC

Queries are `--queries` images of the cache drawn with `--seed` (0 = every image), whole-image
regions unless `--boxes` (each query's first ground-truth box). Each query's own image is left out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from vfs.analysis import metrics
from vfs.errors import VFSError, positive_int

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
HISTOGRAM_BINS = np.linspace(-1.0, 1.0, 101)


def choose_queries(count: int, queries: int, *, seed: int) -> np.ndarray:
    """`queries` distinct image indices out of `count`, seeded and sorted (all of them if 0 or more)."""
    if queries <= 0 or queries >= count:
        return np.arange(count, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(count, size=queries, replace=False)).astype(np.int64)


def format_table(rows: list[dict], columns: list[str]) -> str:
    """Rows of dicts as an aligned plain-text table (floats with 3 decimals)."""
    def cell(value) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    text = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in text)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in text]
    return "\n".join(lines)


def _open(path: str):
    from vfs.cache.reader import open_cache

    return open_cache(path)


def _box_options(cache, queries: np.ndarray, use_boxes: bool) -> dict:
    if not use_boxes:
        return {}
    if cache.boxes is None:
        raise VFSError(f"{cache.where} has no boxes: drop --boxes, or build a cache of a dataset with boxes")
    missing = [int(q) for q in queries if len(cache.boxes[q]) == 0]
    if missing:
        raise VFSError(f"{len(missing)} query images have no box (first: {missing[0]}): drop --boxes")
    return {"boxes": [cache.boxes[q][0] for q in queries], "image_sizes": cache.image_sizes,
            "preprocess": cache.meta.make_preprocess()}


def _per_label(cache, queries: np.ndarray, values: dict[str, np.ndarray]) -> list[dict]:
    """One row per query label (mean of each value over that label's queries), then an "all" row."""
    labels = cache.labels[queries]
    rows = []
    for label in np.unique(labels):
        inside = labels == label
        name = cache.label_names[label] if 0 <= label < len(cache.label_names) else str(label)
        rows.append({"label": name, "queries": int(inside.sum()),
                     **{k: float(np.nanmean(v[inside])) for k, v in values.items()}})
    rows.append({"label": "all", "queries": len(queries), **{k: float(np.nanmean(v)) for k, v in values.items()}})
    return rows


def run_labels(args) -> dict:
    cache = _open(args.cache)
    queries = choose_queries(len(cache), args.queries, seed=args.seed)
    nb = metrics.neighbours(cache, queries, k=args.k, **_box_options(cache, queries, args.boxes))
    rows = _per_label(cache, queries, {f"distinct@{args.k}": metrics.distinct_labels(nb, cache.labels).astype(float),
                                       f"precision@{args.k}": metrics.same_label_fraction(nb, cache.labels),
                                       "top1 score": nb.scores[:, 0].astype(float)})
    return {"rows": rows, "columns": ["label", "queries", f"distinct@{args.k}", f"precision@{args.k}", "top1 score"]}


def run_shared(args) -> dict:
    a, b = _open(args.cache), _open(args.other)
    if a.meta.dataset_fingerprint != b.meta.dataset_fingerprint:
        raise VFSError(f"{args.cache} and {args.other} were built from different datasets "
                       f"({a.meta.dataset} vs {b.meta.dataset}): compare caches of the same images")
    queries = choose_queries(len(a), args.queries, seed=args.seed)
    shared = metrics.shared_neighbours(metrics.neighbours(a, queries, k=args.k, **_box_options(a, queries, args.boxes)),
                                       metrics.neighbours(b, queries, k=args.k, **_box_options(b, queries, args.boxes)))
    rows = _per_label(a, queries, {f"shared@{args.k}": shared.astype(float)})
    return {"rows": rows, "columns": ["label", "queries", f"shared@{args.k}"],
            "note": f"{a.meta.model} {a.meta.layer} vs {b.meta.model} {b.meta.layer}",
            "histogram": np.bincount(shared, minlength=args.k + 1).tolist()}


def run_iou(args) -> dict:
    cache = _open(args.cache)
    if cache.boxes is None:
        raise VFSError(f"{cache.where} has no ground-truth boxes: IoU needs a dataset with boxes")
    candidates = np.array([i for i in range(len(cache)) if len(cache.boxes[i])], dtype=np.int64)
    queries = candidates[choose_queries(len(candidates), args.queries, seed=args.seed)]
    preprocess = cache.meta.make_preprocess()
    nb = metrics.neighbours(cache, queries, k=1, **_box_options(cache, queries, True))
    ious = metrics.window_ious(nb, cache.boxes, cache.image_sizes, tuple(cache.meta.grid), preprocess=preprocess)
    sizes = np.array([metrics.relative_box_size(cache.boxes[q][0], cache.image_sizes[q]) for q in queries])
    rows = metrics.bin_by(ious, sizes, args.bins)
    rows.append({"low": 0.0, "high": 1.0, "count": int((~np.isnan(ious)).sum()), "mean": float(np.nanmean(ious))})
    return {"rows": rows, "columns": ["low", "high", "count", "mean"], "note": "sqrt(query box area / image area)"}


def run_domains(args) -> dict:
    cache = _open(args.cache)
    if cache.domains is None:
        raise VFSError(f"{cache.where} has no domains: build a cache of a dataset with domains")
    queries = choose_queries(len(cache), args.queries, seed=args.seed)
    nb = metrics.domain_neighbours(cache, queries, cache.domains, k=args.k, **_box_options(cache, queries, args.boxes))
    own = np.asarray(cache.domains)[nb.indices] == np.asarray(cache.domains)[queries][:, None]  # (Q, k)
    rows = _per_label(cache, queries, {f"precision@{args.k}": metrics.same_label_fraction(nb, cache.labels),
                                       "own domain first": own[:, 0].astype(float),
                                       "top1 score": nb.scores[:, 0].astype(float),
                                       f"top{args.k} score": nb.scores[:, -1].astype(float)})
    return {"rows": rows, "columns": ["label", "queries", f"precision@{args.k}", "own domain first", "top1 score",
                                      f"top{args.k} score"]}


def run_auroc(args) -> dict:
    cache = _open(args.cache)
    queries = choose_queries(len(cache), args.queries, seed=args.seed)
    result = metrics.label_scores(cache, queries, cache.labels, **_box_options(cache, queries, args.boxes))
    valid = ~np.isnan(result.scores)
    same, other = result.scores[valid & result.same], result.scores[valid & ~result.same]
    pooled = metrics.auroc(np.r_[same, other], np.r_[np.ones(len(same), bool), np.zeros(len(other), bool)])
    med_same = np.array([np.nanmedian(np.where(result.same[q], result.scores[q], np.nan)) for q in range(len(queries))])
    med_other = np.array([np.nanmedian(np.where(result.same[q], np.nan, result.scores[q])) for q in range(len(queries))])
    rows = _per_label(cache, queries, {"auroc": result.aurocs, "median same": med_same, "median other": med_other})
    distributions = {}
    for row in rows[:-1]:
        label = cache.label_names.index(row["label"]) if row["label"] in cache.label_names else int(row["label"])
        mask = cache.labels[queries] == label
        s, o = result.scores[mask], result.same[mask]
        distributions[row["label"]] = {
            "same": np.nanquantile(np.where(o, s, np.nan), QUANTILES).tolist(),
            "other": np.nanquantile(np.where(o, np.nan, s), QUANTILES).tolist()}
    return {"rows": rows, "columns": ["label", "queries", "auroc", "median same", "median other"],
            "note": f"pooled AUROC over all (query, image) pairs: {pooled:.3f}", "pooled_auroc": pooled,
            "quantiles": list(QUANTILES), "distributions": distributions,
            "histogram": {"edges": HISTOGRAM_BINS.tolist(), "same": np.histogram(same, HISTOGRAM_BINS)[0].tolist(),
                          "other": np.histogram(other, HISTOGRAM_BINS)[0].tolist()}}


RUNNERS = {"labels": run_labels, "shared": run_shared, "iou": run_iou, "domains": run_domains, "auroc": run_auroc}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vfs experiment", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="metric", required=True, metavar="METRIC")
    for name, help_ in [("labels", "distinct labels and precision in the top k"),
                        ("shared", "top-k images shared between two caches of the same dataset"),
                        ("iou", "IoU of the matched window with ground-truth boxes, by box size"),
                        ("domains", "top k over distinct domains"),
                        ("auroc", "score distributions by label and AUROC of 'score predicts same label'")]:
        sub = commands.add_parser(name, help=help_)
        sub.add_argument("cache", help="path of a finished feature cache")
        if name == "shared":
            sub.add_argument("other", help="a second cache of the same dataset (other layer or model)")
        sub.add_argument("--k", type=positive_int, default=3 if name == "domains" else 5, help="neighbours per query")
        sub.add_argument("--queries", type=int, default=500, help="number of query images (0 = all)")
        sub.add_argument("--seed", type=int, default=0, help="seed of the query sample")
        sub.add_argument("--boxes", action="store_true", help="query each image's first ground-truth box")
        sub.add_argument("--bins", type=lambda s: [float(v) for v in s.split(",")],
                         default=[0.0, 0.25, 0.5, 0.75, 1.01], help="box-size bin edges (iou)")
        sub.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    return parser


def experiment_command(argv: list[str]) -> int:
    """Entry point of `python -m vfs experiment`; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        result = RUNNERS[args.metric](args)
    except VFSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_table(result["rows"], result["columns"]))
    if "note" in result:
        print(result["note"])
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {"metric": args.metric, "argv": argv, **{k: v for k, v in vars(args).items() if k != "json"}}
        record["json"] = str(args.json)
        args.json.write_text(json.dumps({**record, **result}, indent=1, default=str))
    return 0
