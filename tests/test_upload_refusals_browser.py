"""Uploads the editor never sends to the server are refused in the page, in words (`app.upload_guard`).

A file over gradio's upload limit and a file the browser cannot decode never reach a handler, so
the page itself must say what is wrong: before this, the first left only an HTTP 413 in the
browser's console and the second a later "there is no query image". Each refusal is shown above
the editor (`#vfs-upload-refused`), the editor does not take the refused file, and the next good
upload clears the message.
"""

from __future__ import annotations

import numpy as np
import pytest
from app_server import BROWSER_MARKS
from PIL import Image

from app.editor import MAX_UPLOAD_MB

pytest.importorskip("playwright.sync_api", reason="playwright is in requirements-dev.txt")
pytestmark = BROWSER_MARKS
REFUSED = "#vfs-upload-refused"


def choose(page, path) -> None:
    page.locator("#vfs-editor input[type=file]").first.set_input_files(str(path))


def test_an_oversized_and_a_corrupt_upload_are_refused_in_the_page(page, app_url, tmp_path):
    big = tmp_path / "huge photo.png"  # over the limit: refused on its size alone, before any decoding
    with open(big, "wb") as stream:
        stream.write(b"\x89PNG\r\n\x1a\n")
        stream.write(np.random.default_rng(0).bytes((MAX_UPLOAD_MB + 1) * 1024 * 1024))
    good = tmp_path / "good.png"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(good)
    corrupt = tmp_path / "corrupt.png"  # a PNG whose first chunk is overwritten: no browser decodes it
    data = good.read_bytes()
    corrupt.write_bytes(data[:16] + b"\0" * 64 + data[80:])

    page.goto(app_url)
    page.wait_for_selector("#vfs-dataset .thumbnail-item")
    choose(page, big)
    message = page.locator(REFUSED)
    message.wait_for()
    assert f"the upload limit is {MAX_UPLOAD_MB} MB" in message.inner_text()
    assert '"huge photo.png" is 31.0 MB' in message.inner_text()
    assert page.locator("#vfs-editor .empty").count() == 1  # the editor did not take it

    choose(page, corrupt)
    page.wait_for_function(f"document.querySelector('{REFUSED}')?.innerText.includes('cannot be shown')")
    assert '"corrupt.png" cannot be shown' in message.inner_text() and "export a PNG or JPEG" in message.inner_text()

    choose(page, good)  # a good file is taken and clears the message
    page.wait_for_function("document.querySelector('#vfs-picked')?.innerText.includes('Uploaded image')")
    assert page.locator(REFUSED).count() == 0
