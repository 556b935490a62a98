"""The "Why similar" tab's handlers on a tiny real cache and a real search (no gradio)."""

from __future__ import annotations

import base64
import html
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from app import analysis_handlers as analysis
from app.state import Outcome, Query, SearchOptions
from vfs.analysis.overlays import all_similarity_grids, map_cell
from vfs.errors import SearchError


class TinyLibrary:
    """The five things the handlers ask of a `CacheLibrary`."""

    def __init__(self, cache, model, images):
        self.cache, self.model_, self.images = cache, model, images

    def open(self, key):
        return self.cache

    def model(self, name):
        return self.model_

    def picture(self, key, index):
        from PIL import Image

        return Image.fromarray(self.images[index])

    def preprocess(self, cache):
        return cache.meta.make_preprocess()

    def extractor(self, model, layer, *, preprocess=None):
        from vfs.models.features import FeatureExtractor

        return FeatureExtractor(self.model_.module, layer, preprocess=preprocess)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from vfs.cache.build import build_cache
    from vfs.cache.reader import open_cache
    from vfs.datasets import ArrayDataset
    from vfs.models.loading import load_model
    from vfs.models.preprocess import Preprocess
    from vfs.retrieval.window import best_windows, search

    rng = np.random.default_rng(0)
    images = [(rng.random((16, 16, 3)) * 255).astype(np.uint8) for _ in range(10)]
    torch.manual_seed(0)
    # layer "0" (the cache's) has a 4x4 grid, layer "2" a 2x2 one: the second layer of the overlays
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 4, stride=4), torch.nn.ReLU(), torch.nn.Conv2d(6, 5, 2, stride=2))
    model = load_model("tiny", module=net, weights="random",
                       preprocess=Preprocess(size=16, crop=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    data = ArrayDataset(images, name="noise", labels=[i % 2 for i in range(10)], label_names=["a", "b"])
    path = build_cache(model, "0", data, tmp_path_factory.mktemp("c") / "tiny", progress=False, dtype="float32")
    cache = open_cache(path)
    features = np.asarray(cache[0:1], dtype=np.float32)[0]  # (6, 4, 4)
    weights = np.ones((4, 4), np.float32)
    query = Query(cache_key="tiny", image=images[0], mask=np.ones((16, 16), bool), index=0, image_id="00000")
    outcome = Outcome(query=query, options=SearchOptions(k=5), matches=search(features, weights, cache, k=5, exclude=[0]),
                      best=best_windows(features, weights, cache), weights=weights, features=features)
    return TinyLibrary(cache, model, images), outcome


def test_shown_images_are_the_query_then_its_results(setup):
    library, outcome = setup
    shown = analysis.shown_images(library, outcome, count=3)
    assert len(shown.images) == 4 and shown.features.shape == (4, 6, 4, 4)
    assert shown.indices == [0] + [m.index for m in outcome.matches[:3]]
    np.testing.assert_array_equal(shown.features[2], library.cache[outcome.matches[1].index])
    assert all(image.size == (analysis.SIDE, analysis.SIDE) for image in shown.images)
    with pytest.raises(SearchError, match="press Search"):
        analysis.shown_images(library, None)


def test_shown_for_answers_for_the_last_search_even_before_the_tab_refreshed(setup):
    """An action right after a search (the tab's `shown` still None, or still the previous search's)
    works on that search; a `shown` made for it is reused."""
    from dataclasses import replace

    library, outcome = setup
    made = analysis.shown_for(library, outcome, None)  # the refresh has not finished: made now
    assert made.indices == analysis.shown_images(library, outcome).indices
    assert analysis.shown_for(library, outcome, made) is made
    other = replace(outcome, matches=outcome.matches[::-1])  # another search: the old `shown` is not reused
    again = analysis.shown_for(library, other, made)
    assert again is not made and again.indices == [0] + [m.index for m in other.matches[:5]]
    query = np.asarray(outcome.features) + 1  # the same images, another query's features
    assert analysis.shown_for(library, replace(outcome, features=query), made) is not made
    with pytest.raises(SearchError, match="press Search"):
        analysis.shown_for(library, None, made)


def decode(page: str) -> dict:
    return json.loads(html.unescape(re.search(r'data-payload="([^"]*)"', page).group(1)))


def test_overlay_payload_round_trips_every_grid(setup):
    library, outcome = setup
    shown = analysis.shown_images(library, outcome, count=2)
    page = analysis.overlay_html(shown)
    assert page.count('class="vfs-ov-fig"') == 3
    payload = decode(page)
    (layer,) = payload["layers"]
    n, h, w = payload["n"], layer["h"], layer["w"]
    assert layer["name"] == "0" and layer["to"] == [list(range(h * w))]
    decoded = np.frombuffer(base64.b64decode(layer["grids"]), np.uint8).reshape(n, h * w, n, h, w)
    for image in range(n):
        expected = all_similarity_grids(shown.features, image)  # (h*w, N, h, w)
        np.testing.assert_allclose(decoded[image] / 127.5 - 1.0, expected, atol=0.5 / 127.5 + 1e-6)
        # the pointed cell decodes to (nearly) 1 in its own image
        assert decoded[image, 5, image, 1, 1] == 255


def test_second_layer_is_the_extractor_s_features_cached(setup):
    from vfs.models.features import FeatureExtractor

    library, outcome = setup
    assert analysis.second_layer_choices(library, outcome) == (["1", "2"], "1")
    shown = analysis.shown_images(library, outcome, count=3)
    assert analysis.with_second_layer(library, outcome, shown, None).second is None
    both = analysis.with_second_layer(library, outcome, shown, "2")
    assert both.second.layer == "2" and both.second.features.shape == (4, 5, 2, 2)
    extractor = FeatureExtractor(library.model_.module, "2", preprocess=library.preprocess(library.cache))
    for i, index in enumerate(shown.indices):  # one image at a time, from the dataset's pixels
        np.testing.assert_allclose(both.second.features[i], extractor([library.images[index]])[0].numpy(),
                                   rtol=1e-5, atol=1e-5)
    # kept, not extracted again: a planted value in the store comes back
    key = next(key for key in analysis._layer_features if key[1] == "2" and key[3] == ("tiny", shown.indices[1]))
    analysis._layer_features[key] = np.full((5, 2, 2), 7.0, np.float32)
    again = analysis.with_second_layer(library, outcome, shown, "2")
    assert (again.second.features[1] == 7.0).all()
    np.testing.assert_array_equal(again.second.features[2:], both.second.features[2:])
    del analysis._layer_features[key]


def test_two_layer_payload_maps_cells_across_grids(setup):
    library, outcome = setup
    shown = analysis.with_second_layer(library, outcome, analysis.shown_images(library, outcome, count=2), "2")
    page = analysis.overlay_html(shown)
    assert page.count('class="vfs-ov-fig"') == 6 and 'id="vfs-ov-1-2"' in page
    fine, coarse = decode(page)["layers"]
    assert (fine["h"], fine["w"], coarse["h"], coarse["w"]) == (4, 4, 2, 2)
    # planted: 4x4 cell (r, c) lies in 2x2 cell (r // 2, c // 2); 2x2 cell (r, c) centres on 4x4 cell (2r+1, 2c+1)
    assert fine["to"][1] == [(q // 4 // 2) * 2 + (q % 4) // 2 for q in range(16)]
    assert coarse["to"][0] == [(2 * (q // 2) + 1) * 4 + 2 * (q % 2) + 1 for q in range(4)]
    assert coarse["to"][0] == [r * 4 + c for r, c in (map_cell(q // 2, q % 2, (2, 2), (4, 4)) for q in range(4))]
    decoded = np.frombuffer(base64.b64decode(coarse["grids"]), np.uint8).reshape(3, 4, 3, 2, 2)
    np.testing.assert_allclose(decoded[1] / 127.5 - 1.0, all_similarity_grids(shown.second.features, 1),
                               atol=0.5 / 127.5 + 1e-6)


def test_click_overlays_cover_both_layers(setup):
    library, outcome = setup
    shown = analysis.with_second_layer(library, outcome, analysis.shown_images(library, outcome, count=2), "2")
    items = analysis.overlay_images(shown, 0, 3, 1)  # 4x4 cell (3, 1) -> 2x2 cell (1, 0)
    assert len(items) == 6 and items[3][1].startswith("2 · query")
    side = analysis.SIDE
    pointed = np.asarray(items[3][0])[side * 3 // 4, side // 4]  # centre of 2x2 cell (1, 0): cosine 1
    assert pointed.tolist() == np.asarray(shown.images[0])[side * 3 // 4, side // 4].tolist()
    elsewhere = np.asarray(items[3][0])[side // 4, side * 3 // 4].astype(int)  # cell (0, 1): veiled
    original = np.asarray(shown.images[0])[side // 4, side * 3 // 4].astype(int)
    veil = np.array(analysis.VEIL)  # the veil shows on a black background as on a bright one
    assert np.abs(elsewhere - veil).sum() < np.abs(original - veil).sum()  # moved towards the veil


def test_cell_at_and_click_overlays(setup):
    library, outcome = setup
    shown = analysis.shown_images(library, outcome, count=2)
    assert analysis.cell_at(0, 0, (4, 4)) == (0, 0)
    assert analysis.cell_at(analysis.SIDE - 1, 0, (4, 4)) == (0, 3)
    assert analysis.cell_at(100, 150, (4, 4)) == (3, 2)
    items = analysis.overlay_images(shown, 0, 2, 1)
    assert len(items) == 3
    pointed = np.asarray(items[0][0])[2 * 48 + 24, 1 * 48 + 24]  # centre of cell (2, 1): cosine 1, not darkened
    assert pointed.tolist() == np.asarray(shown.images[0])[2 * 48 + 24, 1 * 48 + 24].tolist()


def test_why_factor_rerank_and_sensitivity(setup):
    library, outcome = setup
    shown = analysis.shown_images(library, outcome, count=3)
    query_heat, result_heat, text = analysis.why_images(shown, 1)
    assert query_heat.size == result_heat.size == (analysis.SIDE, analysis.SIDE)
    numbers = [float(v) for v in re.findall(r"-?\d+\.\d{3}", text)]
    assert numbers[0] == pytest.approx(numbers[1], abs=2e-3) == pytest.approx(numbers[2], abs=2e-3)
    with pytest.raises(SearchError, match="pick 1..3"):
        analysis.why_images(shown, 4)
    items, text = analysis.factor_images(shown, k=2)
    assert len(items) == 4 and "2 components" in text
    reranked = analysis.rerank_items(library, outcome, k=4)
    assert len(reranked) == 4 and not any(caption.startswith("image 0 ") for _, caption in reranked)
    spec, text = analysis.sensitivity_spec(library, outcome, 1, 2, kind="rotate")
    values = {row["step"]: row["cosine"] for row in spec["data"]["values"]}
    assert values[0.0] == pytest.approx(1.0, abs=1e-4)


def test_overlays_read_on_a_black_image():
    """A black veil over dissimilar cells was invisible on dark images (Fashion-MNIST's backgrounds)."""
    black = Image.new("RGB", (40, 40))
    grid = np.array([[1.0, 0.2], [0.6, 0.2]])  # (2, 2) cosines; the lowest shown is 0.2
    shaded = np.asarray(analysis._shade(black, grid, None, floor=0.2)).astype(int)  # (40, 40, 3)
    assert shaded[10, 10].sum() == 0  # cosine 1: untouched
    assert shaded[10, 30].sum() > 100 and shaded[30, 10].sum() > 40  # dissimilar cells visibly colored
    assert shaded[10, 30].sum() > shaded[30, 10].sum()  # the less similar, the stronger
