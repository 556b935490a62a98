"""The running app through `gradio_client`: the search endpoint with an image and a painted layer."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from app_server import check_captions, oracle_captions
from PIL import Image

from app import editor, handlers
from app.library import CacheLibrary

gradio_client = pytest.importorskip("gradio_client", reason="gradio_client is in requirements-dev.txt")
pytestmark = pytest.mark.slow  # starts a server (10-25 s here)

FMNIST = "fmnist-blocks5"
CAPTION = re.compile(r"^(?P<rank>\d+) · (?P<score>-?\d\.\d{3}) · (?P<label>.+)$")


@pytest.fixture(scope="module")
def client(app_url):
    return gradio_client.Client(app_url, verbose=False)


def editor_argument(image: np.ndarray, mask: np.ndarray, folder) -> dict:
    """The ImageEditor argument: background PNG and one RGBA layer holding the stroke."""
    background, layer = folder / "background.png", folder / "layer.png"
    Image.fromarray(image).save(background)
    rgba = np.zeros((*mask.shape, 4), np.uint8)  # (H, W, 4)
    rgba[mask] = (255, 120, 0, 255)
    Image.fromarray(rgba).save(layer)
    handle = gradio_client.handle_file
    return {
        "background": handle(str(background)),
        "layers": [handle(str(layer))],
        "composite": None,
        "id": None,
    }


def test_the_painted_editor_is_never_an_input_or_progress_target_of_a_server_event(client):
    """Gradio's page re-reads (re-exports and re-uploads) every component that was ever an input or a
    progress target of a server event, on every status message of any event: for the painted editor
    that cost ~1 s per search. Only a hidden copy, made in the page at each click, reaches the server."""
    editor_id = next(c["id"] for c in client.config["components"] if c["props"].get("elem_id") == "vfs-editor")
    server_events = [dep for dep in client.config["dependencies"] if dep["backend_fn"]]
    assert any(editor_id in dep["outputs"] for dep in server_events)  # picking an image does fill it
    for dep in server_events:
        assert editor_id not in dep["inputs"], dep
        assert editor_id not in (dep["show_progress_on"] or dep["outputs"]), dep


def test_search_endpoint_matches_the_handlers(client, app_caches, tmp_path):
    library = CacheLibrary(app_caches, hub=False)
    library.refresh()
    cache = library.open(FMNIST)
    image = handlers.display_image(library, FMNIST, 7)
    mask = np.zeros(image.shape[:2], bool)
    mask[60:260, 80:300] = True
    gallery, summary, *_ = client.predict(
        FMNIST, editor_argument(image, mask, tmp_path), 6, True, "no limit", "all labels", api_name="/search"
    )
    # oracle: the library alone on the same pixels (an API call has no pick: an upload, nothing excluded)
    captions = [item["caption"] for item in gallery]
    check_captions(captions, oracle_captions(app_caches / FMNIST, image, mask, k=6))
    assert all(CAPTION.match(caption)["label"] in cache.label_names for caption in captions)
    assert summary.startswith("6 results in efficientnet_lite0 `blocks.5`") and "for the uploaded image" in summary


def test_empty_mask_is_a_message_not_a_trace(client, app_caches, tmp_path):
    cache = CacheLibrary(app_caches, hub=False)
    cache.refresh()
    image = handlers.display_image(cache, FMNIST, 0)
    with pytest.raises(gradio_client.exceptions.AppError, match="mask is empty"):
        client.predict(
            FMNIST,
            editor_argument(image, np.zeros(image.shape[:2], bool), tmp_path),
            6,
            True,
            "no limit",
            "all labels",
            api_name="/search",
        )


def test_picked_query_is_shared_and_loads_back(client, app_caches, tmp_path):
    library = CacheLibrary(app_caches, hub=False)
    library.refresh()
    image = handlers.display_image(library, FMNIST, 12)
    client.predict(FMNIST, 12, api_name="/open_image")  # the session now holds the pick
    mask = np.zeros(image.shape[:2], bool)
    mask[100:300, 50:200] = True
    outputs = client.predict(
        FMNIST,
        editor_argument(image, mask, tmp_path),
        4,
        True,
        "one per label",
        "all labels",
        api_name="/search",
    )
    summary, share = outputs[1], outputs[4]
    assert "dataset image #12" in summary
    # oracle: the cached row 12, excluded from its own results, the best image of each label
    check_captions([item["caption"] for item in outputs[0]],
                   oracle_captions(app_caches / FMNIST, image, mask, k=4, index=12, one_per_label=True))
    key, value, _, _, picked, k, exclude, unique, only_label, candidates = client.predict(share, api_name="/load_state")
    assert (key, k, exclude, unique, only_label, candidates) == (FMNIST, 4, True, "one per label", "all labels", 0)
    assert "#12" in picked
    layer = np.asarray(Image.open(value["layers"][0]))  # the client hands back downloaded file paths
    assert np.array_equal(layer[..., 3] > 0, mask)


def test_compare_and_export_endpoints(client, app_caches, tmp_path):
    library = CacheLibrary(app_caches, hub=False)
    library.refresh()
    image = editor.to_rgb(np.asarray(Image.open(handlers_photo(tmp_path))))
    mask = np.zeros(image.shape[:2], bool)
    mask[40:200, 60:260] = True
    argument = editor_argument(image, mask, tmp_path)
    summary, _, _, left, right = client.predict(
        "fmnist-blocks5", "fmnist-blocks3", argument, 5, True, "no limit", "all labels", api_name="/compare"
    )
    left_ranks = [CAPTION.match(item["caption"].removeprefix("★ ")) for item in left]
    assert len(left) == len(right) == 5 and all(left_ranks)
    shared = sum(item["caption"].startswith("★ ") for item in left)
    assert shared == sum(item["caption"].startswith("★ ") for item in right)
    assert f"**{shared} of the top 5 are shared**" in summary
    with pytest.raises(gradio_client.exceptions.AppError, match="different datasets"):
        client.predict(
            "fmnist-blocks5",
            "photos-blocks5",
            argument,
            5,
            True,
            "no limit",
            "all labels",
            api_name="/compare",
        )
    client.predict(FMNIST, argument, 5, True, "no limit", "all labels", api_name="/search")
    files = client.predict(api_name="/export")
    rows = Path(next(f for f in files if f.endswith(".csv"))).read_text().splitlines()
    assert rows[0].startswith("rank,index,id,label,score") and len(rows) == 6


def handlers_photo(folder) -> Path:
    """An upload that is in no cache: a grey gradient with a bright square."""
    pixels = np.tile(np.linspace(0, 255, 300, dtype=np.uint8), (240, 1))  # (240, 300)
    pixels[60:160, 100:200] = 255
    path = folder / "upload.png"
    Image.fromarray(pixels).save(path)
    return path
