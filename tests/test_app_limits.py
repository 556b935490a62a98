"""The app's fault suite for bounded input: share strings, search options and uploads.

A hostile string or file of a few hundred bytes must cost at most a few MB (measured here with
tracemalloc, which sees numpy's and zlib's buffers) and end in a project error whose message says
what was wrong and what to do. Without the bounds, the first two cases below allocate ~860 MB.
"""

from __future__ import annotations

import base64
import json
import tracemalloc
import zlib
from contextlib import contextmanager

import numpy as np
import pytest
from app_server import shared_caches

import vfs
from app import editor, exports, handlers
from app.library import CacheLibrary
from app.state import MAX_K, MAX_MASK_SIDE, SearchOptions, SharedState, decode_state, encode_state
from app.wiring import options_from

FMNIST, PHOTOS = "fmnist-blocks5", "photos-blocks5"
FEW_MB = 4 * 2**20  # what refusing one hostile input may cost at most


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> CacheLibrary:
    library = CacheLibrary(shared_caches(tmp_path_factory), hub=False)
    library.refresh()
    return library


@contextmanager
def costs_at_most(limit: int):
    """Fail when the block's peak of new allocations (numpy, zlib, Python objects) passes `limit` bytes."""
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= limit, f"refusing it allocated {peak / 2**20:.1f} MB"


def forge(**changes) -> str:
    """A share string written by hand: a valid 384x384 one with `changes` applied to its JSON."""
    mask = np.zeros((384, 384), bool)
    mask[100:200, 50:300] = True
    payload = {
        "v": 1, "cache": FMNIST, "rev": None, "index": 3, "id": None, "size": [384, 384],
        "mask_shape": [384, 384],
        "mask": base64.urlsafe_b64encode(zlib.compress(np.packbits(mask).tobytes(), 9)).decode(),
        "options": {"k": 12, "exclude_query": True, "unique": "none", "only_label": None},
    }
    payload.update(changes)
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode().rstrip("=")


def squeezed(data: bytes) -> str:
    return base64.urlsafe_b64encode(zlib.compress(data, 9)).decode()


# ---- share strings


def test_the_forged_baseline_is_a_valid_state():
    state = decode_state(forge())
    assert state.mask.shape == (384, 384) and state.mask.sum() == 100 * 250


def test_a_200_character_string_declaring_a_30000_square_mask_is_refused_cheaply():
    text = forge(mask_shape=[30000, 30000], mask=squeezed(b""), size=[30000, 30000])
    assert len(text) < 300
    with costs_at_most(FEW_MB), pytest.raises(vfs.DatasetError, match="30000x30000 image; a query is at most"):
        decode_state(text)


def test_a_zlib_bomb_in_the_mask_is_refused_cheaply():
    text = forge(mask=squeezed(bytes(200_000_000)))  # 200 MB of zero bits for a 384x384 mask
    assert len(text) < 2000
    with costs_at_most(FEW_MB), pytest.raises(vfs.DatasetError, match="the mask inflates to more than"):
        decode_state(text)


def test_a_zlib_bomb_around_the_whole_string_is_refused_cheaply():
    text = squeezed(b"[" + b" " * 100_000_000 + b"]").rstrip("=")
    with costs_at_most(FEW_MB), pytest.raises(vfs.DatasetError, match="the string inflates to more than"):
        decode_state(text)


def test_an_overlong_string_is_refused_before_decoding():
    text = "A" * 10_000_000
    with costs_at_most(FEW_MB), pytest.raises(vfs.DatasetError, match="10,000,000 characters; one made with"):
        decode_state(text)


def test_a_mask_shorter_than_it_declares_is_refused():
    with pytest.raises(vfs.DatasetError, match="not the 384x384 it declares"):
        decode_state(forge(mask=squeezed(b"\xff" * 10)))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"mask_shape": [0, 384]}, "0x384 image"),
        ({"mask_shape": [MAX_MASK_SIDE + 1, 4]}, f"{MAX_MASK_SIDE + 1}x4 image"),
        ({"mask_shape": [384.5, 384]}, "mask_shape is not a"),
        ({"mask_shape": "384x384"}, "mask_shape is not a"),
        ({"size": [384, True]}, "size is not a"),
        ({"mask": 7}, "field 'mask' is missing or not text"),
        ({"mask": "!!!"}, "the mask (is not|inflates)"),
        ({"cache": ["a"]}, "field 'cache'"),
        ({"index": -1}, "image index -1"),
        ({"index": "3"}, "image index"),
        ({"index": True}, "image index"),
        ({"v": 2}, "version 2 is not supported"),
        ({"options": {"k": 0}}, "k=0 is not a number of results"),
        ({"options": {"k": MAX_K + 1}}, f"from 1 to {MAX_K}"),
        ({"options": {"k": 2.5}}, "k=2.5"),
        ({"options": {"k": True}}, "k=True"),
        ({"options": {"k": "12"}}, "k='12'"),
        ({"options": {"exclude_query": "yes"}}, "exclude_query='yes' must be true or false"),
        ({"options": {"unique": "domains"}}, "unique='domains' is not an option"),
        ({"options": {"only_label": 5}}, "only_label must be a label name"),
        ({"options": {"color": "red"}}, "its options are not"),
        ({"options": []}, "its options are not"),
    ],
)
def test_every_field_is_checked_with_a_readable_message(changes, message):
    with pytest.raises(vfs.DatasetError, match=message):
        decode_state(forge(**changes))


