"""Publish VFS feature caches as versioned Hugging Face Hub datasets, and open them lazily.

    import hub_caches
    cache = hub_caches.open("org/name", revision="v1")   # a vfs.FeatureCache; files download when read
    hub_caches.pull("org/name")                          # or download (and verify) everything first
    hub_caches.push_cache("caches/fmnist", "org/name", tag="v1")

Command line: `python -m hub_caches list | push | pull`. The catalog (`catalog.json`) names the
published caches, each pinned to a commit sha. `vfs` never imports this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from hub_caches.errors import (
    CatalogError,
    HubCacheError,
    HubOfflineError,
    HubServerError,
    RateLimitError,
    RemoteFileError,
    RepoNotFoundError,
    RevisionNotFoundError,
)

# public name -> module that defines it (imported on first use: huggingface_hub loads only when needed)
_LAZY: dict[str, str] = {
    "open": "hub_caches.access",
    "open_store": "hub_caches.access",
    "locate": "hub_caches.access",
    "pull": "hub_caches.access",
    "push_cache": "hub_caches.push",
    "PushResult": "hub_caches.push",
    "PushError": "hub_caches.push",
    "HubStore": "hub_caches.store",
    "CatalogEntry": "hub_caches.catalog",
    "load_catalog": "hub_caches.catalog",
}

__all__ = [
    "CatalogEntry",
    "CatalogError",
    "HubCacheError",
    "HubOfflineError",
    "HubServerError",
    "HubStore",
    "PushError",
    "PushResult",
    "RateLimitError",
    "RemoteFileError",
    "RepoNotFoundError",
    "RevisionNotFoundError",
    "load_catalog",
    "locate",
    "open",
    "open_store",
    "pull",
    "push_cache",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hub_caches' has no attribute {name!r}; "
                             f"public names: {', '.join(__all__)}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from hub_caches.access import locate, open, open_store, pull
    from hub_caches.catalog import CatalogEntry, load_catalog
    from hub_caches.push import PushError, PushResult, push_cache
    from hub_caches.store import HubStore
