"""The "Why similar" tab's handlers on a tiny real cache and a real search (no gradio)."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from app import analysis_handlers as analysis
from app.state import Outcome, Query, SearchOptions
from vfs.errors import SearchError
from vfs.overlays import all_similarity_grids


class TinyLibrary:
    """The three things the handlers ask of a `CacheLibrary`."""

    def __init__(self, cache, model):
        self.cache, self.model_ = cache, model

    def open(self, key):
        return self.cache

    def preprocess(self, cache):
        return cache.meta.make_preprocess()

    def extractor(self, model, layer, *, preprocess=None):
        from vfs.features import FeatureExtractor

        return FeatureExtractor(self.model_.module, layer, preprocess=preprocess)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from vfs.cache import open_cache
    from vfs.cache_build import build_cache
    from vfs.datasets import ArrayDataset
    from vfs.models import load_model
    from vfs.preprocess import Preprocess
    from vfs.window_search import best_windows, search

    rng = np.random.default_rng(0)
    images = [(rng.random((16, 16, 3)) * 255).astype(np.uint8) for _ in range(10)]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 4, stride=4), torch.nn.ReLU())
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
    return TinyLibrary(cache, model), outcome


def test_handlers_do_not_import_gradio():
    # other tests may load gradio into sys.modules, so read the source instead
    source = Path(analysis.__file__).read_text()
    assert not re.search(r"^\s*(import gradio|from gradio)", source, re.MULTILINE)


def test_shown_images_are_the_query_then_its_results(setup):
    library, outcome = setup
    shown = analysis.shown_images(library, outcome, count=3)
    assert len(shown.images) == 4 and shown.features.shape == (4, 6, 4, 4)
    assert shown.indices == [0] + [m.index for m in outcome.matches[:3]]
    np.testing.assert_array_equal(shown.features[2], library.cache[outcome.matches[1].index])
    assert all(image.size == (analysis.SIDE, analysis.SIDE) for image in shown.images)
    with pytest.raises(SearchError, match="press Search"):
        analysis.shown_images(library, None)


def test_overlay_payload_round_trips_every_grid(setup):
    library, outcome = setup
    shown = analysis.shown_images(library, outcome, count=2)
    page = analysis.overlay_html(shown)
    assert page.count('class="vfs-ov-fig"') == 3
    payload = json.loads(html.unescape(re.search(r'data-payload="([^"]*)"', page).group(1)))
    n, h, w = payload["n"], payload["h"], payload["w"]
    decoded = np.frombuffer(base64.b64decode(payload["grids"]), np.uint8).reshape(n, h * w, n, h, w)
    for image in range(n):
        expected = all_similarity_grids(shown.features, image)  # (h*w, N, h, w)
        np.testing.assert_allclose(decoded[image] / 127.5 - 1.0, expected, atol=0.5 / 127.5 + 1e-6)
        # the pointed cell decodes to (nearly) 1 in its own image
        assert decoded[image, 5, image, 1, 1] == 255


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
