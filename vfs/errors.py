"""One base error for the library; each concrete error also inherits the stdlib type callers catch.

Messages say what was wrong, what is valid, and what to do next.
"""

from __future__ import annotations

import argparse

NAMED = 10  # images an error names at most (the first ones): enough to see a pattern, short enough to read


class VFSError(Exception):
    """Base class of every error raised on purpose by `vfs`."""


class LayerError(VFSError, KeyError):
    """A layer name that the model does not have (the message suggests close names)."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class ModelError(VFSError, ValueError):
    """A model that cannot be loaded as asked (unknown name, weights not available offline...)."""


class MaskError(VFSError, ValueError):
    """A mask or box that cannot be used (empty, wrong shape, outside the crop...)."""


class SearchError(VFSError, ValueError):
    """Search inputs that do not fit together (shapes, dtypes, indices...)."""


class DatasetError(VFSError, ValueError):
    """A dataset spec or image source that cannot be read."""


class CacheError(VFSError, RuntimeError):
    """Base for feature-cache problems."""


class CacheIncompleteError(CacheError):
    """A cache whose build did not finish (the message says how far it got and how to resume)."""


class CacheCorruptError(CacheError, OSError):
    """A chunk that is missing, truncated or altered (the message names it)."""


class CacheMismatchError(CacheError, ValueError):
    """A cache opened with a model, layer or schema that does not match the one it was built with."""


class NonFiniteError(VFSError, ValueError):
    """Features holding NaN or inf, or values the cache's dtype cannot store (the message names where)."""


class OptionError(VFSError, ValueError):
    """An option outside its valid range (a batch size of 0, an unknown codec...)."""


class CacheBusyError(CacheError, BlockingIOError):
    """Another process is building the same cache folder right now."""


class DeviceError(VFSError, ValueError):
    """A device that torch does not know, or that this machine does not have (e.g. "cuda" without a GPU)."""


class ClusterError(VFSError, ConnectionError):
    """A Dask cluster that cannot be used (scheduler unreachable, no workers...); the message names it."""


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1 (argparse prints the message and exits 2 otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer: pass 1 or more")
    return value
