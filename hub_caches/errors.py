"""Errors of `hub_caches`: each derives from `vfs.errors.VFSError` and the stdlib type callers catch.

`hub_error` turns what `huggingface_hub` raises into one of these, with a message that says what
was wrong and what to do; it is the only place that knows `huggingface_hub`'s exception types.
"""

from __future__ import annotations

from vfs.errors import CacheCorruptError, VFSError


class HubCacheError(VFSError):
    """Base of the errors raised on purpose by `hub_caches`."""


class CatalogError(HubCacheError, KeyError):
    """A cache name the catalog does not list, or a catalog file that cannot be read."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class RepoNotFoundError(HubCacheError, LookupError):
    """A dataset repo that does not exist on the endpoint (or is private and no token was given)."""


class RevisionNotFoundError(HubCacheError, LookupError):
    """A branch, tag or commit that the repo does not have."""


class HubOfflineError(HubCacheError, ConnectionError):
    """The Hub cannot be reached (or HF_HUB_OFFLINE=1) and the file is not in the local cache."""


class RateLimitError(HubCacheError, ConnectionError):
    """The Hub answered HTTP 429 Too Many Requests (after huggingface_hub's own retries)."""


class HubServerError(HubCacheError, ConnectionError):
    """The Hub answered with a server error (HTTP 5xx): it is reachable but failing; retry later."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status code (500, 502, 503, 504...)


class RemoteFileError(CacheCorruptError):
    """A file of a published cache that is missing, truncated or altered: names repo, revision and file."""

    def __init__(self, message: str, *, repo_id: str, revision: str, file: str) -> None:
        super().__init__(message)
        self.repo_id = repo_id      # "org/name"
        self.revision = revision    # the commit sha the file was read at
        self.file = file            # path of the file inside the repo (not `filename`: OSError prints that)


def hub_error(error: Exception, *, repo_id: str, revision: str | None, filename: str | None = None,
              endpoint: str | None = None, offline: bool = False) -> Exception:
    """The `hub_caches` error for an exception raised by `huggingface_hub` (or `error` itself if unknown).

    Callers re-raise `error` itself when it comes back unchanged, else `raise mapped from error`.
    """
    from huggingface_hub import errors as hf

    where = f"{repo_id}@{revision}" if revision else repo_id
    what = f"file {filename!r} of dataset {where}" if filename else f"dataset {where}"
    host = f" on {endpoint}" if endpoint else ""
    status = _status(error)
    # order matters: RevisionNotFoundError and RemoteEntryNotFoundError subclass HfHubHTTPError
    if isinstance(error, hf.RevisionNotFoundError):
        return RevisionNotFoundError(
            f"revision {revision!r} does not exist in dataset {repo_id}{host}: pass a branch, a tag or a "
            f"commit sha that exists (HfApi().list_repo_refs({repo_id!r}, repo_type='dataset') lists them)")
    if isinstance(error, (hf.RepositoryNotFoundError, hf.GatedRepoError)):
        return RepoNotFoundError(
            f"dataset repo {repo_id!r} was not found{host}: check the spelling ('org/name'), that it is a "
            "dataset repo, and for a private repo log in (`hf auth login`) or pass token=")
    if isinstance(error, hf.RemoteEntryNotFoundError):
        return RemoteFileError(
            f"{what} is missing from the repo{host}, though the cache's manifest lists it: the upload is "
            "incomplete; push the cache again (python -m hub_caches push) or pin an older revision",
            repo_id=repo_id, revision=revision or "", file=filename or "")
    if status == 429:
        return RateLimitError(
            f"the Hub refused {what}{host} with HTTP 429 Too Many Requests, even after retrying: wait a few "
            "minutes and try again, log in (`hf auth login`) for a higher limit, or download the whole cache "
            "once with `python -m hub_caches pull` when the limit resets")
    if status is not None and 500 <= status < 600:  # before "offline": a failing server is not a lost network
        return HubServerError(
            f"the Hub{host} answered HTTP {status} (a server error on its side) for {what}, even after "
            "retrying: the network is fine; try again in a few minutes, or work from a cache downloaded "
            "beforehand (`python -m hub_caches pull NAME`, then HF_HUB_OFFLINE=1)", status=status)
    if isinstance(error, (hf.OfflineModeIsEnabled, hf.LocalEntryNotFoundError, hf.RevisionResolutionError)):
        reason = "HF_HUB_OFFLINE=1 is set" if offline else f"the Hub cannot be reached{host}"
        return HubOfflineError(
            f"cannot read {what}: {reason} and it is not in the local Hugging Face cache. Connect to the "
            "network (and unset HF_HUB_OFFLINE), or download the cache beforehand with "
            "`python -m hub_caches pull NAME` and open it with revision= a commit sha")
    if _is_connection_error(error):
        return HubOfflineError(
            f"cannot read {what}: the Hub cannot be reached{host} ({error.__class__.__name__}). Check the "
            "network and HF_ENDPOINT, or work offline from a cache pulled beforehand (HF_HUB_OFFLINE=1)")
    return error


def _status(error: BaseException) -> int | None:
    """The HTTP status behind `error`, also when huggingface_hub re-raised it as a cache miss."""
    seen = 0
    while error is not None and seen < 5:
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status is not None:
            return status
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def _is_connection_error(error: Exception) -> bool:
    import httpx2

    return isinstance(error, (httpx2.TransportError, ConnectionError))
