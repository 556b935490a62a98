"""Open a published cache lazily (`open`), or download all of it first (`pull`).

    cache = hub_caches.open("fmnist-lite0-blocks3")          # a catalog name, pinned to a commit
    cache = hub_caches.open("org/name", revision="v1")        # or any dataset repo, at a branch/tag/sha
    cache[0]                                                  # downloads only the block holding image 0

`open` resolves the revision to a commit sha once, reads the manifest, checks that it lists every
chunk, and hands a `HubStore` to `vfs.open_cache`. Nothing else is downloaded until read.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hub_caches.catalog import lookup
from hub_caches.remote import MANIFEST, FileEntry, Remote, fetch, load_manifest, resolve
from hub_caches.store import HubStore, check_complete

if TYPE_CHECKING:
    from vfs import FeatureCache, LoadedModel


@dataclass(frozen=True)
class Published:
    """A published cache, pinned: where it lives and what its manifest lists."""

    remote: Remote                   # repo pinned to a commit sha
    files: dict[str, FileEntry]      # every file of the cache (repo path -> sha256, size)
    cache: dict[str, Any]            # what it holds (model, layer, dataset, shape...), from the manifest


def locate(name_or_repo: str, *, revision: str | None = None, endpoint: str | None = None,
           catalog: str | Path | None = None, cache_dir: str | Path | None = None,
           token: str | bool | None = None) -> Published:
    """Pin a catalog name or an "org/name" repo to a commit and read its (verified) manifest."""
    manifest_sha = None
    repo_id = name_or_repo
    if "/" not in name_or_repo:
        entry = lookup(name_or_repo, path=catalog)
        repo_id, manifest_sha = entry.repo_id, entry.manifest_sha256
        revision = revision or entry.revision
    remote = resolve(repo_id, revision=revision, endpoint=endpoint, cache_dir=cache_dir, token=token)
    if manifest_sha is not None and revision != remote.revision:
        manifest_sha = None  # the catalog's manifest hash is for the catalog's commit only
    files, cache = load_manifest(remote, sha256=manifest_sha)
    return Published(remote, files, cache)


def open_store(name_or_repo: str, *, revision: str | None = None, endpoint: str | None = None,
               catalog: str | Path | None = None, cache_dir: str | Path | None = None,
               token: str | bool | None = None, prefetch: int = 4, workers: int = 4) -> HubStore:
    """The read-through Zarr store of a published cache, after checking the manifest lists every chunk."""
    published = locate(name_or_repo, revision=revision, endpoint=endpoint, catalog=catalog,
                       cache_dir=cache_dir, token=token)
    store = HubStore(published.remote, published.files, prefetch=prefetch, workers=workers)
    check_complete(store)
    return store


def open(name_or_repo: str, *, revision: str | None = None, endpoint: str | None = None,
         catalog: str | Path | None = None, cache_dir: str | Path | None = None,
         token: str | bool | None = None, model: LoadedModel | str | None = None, layer: str | None = None,
         in_memory: bool | None = None, prefetch: int = 4) -> FeatureCache:
    """A `vfs.FeatureCache` over a published cache, reading files from the Hub as they are needed.

    `name_or_repo` is a catalog name (`python -m hub_caches list`) or a dataset repo "org/name";
    `revision` a branch, tag or commit sha (default: the catalog's sha, else "main"). `model` and
    `layer`, if given, must match the cache. `in_memory` as `vfs.open_cache` takes it: the
    default streams a remote cache block by block; True (or `.load()`) downloads and decodes
    everything into RAM once. `HF_HUB_OFFLINE=1` reads what is already in the Hugging Face cache.
    """
    from vfs import open_cache

    store = open_store(name_or_repo, revision=revision, endpoint=endpoint, catalog=catalog,
                       cache_dir=cache_dir, token=token, prefetch=prefetch)
    return open_cache(store, model=model, layer=layer, in_memory=in_memory)


def pull(name_or_repo: str, *, revision: str | None = None, endpoint: str | None = None,
         catalog: str | Path | None = None, cache_dir: str | Path | None = None,
         token: str | bool | None = None, workers: int = 8, progress: bool = True) -> Path:
    """Download (and verify) every file of a published cache into the Hugging Face cache; return its folder.

    Afterwards `open(..., revision=<sha>)` works with `HF_HUB_OFFLINE=1` and no request at all.
    """
    from tqdm.auto import tqdm

    published = locate(name_or_repo, revision=revision, endpoint=endpoint, catalog=catalog,
                       cache_dir=cache_dir, token=token)
    remote, files = published.remote, published.files
    total = sum(entry.size for entry in files.values())
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"pull {remote}", disable=not progress) as bar:
        def one(item: tuple[str, FileEntry]) -> Path:
            path = fetch(remote, item[0], expected=item[1])
            bar.update(item[1].size)
            return path

        with ThreadPoolExecutor(max(1, workers)) as pool:
            list(pool.map(one, sorted(files.items(), key=lambda item: -item[1].size)))  # largest first
    return fetch(remote, MANIFEST, expected=None).parent  # snapshots/<sha>/


def pull_command(argv: list[str]) -> int:
    """`python -m hub_caches pull NAME [--revision REV]`: download a whole cache, with a progress bar."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m hub_caches pull", description=pull_command.__doc__)
    parser.add_argument("name", help="catalog name (python -m hub_caches list) or dataset repo ORG/NAME")
    parser.add_argument("--revision", help="branch, tag or commit sha (default: catalog's sha, else main)")
    parser.add_argument("--catalog", help="catalog file (default: $HUB_CACHES_CATALOG or the packaged one)")
    parser.add_argument("--endpoint", help="Hub URL (default: $HF_ENDPOINT or https://huggingface.co)")
    parser.add_argument("--workers", type=int, default=8, help="parallel downloads (default 8)")
    args = parser.parse_args(argv)
    folder = pull(args.name, revision=args.revision, endpoint=args.endpoint, catalog=args.catalog,
                  workers=args.workers)
    print(f"{args.name}: every file downloaded and verified in {folder}\n"
          f"open it offline with: hub_caches.open({args.name!r}, revision={folder.name!r})")
    return 0
