"""The app's second pass (issue 17), at the handler level: an upload searched in caches of several
input sizes, a result walked to as the next query, uploads shared by content, the history, the
Compare default pair, and the start-up tick that must never send a cache list's value back."""

from __future__ import annotations

import numpy as np
import pytest
from app_server import shared_caches

import vfs
from app import compare, explore, exports, handlers, uploads
from app.editor import editor_value
from app.library import CacheLibrary, default_key
from app.state import SearchOptions

FMNIST, FMNIST3, PHOTOS = "fmnist-blocks5", "fmnist-blocks3", "photos-blocks5"


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> CacheLibrary:
    library = CacheLibrary(shared_caches(tmp_path_factory), hub=False)
    library.refresh()
    return library


def photo_query(library, key):
    """An upload (no dataset index): a gradient with a bright square, its square painted."""
    image = np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))  # (240, 320)
    image[60:160, 100:220] = 255
    image = np.repeat(image[..., None], 3, axis=2)  # (240, 320, 3)
    mask = np.zeros(image.shape[:2], bool)
    mask[60:160, 100:220] = True
    query, _ = handlers.read_query(library, key, editor_value(image, mask), None)
    return query


def test_an_upload_is_searched_in_caches_of_one_layer_built_at_two_input_sizes(library, lite0, tmp_path):
    """The features of an upload were kept per (model, layer, pixels): the 112 px cache's 4x4 grid was then
    handed to the 224 px cache ("weights (7, 7) must have the query's grid (4, 4)")."""
    vfs.build_cache(lite0, "blocks.5", "skimage-photos[:4]", tmp_path / "photos-224", input_size=224, progress=False)
    both = CacheLibrary(tmp_path, hub=False)
    both.refresh()
    both._entries[PHOTOS] = library.entry(PHOTOS)  # the 112 px cache of the session, under its own key
    for key, grid in ((PHOTOS, (4, 4)), ("photos-224", (7, 7)), (PHOTOS, (4, 4))):
        query = photo_query(both, key)
        outcome = handlers.run_search(both, query, SearchOptions(k=3))
        assert outcome.features.shape[1:] == grid == outcome.weights.shape
        assert len(outcome.matches) == 3


def test_a_result_becomes_the_next_query_with_exactly_its_window_painted(library):
    image = handlers.display_image(library, FMNIST3, 9)
    mask = np.zeros(image.shape[:2], bool)
    mask[120:260, 100:300] = True
    picked = handlers.Picked(cache_key=FMNIST3, index=9, image_id=library.open(FMNIST3).ids[9])
    query, _ = handlers.read_query(library, FMNIST3, editor_value(image, mask), picked)
    outcome = handlers.run_search(library, query, SearchOptions(k=6))
    for position, match in enumerate(outcome.matches):
        value, next_pick, caption = explore.next_query(library, outcome, position)
        following, _ = handlers.read_query(library, FMNIST3, value, next_pick)
        assert following.index == match.index and f"#{match.index}" in caption
        cells = np.zeros(library.open(FMNIST3).shape[2:], bool)  # the planted answer: the window's cells
        cells[match.row : match.row + match.height, match.col : match.col + match.width] = True
        assert np.array_equal(handlers.query_weights(library, following) > 0, cells)
        again = handlers.run_search(library, following, SearchOptions(k=1, exclude_query=False))
        best = again.matches[0]  # the image finds itself, at the same window, with cosine 1
        assert (best.index, best.row, best.col) == (match.index, match.row, match.col)
        assert best.score == pytest.approx(1, abs=2e-3)
    image, text = explore.result_detail(library, outcome, 0)
    first = outcome.matches[0]
    assert max(image.size) == explore.DETAIL_SIDE
    assert f"{first.score:.3f}" in text and f"#{first.index}" in text
    assert handlers.label_name(library.open(FMNIST3), first.index) in text
    with pytest.raises(vfs.DatasetError, match="no result #7"):
        explore.next_query(library, outcome, 6)


