"""Experiment results as rows of dicts: per-label rows with standard errors, plain-text and Markdown
tables, and the JSON/figure files a protocol writes.

A reported mean `X` is three keys of a row, `X`, `X se` and `X ci95` (`Estimate.columns`); a table
shows it as `mean ± se`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vfs.analysis.statistics import estimate


def label_name(names: Sequence[str], label: int) -> str:
    return names[label] if 0 <= label < len(names) else str(label)


def per_label(names: Sequence[str], labels: np.ndarray, values: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """One row per query label (each value's mean ± se over that label's queries), then an "all" row."""
    labels = np.asarray(labels)
    rows = []
    for label in np.unique(labels):
        inside = labels == label
        rows.append({"label": label_name(names, int(label)), "queries": int(inside.sum()),
                     **{k: v for name, x in values.items() for k, v in estimate(x[inside]).columns(name).items()}})
    rows.append({"label": "all", "queries": len(labels),
                 **{k: v for name, x in values.items() for k, v in estimate(x).columns(name).items()}})
    return rows


def _cell(row: dict[str, Any], column: str) -> str:
    value = row.get(column, "")
    if isinstance(value, float):
        se = row.get(f"{column} se")
        if isinstance(se, float) and not math.isnan(se):
            return f"{value:.3f} ± {se:.3f}"
        return f"{value:.3f}"
    return str(value)


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Rows of dicts as an aligned plain-text table (floats with 3 decimals, `mean ± se` where known)."""
    text = [[_cell(row, c) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in text)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in text]
    return "\n".join(lines)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """The same table in Markdown."""
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_cell(row, c) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, record: dict[str, Any]) -> None:
    """`record` as indented JSON (NaN written as null), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(record), indent=1, default=str))


def _plain(value: object) -> object:
    """`value` with NaN as None and numpy values as Python ones, for JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    return value
