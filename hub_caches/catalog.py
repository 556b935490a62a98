"""The catalog: the published caches this project knows, readable offline.

Each entry pins a dataset repo to a commit sha, so opening it by name never asks the Hub which
commit a tag points at and always reads the same bytes. The catalog is `catalog.json` beside this
file; `HUB_CACHES_CATALOG=/path/to/catalog.json` (or `path=`) reads another one instead.
`python -m hub_caches push` prints the entry to add after an upload.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from hub_caches.errors import CatalogError

CATALOG_ENV = "HUB_CACHES_CATALOG"
DEFAULT_CATALOG = Path(__file__).with_name("catalog.json")
_SHA = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class CatalogEntry:
    name: str                    # short name used with hub_caches.open(name)
    repo_id: str                 # dataset repo "org/name"
    revision: str                # commit sha (40 hex characters) the name is pinned to
    model: str                   # model name as vfs.load_model takes it ("efficientnet_lite0")
    layer: str                   # layer name as the model's named_modules() spells it
    dataset: str                 # dataset the features were extracted from
    n: int                       # number of images
    grid: tuple[int, int]        # feature grid (height, width) in cells
    channels: int                # feature channels
    dtype: str                   # feature dtype as stored ("float16")
    size_bytes: int              # bytes to download for the whole cache
    manifest_sha256: str | None = None   # sha256 of manifest.json, checked on open when given
    tag: str | None = None       # the tag the sha was published under, for people reading the catalog

    def line(self) -> str:
        """One line of `python -m hub_caches list`: name, repo@revision, model, layer, dataset, shape, size."""
        return (f"{self.name:<28} {self.repo_id}@{self.revision[:10]} {self.model} {self.layer} "
                f"{self.dataset} N={self.n} {self.grid[0]}x{self.grid[1]}x{self.channels} {self.dtype} "
                f"{self.size_bytes / 2**20:.1f} MiB")


def catalog_path(path: str | Path | None = None) -> Path:
    """The catalog file read: `path`, else $HUB_CACHES_CATALOG, else the one shipped in the package."""
    if path is not None:
        return Path(path)
    return Path(os.environ[CATALOG_ENV]) if os.environ.get(CATALOG_ENV) else DEFAULT_CATALOG


def load_catalog(path: str | Path | None = None) -> dict[str, CatalogEntry]:
    """Every entry of the catalog, by name."""
    file = catalog_path(path)
    try:
        raw = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CatalogError(f"cannot read the cache catalog {file}: {error}; fix the file or point "
                           f"{CATALOG_ENV} at a valid one") from error
    known = {f.name for f in fields(CatalogEntry)}
    entries = {}
    for item in raw.get("caches", []):
        unknown = set(item) - known
        missing = {f.name for f in fields(CatalogEntry) if f.default is MISSING and f.name not in item}
        if unknown or missing:
            raise CatalogError(f"catalog {file}: entry {item.get('name')!r} has unknown keys "
                               f"{sorted(unknown)} and lacks {sorted(missing)}; valid keys: {sorted(known)}")
        entry = CatalogEntry(**{**item, "grid": tuple(item["grid"])})
        if not _SHA.fullmatch(entry.revision):
            raise CatalogError(f"catalog {file}: entry {entry.name!r} has revision {entry.revision!r}, which "
                               "is not a commit sha; pin it to the 40-character sha `hub_caches push` printed")
        entries[entry.name] = entry
    return entries


def lookup(name: str, *, path: str | Path | None = None) -> CatalogEntry:
    """The entry called `name`; an unknown name gets close matches and the command that lists names."""
    entries = load_catalog(path)
    if name in entries:
        return entries[name]
    close = difflib.get_close_matches(name, entries, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise CatalogError(f"no cache called {name!r} in the catalog {catalog_path(path)}: {hint}list the names "
                       "with `python -m hub_caches list`, or open a repo: hub_caches.open('org/name')")


def entry_json(entry: CatalogEntry) -> str:
    """The entry as the JSON object to paste into the catalog's "caches" list."""
    return json.dumps({**asdict(entry), "grid": list(entry.grid)}, indent=2)


def list_command(argv: list[str]) -> int:
    """`python -m hub_caches list [--catalog PATH]`: print the known caches."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m hub_caches list", description=list_command.__doc__)
    parser.add_argument("--catalog", help=f"catalog file (default: ${CATALOG_ENV} or {DEFAULT_CATALOG.name})")
    args = parser.parse_args(argv)
    entries = load_catalog(args.catalog)
    if not entries:
        print(f"no published caches in {catalog_path(args.catalog)} yet: push one with "
              "`python -m hub_caches push PATH --repo ORG/NAME` and add the entry it prints")
    for entry in entries.values():
        print(entry.line())
    return 0
