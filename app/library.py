"""The caches the app can search, the models that read uploads, and the first-start default build.

`CacheLibrary` is the app's one long-lived object: it finds caches under a root folder, lists Hub
caches from the catalog when the Hub can be reached, opens a cache once and keeps it in RAM, and
keeps one model and one extractor per (model, layer) so an upload costs one forward pass.
No gradio here.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from vfs.errors import CacheError, VFSError

log = logging.getLogger(__name__)

PICTURES_KEPT = 512  # original images kept decoded (for painting on and for results)
THUMBNAILS_KEPT = 4096  # thumbnails kept decoded per cache (about 30 KB each at 96 px)
HUB_PREFIX = "hub:"  # keys of Hub caches: "hub:<catalog name>"; local keys are paths under root


@dataclass(frozen=True)
class CacheEntry:
    key: str  # what the dropdown holds: a path relative to root, or "hub:<catalog name>"
    title: str  # what the dropdown shows
    path: Path | None  # local folder of the cache; None for a Hub cache not yet opened
    repo: str | None = None  # catalog name (or repo id) of a Hub cache, for hub_caches.open
    revision: str | None = None  # Hub revision (a commit sha where the catalog pins one)
    fingerprint: str | None = None  # dataset fingerprint of a local cache (two caches of one dataset share it)


def cache_title(cache) -> str:
    """One line naming a cache: model, layer, dataset, N, grid and dtype (and its two-stage index, if any)."""
    from vfs.cache.coarse import has_coarse_index

    meta = cache.meta
    n, channels, height, width = cache.shape
    indexed = " · coarse index: two-stage search available" if has_coarse_index(cache) else ""
    return (
        f"{meta.model} · {meta.layer} · {meta.dataset} — {n} images, grid {height}x{width}, "
        f"{channels} channels, {meta.dtype}{indexed}"
    )


def find_local_caches(root: Path) -> list[Path]:
    """Folders under `root` (two levels deep at most) that hold a VFS cache (a Zarr group)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for marker in sorted([*root.glob("*/zarr.json"), *root.glob("*/*/zarr.json")]):
        folder = marker.parent
        if any(parent in found for parent in folder.parents):
            continue
        if (folder / "features").exists():
            found.append(folder)
    return found