@pytest.mark.parametrize("text", ["W10", squeezed(b"\xff\xfe").rstrip("="), squeezed(b"[" * 100_000).rstrip("=")])
def test_strings_that_are_not_a_json_object_are_refused(text):
    with pytest.raises(vfs.DatasetError, match="could not read this state string"):
        decode_state(text)


def test_options_the_cache_cannot_honour_are_refused_on_load(library):
    with pytest.raises(vfs.DatasetError, match="no label 'Spaceship' in this cache"):
        exports.load_state(library, forge(options={"only_label": "Spaceship"}))
    with pytest.raises(vfs.DatasetError, match="this cache has no domains"):
        exports.load_state(library, forge(options={"unique": "domain"}))


def test_a_valid_string_still_loads(library):
    mask = np.zeros((384, 384), bool)
    mask[10:50, 20:90] = True
    cache = library.open(FMNIST)
    state = SharedState(cache_key=FMNIST, revision=None, index=5, image_id=cache.ids[5], image_size=(384, 384),
                        mask=mask, options=SearchOptions(k=MAX_K, unique="label", only_label="Bag"))
    loaded, value, picked = exports.load_state(library, encode_state(state))
    assert loaded.options == state.options and picked.index == 5
    assert np.array_equal(value["layers"][0][..., 3] > 0, mask)


# ---- search options from the page or the API


@pytest.mark.parametrize("k", [0, -3, MAX_K + 1, 10**9, 2.5, None, "many", True])
def test_k_outside_the_apps_range_is_refused(k):
    with pytest.raises(vfs.SearchError, match=f"use a whole number from 1 to {MAX_K}"):
        options_from(k, True, "no limit", "all labels")


def test_a_slider_float_is_a_whole_k():
    options = options_from(12.0, True, "no limit", "all labels")
    assert options.k == 12 and isinstance(options.k, int)


def test_run_search_checks_the_label_against_the_cache(library):
    image = handlers.display_image(library, FMNIST, 0)
    mask = np.zeros(image.shape[:2], bool)
    mask[100:200, 100:200] = True
    query, _ = handlers.read_query(library, FMNIST, editor.editor_value(image, mask))
    with pytest.raises(vfs.DatasetError, match="no label 'x' in this cache"):
        handlers.run_search(library, query, SearchOptions(only_label="x"))


# ---- uploads (read header-first by `editor.open_upload`, which the server's hidden editor uses)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` RGB pixels and holds almost none (the header is all PIL reads first)."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "width, height, message",
    [(20000, 20000, "the image has more than"), (8000, 6000, "the image is 8000x6000 .48,000,000 pixels.; the limit")],
)
def test_huge_uploads_are_refused_from_their_header(tmp_path, width, height, message):
    path = tmp_path / "huge.png"
    path.write_bytes(png_header(width, height))
    with costs_at_most(FEW_MB), pytest.raises(vfs.DatasetError, match=message) as caught:
        editor.open_upload(str(path))
    assert str(tmp_path) not in str(caught.value) and "downscale it" in str(caught.value)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<<>>\n%%EOF\n", "not an image this app can read"),
        (b"", "not an image this app can read"),
        (png_header(300, 200), "damaged"),  # a header and no pixels: a cut-off download
    ],
)
def test_files_that_are_not_readable_images_are_refused_without_a_server_path(tmp_path, content, message):
    path = tmp_path / "photo.png"  # a PDF renamed .png, an empty file, a truncated PNG
    path.write_bytes(content)
    with pytest.raises(vfs.DatasetError, match=message) as caught:
        editor.open_upload(str(path))
    assert str(tmp_path) not in str(caught.value) and "photo.png" not in str(caught.value)


def test_large_uploads_arrive_downscaled_and_layers_keep_an_exact_mask(tmp_path):
    from PIL import Image

    photo = np.random.default_rng(0).integers(0, 255, (2000, 3000, 3), dtype=np.uint8)  # (H, W, 3)
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=90)
    layer = np.zeros((2000, 3000, 4), np.uint8)  # (H, W, 4): one painted rectangle
    layer[400:1200, 600:1800] = (255, 120, 0, 255)
    Image.fromarray(layer).save(tmp_path / "layer.png")
    background = editor.open_upload(str(tmp_path / "photo.jpg"))
    painted = editor.open_upload((tmp_path / "layer.png").read_bytes(), mask_layer=True)  # bytes work too
    assert background.shape == (683, 1024, 4) and painted.shape == (683, 1024, 4)
    assert set(np.unique(painted[..., 3])) == {0, 255}  # nearest: no half-painted pixels
    expected = np.asarray(Image.fromarray(layer[..., 3]).resize((1024, 683), Image.Resampling.NEAREST))
    assert np.array_equal(painted[..., 3], expected)  # the same cells as resizing the mask itself
    assert abs(int(np.mean(background[..., :3])) - int(np.mean(photo))) <= 2  # the photo, not a blank
    small = editor.open_upload(str(tmp_path / "layer.png"), max_side=4000)  # under the limit: untouched
    assert np.array_equal(small, layer)
