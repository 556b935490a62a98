"""The centre crop shown on the editor: outside it dimmed, and the dimming never reaches the search.

Oracles: the veiled pixels are the original's times `drawing.DIM` outside `Preprocess.crop_box` and
the original inside; a search of the veiled editor value equals the search of the original value
(same query pixels, same matches); a dataset image stays recognised as itself when veiled.
"""

from __future__ import annotations

import numpy as np
import pytest
from app_server import shared_caches
from PIL import Image
from skimage import data

from app import drawing, editor, handlers, veil
from app.library import CacheLibrary
from app.search_actions import SearchActions
from app.state import SearchOptions
from vfs.models.preprocess import Preprocess

PHOTOS = "photos-blocks5"


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> CacheLibrary:
    library = CacheLibrary(shared_caches(tmp_path_factory), hub=False)
    library.refresh()
    return library


def painted(value: dict, box: tuple[int, int, int, int]) -> dict:
    """`value` with `box` (top, left, bottom, right) painted in one layer, as the browser sends it."""
    background = value["background"]
    layer = np.zeros((*background.shape[:2], 4), np.uint8)  # (H, W, 4)
    top, left, bottom, right = box
    layer[top:bottom, left:right] = (255, 120, 0, 255)
    return {"background": background, "layers": [layer], "composite": background}


def test_the_editor_shows_the_outside_of_the_crop_dimmed(library):
    photo = np.asarray(drawing.upscale(Image.fromarray(data.coffee()), side=512))  # (341, 512, 3)
    shown, *_ = SearchActions(library)._put(PHOTOS, editor.editor_value(photo), None, "Example photo")
    veiled = shown["background"]
    top, left, bottom, right = veil.crop_cuts(photo.shape, library.preprocess(library.open(PHOTOS)))
    assert 0 < top < bottom < photo.shape[0] and top < left < right < photo.shape[1]  # the sides are cut most
    inside = np.zeros(photo.shape[:2], bool)  # (H, W)
    inside[top:bottom, left:right] = True
    assert np.array_equal(veiled[inside], photo[inside])
    dimmed = np.round(photo[~inside].astype(np.float32) * drawing.DIM).astype(np.uint8)
    assert np.array_equal(veiled[~inside], dimmed) and not np.array_equal(dimmed, photo[~inside])


def test_a_veiled_query_searches_exactly_as_the_original(library):
    photo = data.chelsea()  # (300, 451, 3)
    original = painted(editor.editor_value(photo), (60, 150, 200, 300))
    veiled = painted(veil.veil_value(editor.editor_value(photo), library.preprocess(library.open(PHOTOS))),
                     (60, 150, 200, 300))
    assert not np.array_equal(veiled["background"], photo)
    options = SearchOptions(k=5)
    outcomes = []
    for value in (original, veiled):
        query, _ = handlers.read_query(library, PHOTOS, value)
        assert np.array_equal(query.image, photo)  # the dimming is undone before features are read
        outcomes.append(handlers.run_search(library, query, options))
    assert [(m.index, m.score, m.row, m.col) for m in outcomes[0].matches] == [
        (m.index, m.score, m.row, m.col) for m in outcomes[1].matches]


def test_a_veiled_dataset_image_is_still_that_image(library):
    cache = library.open(PHOTOS)
    index = cache.ids.index("astronaut")
    actions = SearchActions(library)
    shown, _, picked, *_ = actions.put_image(PHOTOS, index)
    assert not np.array_equal(shown["background"], handlers.display_image(library, PHOTOS, index))  # veiled
    query, _ = handlers.read_query(library, PHOTOS, painted(shown, (100, 100, 250, 250)), picked)
    assert query.index == index  # recognised: its cached features are used, not re-extracted


def test_another_crop_veils_the_original_again_keeping_the_painting():
    photo = np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    half = ((0.5,) * 3, (0.5,) * 3)
    wide, narrow = Preprocess(120, 120, *half), Preprocess(160, 100, *half)
    first = veil.veil_value(editor.editor_value(photo), wide)
    value = painted(first, (30, 80, 70, 120))
    again = veil.veil_value(value, narrow)
    assert np.array_equal(again["background"], veil.veil(photo, narrow))  # not a veil over a veil
    assert np.array_equal(editor.editor_mask(again), editor.editor_mask(value))
    assert np.array_equal(veil.unveil(again["background"]), photo)


def test_an_earlier_put_reported_late_by_the_editor_is_not_an_upload(library):
    """The editor reports each image the server puts in it as an upload, sometimes after the next put
    (explore, then at once go back): `shown` then names the newer image, but the older is no upload."""
    actions = SearchActions(library)
    cache = library.open(PHOTOS)
    first = actions.put_image(PHOTOS, cache.ids.index("astronaut"))
    second = actions.put_image(PHOTOS, cache.ids.index("coffee"))
    late = actions.put_upload(PHOTOS, first[0], second[5])  # the first put, reported after the second
    assert all(update == {"__type__": "update"} for update in late)
    photo = np.full((64, 96, 3), 200, np.uint8)  # a real upload is still taken in, re-sized
    taken = actions.put_upload(PHOTOS, editor.editor_value(photo), second[5])
    assert taken[4].startswith("Uploaded image") and taken[0]["background"].shape[1] == 512
