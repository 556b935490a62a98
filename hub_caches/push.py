"""`push`: publish a finished local cache as a versioned Hugging Face Hub dataset repo.

    python -m hub_caches push caches/fmnist --repo ORG/NAME --tag v1 [--codec zstd|lz4]

The cache is checked (an unfinished or damaged one is refused), re-encoded for distribution
(`encode.py`), given a dataset card and a manifest, and uploaded in one commit with
`huggingface_hub`'s own API. The commit sha it prints is what the catalog pins.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from hub_caches.catalog import CatalogEntry, entry_json
from hub_caches.encode import cache_facts, encode_cache, folder_size, write_manifest
from hub_caches.errors import HubCacheError, hub_error
from hub_caches.remote import CARD, STORE_DIR, hub_endpoint, sha256_file


class PushError(HubCacheError, ValueError):
    """A push that cannot go ahead as asked (existing tag, upload that did not arrive whole...)."""


@dataclass(frozen=True)
class PushResult:
    repo_id: str          # dataset repo written to
    revision: str         # commit sha of the upload: pin this in the catalog
    tag: str | None       # tag created on that commit
    entry: CatalogEntry   # the catalog entry for the pushed cache
    files: int            # files uploaded (cache files, card and manifest)


def push_cache(path: str | Path, repo_id: str, *, tag: str | None = None, codec: str = "zstd",
               name: str | None = None, license: str = "other", private: bool | None = None,
               endpoint: str | None = None, token: str | bool | None = None,
               verify: bool = True) -> PushResult:
    """Upload the finished cache at `path` to dataset repo `repo_id` (created if needed); tag the commit."""
    from huggingface_hub import HfApi

    from vfs import open_cache

    cache = open_cache(path, in_memory=False)  # CacheIncompleteError for an unfinished build
    if verify:
        cache.verify()  # every block of every array, before anything is published
    endpoint = hub_endpoint(endpoint)
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private)
        if tag is not None:
            _refuse_existing_tag(api, repo_id, tag)
        with tempfile.TemporaryDirectory(prefix="hub_caches-push-") as folder:
            folder = Path(folder)
            store = encode_cache(path, folder, codec=codec)
            info = cache_facts(cache.meta, codec=codec, size_bytes=folder_size(store))
            from hub_caches.card import render_card

            (folder / CARD).write_text(render_card(repo_id, info, license=license, revision=tag))
            manifest = write_manifest(folder, info)
            manifest_sha = sha256_file(manifest)
            size = folder_size(folder)
            local = {path.relative_to(folder).as_posix(): path.stat().st_size
                     for path in folder.rglob("*") if path.is_file()}
            commit = api.upload_folder(
                repo_id=repo_id, repo_type="dataset", folder_path=folder, delete_patterns=[f"{STORE_DIR}/**"],
                commit_message=f"VFS cache: {info['model']} {info['layer']} on {info['dataset']} ({codec})")
        sha = commit.oid
        _check_arrived(api, repo_id, sha, local)
        if tag is not None:
            api.create_tag(repo_id, tag=tag, revision=sha, repo_type="dataset",
                           tag_message=f"{info['model']} {info['layer']} {info['dataset']}")
    except Exception as error:
        mapped = hub_error(error, repo_id=repo_id, revision=tag, endpoint=endpoint)
        if mapped is error:
            raise
        raise mapped from error
    entry = CatalogEntry(
        name=name or repo_id.split("/")[-1], repo_id=repo_id, revision=sha, model=info["model"],
        layer=info["layer"], dataset=info["dataset"], n=info["n"], grid=tuple(info["grid"]),
        channels=info["channels"], dtype=info["dtype"], size_bytes=size, manifest_sha256=manifest_sha,
        tag=tag)
    return PushResult(repo_id, sha, tag, entry, len(local))


def _refuse_existing_tag(api, repo_id: str, tag: str) -> None:
    refs = api.list_repo_refs(repo_id, repo_type="dataset")
    if any(ref.name == tag for ref in refs.tags):
        raise PushError(f"tag {tag!r} already exists in dataset {repo_id}: a tag names one published version "
                        "and is never moved; push with a new tag (e.g. the next version number)")


def _check_arrived(api, repo_id: str, sha: str, local: dict[str, int]) -> None:
    """Compare the commit's file list and sizes with what was uploaded."""
    from huggingface_hub.hf_api import RepoFile

    tree = api.list_repo_tree(repo_id, repo_type="dataset", revision=sha, recursive=True)
    remote = {entry.path: entry.size for entry in tree if isinstance(entry, RepoFile)}
    wrong = sorted(path for path, size in local.items() if remote.get(path) != size)
    if wrong:
        raise PushError(f"commit {sha} of dataset {repo_id} lacks or has wrong sizes for {len(wrong)} files "
                        f"(first: {wrong[:3]}); push again")


def push_command(argv: list[str]) -> int:
    """`python -m hub_caches push PATH --repo ORG/NAME [--tag v1] [--codec zstd|lz4]`: publish a cache."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m hub_caches push", description=push_command.__doc__)
    parser.add_argument("path", type=Path, help="folder of a finished cache (python -m vfs index --out PATH)")
    parser.add_argument("--repo", required=True, help="dataset repo id ORG/NAME (created if missing)")
    parser.add_argument("--tag", help="tag to create on the commit, e.g. v1 (must not exist yet)")
    parser.add_argument("--codec", default="zstd", choices=("zstd", "lz4"),
                        help="feature compression: zstd (default, ~1.16x on real features) or lz4 (~1.0x)")
    parser.add_argument("--name", help="catalog name (default: the repo name)")
    parser.add_argument("--license", default="other", help="license for the card (default: other)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--endpoint", help="Hub URL (default: $HF_ENDPOINT or https://huggingface.co)")
    args = parser.parse_args(argv)
    result = push_cache(args.path, args.repo, tag=args.tag, codec=args.codec, name=args.name,
                        license=args.license, private=args.private or None, endpoint=args.endpoint)
    tagged = f" (tag {result.tag})" if result.tag else ""
    print(f"pushed {args.path} to dataset {result.repo_id}: {result.files} files, "
          f"{result.entry.size_bytes / 2**20:.1f} MiB, commit{tagged}:\n{result.revision}\n")
    print("catalog entry (add it to the \"caches\" list of hub_caches/catalog.json):\n"
          f"{entry_json(result.entry)}")
    return 0

