"""The app's handlers without a browser: synthetic editor values through to results, files and states."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from app_server import shared_caches

import vfs
from app import compare, drawing, editor, exports, handlers
from app.library import CacheLibrary
from app.state import SearchOptions, SharedState, decode_state, encode_state
from vfs.retrieval.window import search

FMNIST, FMNIST3, PHOTOS = "fmnist-blocks5", "fmnist-blocks3", "photos-blocks5"


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> CacheLibrary:
    library = CacheLibrary(shared_caches(tmp_path_factory), hub=False)
    keys = {entry.key for entry in library.refresh()}
    assert {FMNIST, FMNIST3, PHOTOS} <= keys
    return library


def stroke_value(image: np.ndarray, box: tuple[int, int, int, int], *, layers: int = 1) -> dict:
    """An editor value with `box` (top, left, bottom, right) painted in the first layer."""
    height, width = image.shape[:2]
    background = np.dstack([image, np.full((height, width), 255, np.uint8)])  # (H, W, 4)
    painted = np.zeros((height, width, 4), np.uint8)  # (H, W, 4)
    top, left, bottom, right = box
    painted[top:bottom, left:right] = (255, 120, 0, 255)
    extra = [np.zeros_like(painted) for _ in range(layers - 1)]
    return {"background": background, "layers": [painted, *extra], "composite": background}


def dataset_value(library, key, index, box):
    cache = library.open(key)
    image = handlers.display_image(library, key, index)
    picked = handlers.Picked(cache_key=key, index=index, image_id=cache.ids[index])
    return stroke_value(image, box), picked


# ---- editor values


def test_mask_is_the_or_of_layer_alphas():
    image = np.zeros((20, 30, 3), np.uint8)
    value = stroke_value(image, (2, 3, 6, 9), layers=2)
    value["layers"][1][10:12, 20:25, 3] = 7  # a faint stroke in the second layer still counts
    mask = editor.editor_mask(value)
    expected = np.zeros((20, 30), bool)
    expected[2:6, 3:9] = True
    expected[10:12, 20:25] = True
    assert mask.shape == (20, 30) and np.array_equal(mask, expected)


@pytest.mark.parametrize("layers", [[], None, [None]])
def test_no_layers_means_empty_mask(layers):
    image = np.full((8, 9, 4), 200, np.uint8)
    mask = editor.editor_mask({"background": image, "layers": layers, "composite": image.copy()})
    assert mask.shape == (8, 9) and not mask.any()


def test_empty_strokes_and_rgb_layers_paint_nothing():
    image = np.full((8, 9, 4), 200, np.uint8)
    rgb_layer = np.full((8, 9, 3), 255, np.uint8)  # no alpha: a stroke cannot be told apart
    value = {"background": image, "layers": [np.zeros((8, 9, 4), np.uint8), rgb_layer], "composite": image}
    assert not editor.editor_mask(value).any()


def test_layer_of_another_size_is_resized_to_the_background():
    background = np.zeros((40, 60, 4), np.uint8)
    layer = np.zeros((20, 30, 4), np.uint8)
    layer[5:10, 0:15, 3] = 255
    mask = editor.editor_mask({"background": background, "layers": [layer], "composite": None})
    assert mask.shape == (40, 60)
    assert mask[10:20, 0:30].all() and mask.sum() == 10 * 30


def test_composite_differences_count_when_there_are_no_layers():
    background = np.zeros((10, 10, 4), np.uint8)
    composite = background.copy()
    composite[1:3, 4:7] = (255, 0, 0, 255)
    mask = editor.editor_mask({"background": background, "layers": [], "composite": composite})
    assert mask.sum() == 6 and mask[1:3, 4:7].all()


def test_no_value_means_no_image_and_no_mask():
    assert editor.editor_mask(None) is None
    assert editor.editor_image(None) is None
    assert editor.editor_image({"background": None, "layers": [], "composite": None}) is None


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1), (5, 7, 3), (5, 7, 4)])
def test_odd_image_shapes_become_rgb(shape):
    pixels = np.full(shape, 100, np.uint8)
    if shape[-1] == 4:
        pixels[..., 3] = 0  # fully transparent -> white
    rgb = editor.to_rgb(pixels)
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8
    assert (rgb == (255 if shape[-1] == 4 else 100)).all()


def test_unreadable_shapes_are_refused_with_a_message():
    with pytest.raises(vfs.DatasetError, match="cannot read an image"):
        editor.to_rgb(np.zeros((4, 4, 2), np.uint8))


def test_large_images_are_downscaled_with_their_mask():
    image = np.zeros((1500, 3000, 3), np.uint8)
    mask = np.zeros((1500, 3000), bool)
    mask[:750, :1500] = True
    small, small_mask, note = editor.fit_image(image, mask)
    assert small.shape == (512, 1024, 3) and small_mask.shape == (512, 1024)
    assert small_mask[:256, :512].all() and small_mask.sum() == 256 * 512
    assert "downscaled" in note


def test_huge_images_are_refused(monkeypatch):
    monkeypatch.setattr(editor, "MAX_PIXELS", 10_000)
    with pytest.raises(vfs.DatasetError, match="the limit is 10,000 pixels"):
        editor.fit_image(np.zeros((200, 100, 3), np.uint8))


# ---- queries


def test_empty_mask_is_a_readable_error(library):
    value, picked = dataset_value(library, FMNIST, 3, (0, 0, 0, 0))
    with pytest.raises(vfs.MaskError, match="mask is empty"):
        handlers.read_query(library, FMNIST, value, picked)


def test_a_mask_outside_the_crop_says_where_to_paint(library):
    image = np.full((300, 400, 3), 128, np.uint8)  # an upload: wider than tall, so the crop cuts every side
    top, left, bottom, right = library.preprocess(library.open(PHOTOS)).crop_box(300, 400)
    assert top >= 8  # the stroke below lies wholly above the crop
    query, _ = handlers.read_query(library, PHOTOS, stroke_value(image, (0, 0, 8, 400)))
    with pytest.raises(vfs.MaskError, match=f"outside the centre crop.*rows {top:.0f}-{bottom:.0f}"):
        handlers.query_weights(library, query)


def test_no_image_and_no_cache_are_readable_errors(library):
    with pytest.raises(vfs.DatasetError, match="no query image"):
        handlers.read_query(library, FMNIST, None)
    with pytest.raises(vfs.CacheError, match="no cache is selected"):
        handlers.read_query(library, "", None)
    with pytest.raises(vfs.CacheError, match="available"):
        handlers.read_query(library, "no-such-cache", None)


def test_dataset_image_keeps_its_index_until_the_image_changes(library):
    value, picked = dataset_value(library, FMNIST, 5, (100, 100, 300, 300))
    query, _ = handlers.read_query(library, FMNIST, value, picked)
    assert query.index == 5 and query.image_id == library.open(FMNIST).ids[5]
    value["background"] = value["background"].copy()
    value["background"][0, 0, 0] ^= 1  # any other image is an upload
    query, _ = handlers.read_query(library, FMNIST, value, picked)
    assert query.index is None


# ---- search


def test_ranking_equals_vfs_search(library):
    value, picked = dataset_value(library, FMNIST, 7, (60, 60, 260, 300))
    query, _ = handlers.read_query(library, FMNIST, value, picked)
    outcome = handlers.run_search(library, query, SearchOptions(k=10, exclude_query=True))
    cache = library.open(FMNIST)
    expected = search(cache[7], outcome.weights, cache, k=10, exclude=[7])
    assert [m.index for m in outcome.matches] == [m.index for m in expected]
    np.testing.assert_allclose([m.score for m in outcome.matches], [m.score for m in expected], atol=1e-5)
    assert [(m.row, m.col, m.height, m.width) for m in outcome.matches] == [
        (m.row, m.col, m.height, m.width) for m in expected
    ]


def test_the_query_finds_itself_first_with_score_one(library):
    value, picked = dataset_value(library, FMNIST, 11, (40, 40, 200, 200))
    query, _ = handlers.read_query(library, FMNIST, value, picked)
    outcome = handlers.run_search(library, query, SearchOptions(k=3, exclude_query=False))
    assert outcome.matches[0].index == 11 and outcome.matches[0].score == pytest.approx(1, abs=1e-3)


def test_unique_labels_keep_each_labels_best(library):
    value, picked = dataset_value(library, FMNIST, 2, (0, 0, 384, 384))
    query, _ = handlers.read_query(library, FMNIST, value, picked)
    outcome = handlers.run_search(library, query, SearchOptions(k=48, exclude_query=True, unique="label"))
    cache = library.open(FMNIST)
    labels = [int(cache.labels[m.index]) for m in outcome.matches]
    assert len(labels) == len(set(labels)) == len(set(cache.labels.tolist()))
    for match, label in zip(outcome.matches, labels):  # naive oracle: the best score of that label
        others = [
            s
            for i, s in zip(outcome.best.indices, outcome.best.scores)
            if cache.labels[i] == label and i != 2
        ]
        assert match.score == pytest.approx(max(others))


def test_only_label_searches_that_label_only(library):
    value, picked = dataset_value(library, FMNIST, 2, (50, 50, 250, 250))
    query, _ = handlers.read_query(library, FMNIST, value, picked)
    cache = library.open(FMNIST)
    outcome = handlers.run_search(
        library, query, SearchOptions(k=48, exclude_query=False, only_label="Trouser")
    )
    wanted = int(np.sum(cache.labels == cache.label_names.index("Trouser")))
    assert len(outcome.matches) == wanted == outcome.best.scores.size
    assert all(handlers.label_name(cache, m.index) == "Trouser" for m in outcome.matches)
    with pytest.raises(vfs.DatasetError, match="no label"):
        handlers.run_search(library, query, SearchOptions(only_label="Trousers"))


def test_domain_option_without_domains_is_refused(library):
    value, picked = dataset_value(library, FMNIST, 2, (50, 50, 250, 250))
    query, _ = handlers.read_query(library, FMNIST, value, picked)
    with pytest.raises(vfs.DatasetError, match="no domains"):
        handlers.run_search(library, query, SearchOptions(unique="domain"))


def test_uploaded_photo_finds_its_dataset_copy(library):
    from skimage import data

    cache = library.open(PHOTOS)
    index = cache.ids.index("coffee")
    image = data.coffee()  # the original the cache was built from, uploaded: extracted again
    value = stroke_value(image, (0, 0, image.shape[0], image.shape[1]))
    query, _ = handlers.read_query(library, PHOTOS, value, None)
    assert query.index is None
    outcome = handlers.run_search(library, query, SearchOptions(k=3))
    assert outcome.features.shape == cache.shape[1:]
    assert outcome.matches[0].index == index and outcome.matches[0].score == pytest.approx(1, abs=2e-3)


def test_results_show_the_window_outlined(library):
    value, picked = dataset_value(library, FMNIST3, 4, (100, 100, 200, 200))
    query, _ = handlers.read_query(library, FMNIST3, value, picked)
    outcome = handlers.run_search(library, query, SearchOptions(k=5))
    items = handlers.result_items(library, outcome)
    cache = library.open(FMNIST3)
    preprocess = library.preprocess(cache)
    for rank, ((image, caption), match) in enumerate(zip(items, outcome.matches), start=1):
        assert caption == f"{rank} · {match.score:.3f} · {handlers.label_name(cache, match.index)}"
        top, left, _, right = vfs.window_to_box(
            match.row,
            match.col,
            match.height,
            match.width,
            cache.shape[2:],
            (image.height, image.width),
            preprocess=preprocess,
        )
        pixels = np.asarray(image)
        assert tuple(pixels[int(top) + 1, int((left + right) / 2)]) == drawing.WINDOW


def test_score_plot_has_one_box_per_label(library):
    value, picked = dataset_value(library, FMNIST, 9, (100, 100, 300, 300))
    query, _ = handlers.read_query(library, FMNIST, value, picked)
    outcome = handlers.run_search(library, query, SearchOptions(k=4))
    spec = handlers.score_plot(library, outcome)
    boxes = spec["datasets"]["boxes"]
    cache = library.open(FMNIST)
    assert sum(box["n"] for box in boxes) == cache.shape[0]
    assert {box["label"] for box in boxes} == {handlers.label_name(cache, i) for i in range(cache.shape[0])}
    for box in boxes:
        assert box["low"] <= box["q1"] <= box["median"] <= box["q3"] <= box["high"]
    assert len(spec["datasets"]["marks"]) == 4
    json.dumps(spec)


def test_grid_preview_and_dataset_pages(library):
    value, _ = dataset_value(library, FMNIST, 0, (0, 0, 100, 100))
    preview = handlers.grid_preview(library, FMNIST, value)
    assert preview.size == (384, 384)
    items, pages = handlers.dataset_page(library, FMNIST, 99, per_page=20)
    assert pages == 3 and len(items) == 8 and items[0][1] == "#40"


# ---- files and states


def test_exports_round_trip(library, tmp_path):
    value, picked = dataset_value(library, FMNIST, 1, (80, 80, 240, 240))
    query, _ = handlers.read_query(library, FMNIST, value, picked)
    outcome = handlers.run_search(library, query, SearchOptions(k=6))
    json_path, csv_path = exports.export_results(library, outcome, folder=tmp_path)
    document = json.loads(json_path.read_text())
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["index"] for r in document["results"]] == [m.index for m in outcome.matches]
    assert [int(r["index"]) for r in rows] == [m.index for m in outcome.matches]
    np.testing.assert_allclose(
        [float(r["score"]) for r in rows], [m.score for m in outcome.matches], atol=1e-6
    )
    assert document["cache"]["model"] == "efficientnet_lite0"


def test_state_string_round_trip():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 51)) > 0.7
    state = SharedState(
        cache_key="a/b",
        revision=None,
        index=3,
        image_id="x",
        image_size=(37, 51),
        mask=mask,
        options=SearchOptions(k=7, exclude_query=False, unique="label", only_label="Bag"),
    )
    back = decode_state(encode_state(state))
    assert np.array_equal(back.mask, mask)
    assert (back.cache_key, back.index, back.image_id, back.options) == ("a/b", 3, "x", state.options)


@pytest.mark.parametrize("text", ["", "not a state", "eJwrSS0u0S0pSk0FABcaA+I"])
def test_damaged_state_strings_are_readable_errors(text):
    with pytest.raises(vfs.DatasetError):
        decode_state(text)


def test_shared_state_reproduces_the_search(library):
    value, picked = dataset_value(library, FMNIST, 13, (30, 120, 200, 330))
    query, _ = handlers.read_query(library, FMNIST, value, picked)
    options = SearchOptions(k=5, unique="label")
    outcome = handlers.run_search(library, query, options)
    text = exports.share_string(library, outcome)
    state, loaded_value, loaded_pick = exports.load_state(library, text)
    again, _ = handlers.read_query(library, state.cache_key, loaded_value, loaded_pick)
    assert again.index == 13 and np.array_equal(again.mask, query.mask)
    repeat = handlers.run_search(library, again, state.options)
    assert repeat.matches == outcome.matches


def test_compare_counts_shared_results(library):
    value, picked = dataset_value(library, FMNIST, 6, (60, 60, 300, 300))
    same, _ = compare.compare(library, FMNIST, FMNIST, value, picked, SearchOptions(k=5))
    assert same.shared == [m.index for m in same.left.matches] and len(same.shared) == 5
    layers, _ = compare.compare(library, FMNIST, FMNIST3, value, picked, SearchOptions(k=5))
    right = {m.index for m in layers.right.matches}
    assert layers.shared == [m.index for m in layers.left.matches if m.index in right]
    left_items, right_items = layers.items(library)
    for items in (left_items, right_items):
        assert sum(caption.startswith("★ ") for _, caption in items) == len(layers.shared)
    with pytest.raises(vfs.CacheMismatchError, match="different datasets"):
        compare.compare(library, FMNIST, PHOTOS, value, picked, SearchOptions(k=5))


def test_default_build_reports_progress_and_lists_its_caches(tmp_path, monkeypatch):
    from app.library import DefaultBuild
    from vfs.cache import defaults as default_cache

    tiny = default_cache.DefaultCache("fashion-mnist:test[:12]", "blocks.4", 64, 64)
    monkeypatch.setattr(default_cache, "DEFAULTS", {"fashion-mnist": tiny})  # the real build, a smaller set
    messages = []
    build = DefaultBuild(tmp_path)
    build.report = lambda *args: (messages.append(args), DefaultBuild.report(build, *args))
    assert CacheLibrary(tmp_path, hub=False).refresh() == []
    build.start()
    assert build.wait(timeout=300) and build.error is None
    assert build.message == "default caches ready"
    assert any(m[1].startswith("fashion-mnist: ") for m in messages)
    fractions = [args[0] for args in messages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) > 1
    entries = CacheLibrary(tmp_path, hub=False).refresh()
    assert [entry.path for entry in entries] == [build.paths["fashion-mnist"]]
    assert "12 images" in entries[0].title


def test_hub_catalog_caches_are_listed_and_fail_readably_offline(tmp_path, monkeypatch):
    entry = {"name": "fmnist-lite0-b4", "repo_id": "vfs-test/fmnist", "revision": "a" * 40,
             "model": "efficientnet_lite0", "layer": "blocks.4", "dataset": "fashion-mnist:test", "n": 10000,
             "grid": [7, 7], "channels": 112, "dtype": "float16", "size_bytes": 120 << 20}
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"caches": [entry]}))
    monkeypatch.setenv("HUB_CACHES_CATALOG", str(catalog))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    library = CacheLibrary(tmp_path / "local", hub=True)
    [listed] = library.refresh()
    assert listed.key == "hub:fmnist-lite0-b4" and listed.revision == "a" * 40
    assert "Hub: efficientnet_lite0 · blocks.4 · fashion-mnist:test — 10000 images, grid 7x7" in listed.title
    with pytest.raises(vfs.VFSError, match="offline|OFFLINE"):
        library.open(listed.key)


def test_originals_are_shown_when_the_dataset_is_here_else_thumbnails(library, tmp_path, lite0):
    cache = library.open(PHOTOS)
    index = cache.ids.index("astronaut")
    original = library.picture(PHOTOS, index)
    assert (original.height, original.width) == tuple(cache.image_sizes[index]) == (512, 512)
    from vfs.datasets import ArrayDataset

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (200, 150, 3), dtype=np.uint8) for _ in range(3)]
    vfs.build_cache(lite0, "blocks.5", ArrayDataset(images, name="in-memory-only"), tmp_path / "mem",
                    input_size=64, progress=False)
    elsewhere = CacheLibrary(tmp_path, hub=False)
    [entry] = elsewhere.refresh()
    picture = elsewhere.picture(entry.key, 1)  # the dataset cannot be reopened: the stored thumbnail
    assert np.array_equal(np.asarray(picture), np.asarray(elsewhere.open(entry.key).thumbnail(1)))
    assert max(picture.size) == elsewhere.open(entry.key).meta.thumbnail
