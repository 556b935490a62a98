"""One query against two caches of the same dataset (two models, or two layers), side by side.

No gradio here.
"""

from __future__ import annotations

from dataclasses import dataclass

from app import handlers
from app.library import CacheLibrary
from app.state import Outcome, SearchOptions
from vfs.errors import CacheMismatchError


@dataclass(frozen=True)
class Comparison:
    left: Outcome  # the search over the first cache
    right: Outcome  # the same query over the second cache
    shared: list[int]  # dataset indices in both top-k lists, in the left's order

    def summary(self, library: CacheLibrary) -> str:
        k = max(len(self.left.matches), len(self.right.matches))
        left_meta = library.open(self.left.query.cache_key).meta
        right_meta = library.open(self.right.query.cache_key).meta
        return (
            f"**{len(self.shared)} of the top {k} are shared** (same dataset image, starred ★). "
            f"Left: {left_meta.model} `{left_meta.layer}` in {self.left.seconds * 1000:.0f} ms; "
            f"right: {right_meta.model} `{right_meta.layer}` in {self.right.seconds * 1000:.0f} ms."
        )


    def items(self, library: CacheLibrary) -> tuple[list, list]:
        """Both galleries' (image, caption) items; a result in both lists is starred: "★ 3 · Bag · 0.512"."""
        shared = set(self.shared)
        sides = []
        for outcome in (self.left, self.right):
            items = handlers.result_items(library, outcome)
            marks = ["★ " if match.index in shared else "" for match in outcome.matches]
            sides.append([(image, mark + caption) for (image, caption), mark in zip(items, marks, strict=True)])
        return sides[0], sides[1]


def default_pair(library: CacheLibrary) -> tuple[str | None, str | None]:
    """The pair Compare preselects: the default caches' pair (`vfs.cache.defaults.COMPARE_PAIR`, one
    dataset at two layers) when both are listed, else the first two listed caches of one dataset;
    `(None, None)` when no two listed caches share a dataset."""
    from vfs.cache.defaults import COMPARE_PAIR, DEFAULTS, folder_name

    entries = [entry for entry in library.entries if entry.fingerprint]
    by_folder = {entry.path.name: entry.key for entry in entries if entry.path is not None}
    wanted = [by_folder.get(folder_name(DEFAULTS[name])) for name in COMPARE_PAIR]
    if all(wanted):
        return wanted[0], wanted[1]
    for position, left in enumerate(entries):
        for right in entries[position + 1 :]:
            if left.fingerprint == right.fingerprint:
                return left.key, right.key
    return None, None


def check_comparable(library: CacheLibrary, left_key: str, right_key: str) -> None:
    """Both caches must index the same dataset (same fingerprint), else a readable error."""
    left, right = library.open(left_key).meta, library.open(right_key).meta
    if left.dataset_fingerprint != right.dataset_fingerprint:
        raise CacheMismatchError(
            f"the two caches index different datasets ({left.dataset!r} vs {right.dataset!r}), so their "
            "results cannot be matched image by image: pick two caches of the same dataset "
            "(two models or two layers)"
        )


def compare(
    library: CacheLibrary,
    left_key: str,
    right_key: str,
    value: dict | None,
    picked: handlers.Picked | None,
    options: SearchOptions,
    *,
    progress=None,
) -> tuple[Comparison, list[str]]:
    """Search the editor's query (image + mask) in both caches and count the shared top-k images."""
    check_comparable(library, left_key, right_key)
    outcomes, notes = [], []
    for side, key in enumerate((left_key, right_key)):
        query, query_notes = handlers.read_query(library, key, value, picked)
        notes.extend(note for note in query_notes if note not in notes)
        step = None
        if progress:
            def step(fraction, text, side=side, key=key):  # this side's half of the bar
                progress(0.5 * side + 0.5 * fraction, f"{key}: {text}")
        outcomes.append(handlers.run_search(library, query, options, progress=step))
    left, right = outcomes
    right_indices = {match.index for match in right.matches}
    shared = [match.index for match in left.matches if match.index in right_indices]
    return Comparison(left=left, right=right, shared=shared), notes