def test_an_upload_is_shared_by_content_while_the_server_keeps_it(library, monkeypatch):
    query = photo_query(library, PHOTOS)
    outcome = handlers.run_search(library, query, SearchOptions(k=4, unique="label"))
    text = exports.share_string(library, outcome)
    state, value, picked = exports.load_state(library, text)
    assert picked is None and state.index is None and state.upload == uploads.digest(query.image)
    again, _ = handlers.read_query(library, state.cache_key, value, picked)
    assert np.array_equal(again.image, query.image) and np.array_equal(again.mask, query.mask)
    assert handlers.run_search(library, again, state.options).matches == outcome.matches
    monkeypatch.setattr(uploads, "_images", uploads.KeptImages(uploads.KEPT))  # a restarted server
    with pytest.raises(vfs.DatasetError, match="not on this server"):
        exports.load_state(library, text)


def test_the_history_keeps_each_query_once_newest_first_and_restores_it(library, monkeypatch):
    monkeypatch.setattr(explore, "HISTORY_KEPT", 3)
    history = []
    for index in (1, 2, 1, 3, 4):
        image = handlers.display_image(library, FMNIST, index)
        mask = np.zeros(image.shape[:2], bool)
        mask[50:150, 60:200] = True
        picked = handlers.Picked(cache_key=FMNIST, index=index, image_id=library.open(FMNIST).ids[index])
        query, _ = handlers.read_query(library, FMNIST, editor_value(image, mask), picked)
        history = explore.remember(history, library, query)
    assert [step.index for step in history] == [1, 3, 4]  # 2 fell off; 1 moved to the end, then 3 and 4
    titles = explore.titles(history)
    assert titles[0].startswith("#4 ") and len(set(titles)) == 3
    key, value, picked, _ = explore.restore(library, history, titles[-1])
    query, _ = handlers.read_query(library, key, value, picked)
    assert (key, query.index) == (FMNIST, 1) and np.array_equal(query.mask, history[0].mask)


def test_compare_preselects_two_caches_of_one_dataset(library, tmp_path):
    assert compare.default_pair(library) == (FMNIST3, FMNIST)  # listed in folder order
    alone = CacheLibrary(tmp_path, hub=False)
    alone.refresh()
    assert compare.default_pair(alone) == (None, None)


def test_the_start_up_tick_never_sends_a_cache_lists_value_back(library, monkeypatch):
    """A tick answered after the user picked a cache used to send the old pick back with the list."""
    from app.library import DefaultBuild
    from app.ui import build

    default_build = DefaultBuild(library.root)
    default_build.paths = {"fashion-mnist": library.root / FMNIST}
    demo = build(library, default_build=default_build)
    [tick] = [block.fn for block in demo.fns.values() if block.name == "tick"]
    status, cache_list, left, right, seen, _timer = tick(0, FMNIST, FMNIST3, FMNIST3)
    assert "Building the default caches" in status and seen == 1
    assert "value" not in cache_list and "choices" in cache_list
    assert tick(0, FMNIST, FMNIST3, None)[1]["value"] == default_key(library)  # an empty list is filled
    assert "value" not in left and "value" not in right  # both Compare sides were picked: left alone
    _, _, left, right, _, _ = tick(0, None, None)  # empty sides are filled with the default pair
    assert (left["value"], right["value"]) == (FMNIST3, FMNIST)
    assert all(update == {"__type__": "update"} for update in tick(1, FMNIST, FMNIST3, FMNIST3)[1:4])


def test_the_page_opens_on_the_default_search_cache_not_the_first_in_folder_order(library, tmp_path):
    """Folder order lists Fashion-MNIST at blocks.3 (Compare's second cache) before blocks.4 (the
    Search tab's default): the page must open on blocks.4."""
    import shutil

    from vfs.cache.defaults import DEFAULTS, folder_name

    root = tmp_path / "defaults"
    for name in ("fashion-mnist-blocks3", "fashion-mnist"):  # the small caches under the default folder names
        shutil.copytree(library.entry(FMNIST3 if name.endswith("3") else FMNIST).path, root / folder_name(DEFAULTS[name]))
    defaults = CacheLibrary(root, hub=False)
    first, second = [entry.key for entry in defaults.refresh()]
    assert first.endswith("blocks.3-112") and default_key(defaults) == second == folder_name(DEFAULTS["fashion-mnist"])
    assert default_key(library) == library.entries[0].key  # no default cache listed: the first one
