"""The app's module-level caches under gradio's concurrency: several threads calling the handlers at once
get the same answers as one call at a time. Caches exercised: the uploads' features
(`handlers._upload_features`, evicted when full), the library's opened caches, models and extractors,
its pictures and thumbnails (`functools.lru_cache`), and the caches prepared for a device (`gpu._held`).

Thread switches are forced every microsecond (`sys.setswitchinterval`) so that a check-then-use race
in a cache shows up in a short test rather than once a week in production."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from app_server import shared_caches

from app import gpu, handlers
from app.library import CacheLibrary
from app.state import SearchOptions

FMNIST, FMNIST3, PHOTOS = "fmnist-blocks5", "fmnist-blocks3", "photos-blocks5"
THREADS = 8


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> CacheLibrary:
    return CacheLibrary(shared_caches(tmp_path_factory), hub=False)


@pytest.fixture
def switch_often():
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def painted(image: np.ndarray) -> dict:
    """An editor value: `image` with its middle painted."""
    height, width = image.shape[:2]
    alpha = np.zeros((height, width, 4), np.uint8)  # (H, W, 4)
    alpha[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = (255, 0, 0, 255)
    background = np.dstack([image, np.full((height, width), 255, np.uint8)])  # (H, W, 4)
    return {"background": background, "layers": [alpha], "composite": background}


def uploads(count: int) -> list[dict]:
    rng = np.random.default_rng(7)
    return [painted(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)) for _ in range(count)]


def in_threads(function, items: list) -> list:
    """`function(item)` for every item, from THREADS threads at once, in a shuffled order; results in item order."""
    order = np.random.default_rng(0).permutation(len(items))
    with ThreadPoolExecutor(THREADS) as pool:
        done = dict(zip(order, pool.map(lambda i: function(items[i]), order)))
    return [done[i] for i in range(len(items))]


def test_upload_features_from_many_threads_equal_one_at_a_time(library, monkeypatch, switch_often):
    values = uploads(12)
    queries = [handlers.read_query(library, PHOTOS, value)[0] for value in values]
    handlers._upload_features.clear()
    alone = [handlers.query_features(library, query).copy() for query in queries]  # the oracle: one at a time
    monkeypatch.setattr(handlers, "UPLOADS_KEPT", 2)  # evicted all the time: every call races the others
    handlers._upload_features.clear()
    for _ in range(3):
        together = in_threads(lambda query: handlers.query_features(library, query), queries * 2)
        for i, features in enumerate(together):
            np.testing.assert_array_equal(features, alone[i % len(queries)])


def test_searches_pictures_and_pages_from_many_threads_equal_one_at_a_time(tmp_path_factory, switch_often):
    def work(task):
        kind, key, index = task
        if kind in ("search", "upload"):  # a dataset image (its cached features) or an upload (extracted)
            image = handlers.display_image(fresh, key, index)
            picked = handlers.Picked(key, index, fresh.open(key).ids[index]) if kind == "search" else None
            query, _ = handlers.read_query(fresh, key, painted(image if picked else image[::-1]), picked)
            outcome = handlers.run_search(fresh, query, SearchOptions(k=5))
            return [(m.index, m.row, m.col, round(m.score, 5)) for m in outcome.matches]
        if kind == "picture":
            return np.asarray(fresh.picture(key, index)).tobytes()
        items, pages = handlers.dataset_page(fresh, key, index)
        return pages, [np.asarray(thumb).tobytes() for thumb, _ in items]

    # uploads at two layers of one model: extractors of blocks.3 and blocks.5 hook the same module
    tasks = [(kind, key, i) for kind in ("search", "upload", "picture", "page") for key in (FMNIST, FMNIST3, PHOTOS)
             for i in range(3)]
    root = shared_caches(tmp_path_factory)
    fresh = CacheLibrary(root, hub=False)
    handlers._upload_features.clear()
    alone = [work(task) for task in tasks]  # the oracle: one at a time
    for _ in range(2):
        handlers._upload_features.clear()
        fresh = CacheLibrary(root, hub=False)  # nothing opened yet: the first calls race to open and fill caches
        assert in_threads(work, tasks) == alone


def test_a_cache_is_prepared_once_for_a_device_whatever_the_threads(library, monkeypatch, switch_often):
    import vfs

    def slow_prepare(source):  # a window wide enough for every thread to arrive while the first prepares
        time.sleep(0.05)
        return prepare(source)

    prepare = vfs.prepare
    monkeypatch.setattr(vfs, "prepare", slow_prepare)
    cache = library.open(FMNIST)
    gpu._held.pop(id(cache), None)
    held = in_threads(lambda _: gpu.held_on(cache, "cpu", keep=True), list(range(4 * THREADS)))
    assert all(source is held[0] for source in held)  # one prepared copy, not one per thread
    assert list(gpu._held[id(cache)][1]) == ["cpu"]
    np.testing.assert_array_equal(np.asarray(held[0][0:len(cache)]), np.asarray(cache[0:len(cache)]))