class CacheLibrary:
    """Caches by key, opened once and held in RAM; models and extractors built once per name."""

    def __init__(self, root: Path | str, *, hub: bool = True, device: str = "cpu", scheduler: str | None = None):
        self.root = Path(root)
        self.hub = hub
        self.device = device  # where searches run: "cpu", or "cuda" (caches held in GPU memory, app.gpu)
        self.scheduler = scheduler  # a Dask scheduler address: caches are searched on its workers
        self._entries: dict[str, CacheEntry] = {}
        self._caches: dict[str, object] = {}
        self._coarse: dict[str, object | None] = {}
        self._models: dict[str, object] = {}
        self._extractors: dict[tuple, object] = {}
        self._datasets: dict[str, object | None] = {}
        self.picture = functools.lru_cache(maxsize=PICTURES_KEPT)(self._picture)
        self._lock = threading.RLock()

    # ---- listing
    def refresh(self) -> list[CacheEntry]:
        """Scan the root folder (and the Hub catalog when reachable) and return every entry."""
        from vfs import open_cache

        entries: dict[str, CacheEntry] = {}
        for folder in find_local_caches(self.root):
            key = folder.relative_to(self.root).as_posix()
            try:
                cache = open_cache(folder)
                title = cache_title(cache)
            except (VFSError, OSError) as error:  # an unfinished or damaged cache is skipped; a bug is not
                log.warning("skipping cache %s: %s", folder, error)
                continue
            entries[key] = CacheEntry(key=key, title=title, path=folder, fingerprint=cache.meta.dataset_fingerprint)
        if self.hub:
            entries.update({entry.key: entry for entry in hub_entries()})
        with self._lock:
            self._entries = entries
        return list(entries.values())

    @property
    def entries(self) -> list[CacheEntry]:
        return list(self._entries.values())

    def entry(self, key: str) -> CacheEntry:
        if not key:
            raise CacheError("no cache is selected: pick one in the 'Cache' list first")
        if key not in self._entries:
            self.refresh()
        if key not in self._entries:
            valid = ", ".join(self._entries) or "none found"
            raise CacheError(f"no cache named {key!r}; available: {valid}. Pick one from the 'Cache' list")
        return self._entries[key]

    # ---- opening
    def open(self, key: str):
        """The cache behind `key`, read into RAM on first use (a hot cache belongs in RAM)."""
        with self._lock:
            if key in self._caches:
                return self._caches[key]
            entry = self.entry(key)
            if self.scheduler:  # the workers load the shards; this process streams labels and thumbnails
                from vfs import open_cluster_cache

                if entry.repo is not None:
                    import hub_caches

                    where = functools.partial(hub_caches.open, entry.repo, revision=entry.revision)
                else:
                    where = entry.path
                cache = open_cluster_cache(where, scheduler=self.scheduler)
            elif entry.repo is not None:
                import hub_caches

                cache = hub_caches.open(entry.repo, revision=entry.revision)
            else:
                from vfs import open_cache

                cache = open_cache(entry.path)  # streamed when too large for RAM
            from vfs.cache.coarse import has_coarse_index

            if cache.in_memory or entry.repo is not None or not has_coarse_index(cache):
                cache = cache.load()  # a cache too large for RAM stays on disk only when two-stage can search it
            # each thumbnail read decodes one Zarr chunk (~8 ms); results and pages revisit the same ones
            cache.thumbnail = functools.lru_cache(maxsize=THUMBNAILS_KEPT)(cache.thumbnail)
            self._caches[key] = cache
            return cache

    def coarse(self, key: str):
        """The cache's coarse index (`vfs.CoarseIndex`, held in RAM once opened), or None when it has none."""
        with self._lock:
            if key not in self._coarse:
                from vfs.cache.coarse import has_coarse_index, open_coarse_index

                cache = self.open(key)
                self._coarse[key] = open_coarse_index(cache) if has_coarse_index(cache) else None
            return self._coarse[key]

    def _picture(self, key: str, index: int):
        """Image `index` of cache `key` (PIL): the original when the cache's dataset is on this machine
        (same fingerprint), else the stored thumbnail (at most `meta.thumbnail` pixels a side)."""
        cache = self.open(key)
        dataset = self.dataset(key)
        return dataset[int(index)].image if dataset is not None else cache.thumbnail(int(index))

    def dataset(self, key: str):
        """The image source a local cache was built from, when it opens here with the same fingerprint."""
        with self._lock:
            if key not in self._datasets:
                from vfs.datasets import open_dataset

                meta = self.open(key).meta
                try:
                    dataset = open_dataset(meta.dataset)
                    dataset = dataset if dataset.fingerprint() == meta.dataset_fingerprint else None
                except (VFSError, OSError) as error:  # not on this machine: thumbnails it is
                    log.info("dataset %r not available for originals (%s); showing thumbnails", meta.dataset, error)
                    dataset = None
                self._datasets[key] = dataset
            return self._datasets[key]

    def model(self, name: str):
        """`vfs.load_model(name)`, loaded once."""
        with self._lock:
            if name not in self._models:
                from vfs import load_model

                self._models[name] = load_model(name)
            return self._models[name]

    def extractor(self, model_name: str, layer: str, *, preprocess=None):
        """A `vfs.FeatureExtractor` for (model, layer, preprocess), built once.

        `preprocess` should be the cache's (`self.preprocess(cache)`): a cache may have been built
        at another input size than the model's default.
        """
        with self._lock:
            model = self.model(model_name)
            preprocess = preprocess or model.preprocess
            key = (model_name, layer, preprocess)
            if key not in self._extractors:
                from vfs import FeatureExtractor

                self._extractors[key] = FeatureExtractor(model.module, layer, preprocess=preprocess)
            return self._extractors[key]

    def preprocess(self, cache):
        """The geometry the cache's model applies to an image (recorded in the cache's metadata)."""
        meta = cache.meta
        if hasattr(meta, "make_preprocess"):
            return meta.make_preprocess()
        return self.model(meta.model).preprocess


