"""One published cache on the Hub: its repo pinned to a commit, its manifest, and verified file downloads.

Every file comes through `huggingface_hub.hf_hub_download` into the normal Hugging Face cache
(`HF_HUB_CACHE`), at a commit sha, so a file fetched once is read from disk afterwards with no
request, and `HF_HUB_OFFLINE=1` works for whatever was fetched. Each file is checked against the
sha256 the manifest records before anything reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from hub_caches.errors import RemoteFileError, hub_error

MANIFEST = "manifest.json"      # {"format", "files": {path: {"sha256", "size"}}, "cache": {...}}
CARD = "README.md"
STORE_DIR = "cache.zarr"        # the Zarr v3 group inside the repo
MANIFEST_FORMAT = "hub_caches/1"


@dataclass(frozen=True)
class FileEntry:
    sha256: str   # hex digest of the file as stored in the repo
    size: int     # bytes


@dataclass(frozen=True)
class Remote:
    repo_id: str            # dataset repo "org/name"
    revision: str           # commit sha every file is read at
    endpoint: str           # Hub URL ("https://huggingface.co" or a mirror / test server)
    cache_dir: Path         # Hugging Face hub cache the files land in
    token: str | bool | None = None   # None: the saved login, False: anonymous

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision[:10]}"


def is_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE")
    return constants.HF_HUB_OFFLINE if value is None else value.upper() in ("1", "ON", "YES", "TRUE")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as the environment says now: HF_HUB_CACHE, else HF_HOME/hub."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def hub_endpoint(endpoint: str | None = None) -> str:
    from huggingface_hub import constants

    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def resolve(repo_id: str, *, revision: str | None = None, endpoint: str | None = None,
            cache_dir: str | Path | None = None, token: str | bool | None = None) -> Remote:
    """Pin `repo_id` at `revision` (branch, tag or sha; default "main") to a commit sha, asking the Hub once.

    Offline, a branch or tag resolves from the refs the Hugging Face cache recorded earlier.
    """
    from huggingface_hub import HfApi

    endpoint = hub_endpoint(endpoint)
    cache_dir = Path(cache_dir) if cache_dir is not None else hub_cache_dir()
    api = HfApi(endpoint=endpoint, token=token)
    try:
        sha = api.resolve_revision(repo_id, repo_type="dataset", revision=revision, cache_dir=cache_dir,
                                   local_files_only=is_offline(), token=token).resolved
    except Exception as error:
        mapped = hub_error(error, repo_id=repo_id, revision=revision or "main", endpoint=endpoint,
                           offline=is_offline())
        if mapped is error:
            raise
        raise mapped from error
    return Remote(repo_id, sha, endpoint, cache_dir, token)


class _Silent(tqdm):
    """No per-file progress bars from hf_hub_download (the store fetches many small files)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


# (resolved path, sha256) pairs already checked in this process: a cached file is hashed once
_verified: set[tuple[str, str]] = set()
_verified_lock = threading.Lock()


def fetch(remote: Remote, filename: str, *, expected: FileEntry | None) -> Path:
    """Local path of `filename` at the remote's commit, downloaded if missing, checked against `expected`."""
    from huggingface_hub import hf_hub_download

    try:
        path = Path(hf_hub_download(remote.repo_id, filename, repo_type="dataset", revision=remote.revision,
                                    endpoint=remote.endpoint, cache_dir=remote.cache_dir, token=remote.token,
                                    local_files_only=is_offline(), tqdm_class=_Silent))
    except Exception as error:
        if "Consistency check failed" in str(error):  # huggingface_hub saw fewer bytes than announced
            raise _corrupt(remote, filename, f"the download was cut short ({error})") from error
        mapped = hub_error(error, repo_id=remote.repo_id, revision=remote.revision, filename=filename,
                           endpoint=remote.endpoint, offline=is_offline())
        if mapped is error:
            raise
        raise mapped from error
    if expected is not None:
        verify(remote, filename, path, expected)
    return path


def verify(remote: Remote, filename: str, path: Path, expected: FileEntry) -> None:
    """Check size and sha256 of a downloaded file; a bad one is deleted from the cache and reported."""
    real = str(path.resolve())
    with _verified_lock:
        if (real, expected.sha256) in _verified:
            return
    size = os.path.getsize(real)
    digest = sha256_file(real) if size == expected.size else None
    if digest != expected.sha256:
        for stale in (path, Path(real)):  # the snapshot link and the blob, so a retry downloads again
            stale.unlink(missing_ok=True)
        found = f"{size} bytes" if digest is None else f"sha256 {digest[:16]}..."
        raise _corrupt(remote, filename, f"it does not match the manifest (expected {expected.size} bytes, "
                                         f"sha256 {expected.sha256[:16]}...; got {found})")
    with _verified_lock:
        _verified.add((real, expected.sha256))


def _corrupt(remote: Remote, filename: str, why: str) -> RemoteFileError:
    return RemoteFileError(
        f"file {filename!r} of dataset {remote.repo_id} at revision {remote.revision} from {remote.endpoint} "
        f"cannot be trusted: {why}. The bad copy was removed from the local cache; try again (a network "
        "fault will not repeat); if it does, the repo itself is damaged: report it or pin another revision",
        repo_id=remote.repo_id, revision=remote.revision, file=filename)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(remote: Remote, *, sha256: str | None = None) -> tuple[dict[str, FileEntry], dict]:
    """({path: FileEntry}, cache description) from the repo's manifest; `sha256` pins the manifest itself."""
    path = fetch(remote, MANIFEST, expected=None)
    if sha256 is not None:
        verify(remote, MANIFEST, path, FileEntry(sha256, os.path.getsize(path)))
    try:
        raw = json.loads(path.read_text())
        files = {name: FileEntry(item["sha256"], int(item["size"])) for name, item in raw["files"].items()}
    except (ValueError, KeyError, TypeError) as error:
        raise _corrupt(remote, MANIFEST, f"it is not a hub_caches manifest ({error})") from error
    if raw.get("format") != MANIFEST_FORMAT:
        raise _corrupt(remote, MANIFEST, f"its format is {raw.get('format')!r}, this version reads "
                                         f"{MANIFEST_FORMAT!r}: upgrade hub_caches or pin an older revision")
    return files, raw.get("cache", {})