def default_key(library: CacheLibrary) -> str | None:
    """The cache the page opens on: the Search tab's default cache (the first of
    `vfs.cache.defaults.DEFAULTS`, Fashion-MNIST at `blocks.4`) when listed, else the first listed."""
    from vfs.cache.defaults import DEFAULTS, folder_name

    entries = library.entries
    wanted = folder_name(next(iter(DEFAULTS.values())))
    for entry in entries:
        if entry.path is not None and entry.path.name == wanted:
            return entry.key
    return entries[0].key if entries else None


def hub_entries() -> list[CacheEntry]:
    """Catalog caches (the catalog ships with `hub_caches`, so it reads offline); none if it is absent."""
    try:
        from hub_caches.catalog import load_catalog

        catalog = load_catalog()
    except (ImportError, VFSError, OSError) as error:  # no hub_caches, or a broken catalog: local caches only
        log.info("Hub catalog not available: %s", error)
        return []
    entries = []
    for item in catalog.values():
        title = (
            f"Hub: {item.model} · {item.layer} · {item.dataset} — {item.n} images, grid "
            f"{item.grid[0]}x{item.grid[1]}, {item.channels} channels, {item.dtype} "
            f"({item.size_bytes / 2**20:.0f} MiB download)"
        )
        entries.append(
            CacheEntry(
                key=f"{HUB_PREFIX}{item.name}", title=title, path=None, repo=item.name, revision=item.revision
            )
        )
    return entries


class DefaultBuild:
    """Builds the offline default caches in a background thread, keeping a line of progress to show.

    `vfs.cache.defaults.ensure_default_caches(root, progress=...)` does the work; whatever it reports
    is kept as text in `message`, so the page can show it while the build runs; each finished cache
    lands in `paths` at once, so the page can list it while the others build.
    """

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.message = "starting the default cache build"
        self.fraction = 0.0  # of all the default builds, for a progress bar
        self.done = False
        self.error: str | None = None
        self.paths: dict[str, Path] = {}  # default name -> folder, for each cache usable so far
        self._thread: threading.Thread | None = None

    def start(self) -> DefaultBuild:
        self._thread = threading.Thread(target=self._run, name="vfs-default-build", daemon=True)
        self._thread.start()
        return self

    def report(self, *args, **kwargs) -> None:
        """Progress callback: keeps the latest report as one line of text.

        Takes what the builders report: `(fraction, message)`, `(done, total, ...)` or any values.
        """
        parts = [str(arg) for arg in args] + [f"{key}={value}" for key, value in kwargs.items()]
        if len(args) >= 2 and all(isinstance(arg, int) for arg in args[:2]) and args[1]:
            parts = [f"{args[0]}/{args[1]} ({args[0] / args[1]:.0%})", *map(str, args[2:])]
        elif args and isinstance(args[0], float) and 0 <= args[0] <= 1:
            self.fraction = args[0]
            parts = [f"{args[0]:.0%}", *map(str, args[1:])]
        self.message = " ".join(parts)

    def _run(self) -> None:
        try:
            from vfs.cache.defaults import ensure_default_caches

            ensure_default_caches(self.root, progress=self.report, ready=self.paths.__setitem__)
            self.message = "default caches ready"
        except Exception as error:  # shown on the page; the app still serves other caches
            log.exception("default cache build failed")
            self.error = f"{type(error).__name__}: {error}"
        finally:
            self.done = True

    def page_status(self) -> tuple[str, int, bool]:
        """What the page shows of the build: (status line, caches ready so far, still running)."""
        if not self.done:
            status = (f"**Building the default caches** (first start only; each is listed as soon as it is "
                      f"ready: {len(self.paths)} of them so far) <progress value='{self.fraction:.3f}' "
                      f"max='1'></progress> {self.message}")
            return status, len(self.paths), True
        status = f"**The default cache build failed:** {self.error}" if self.error else ""
        return status, len(self.paths), False

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.done
