"""Painting on real photos and errors of the "Why similar" tab (issue 17), in a real browser (Debian chromium).

- The editor itself shows which part of the image the model sees: outside its centre crop the image is
  dimmed. Oracle: a flat-coloured upload, whose on-screen pixels are only the colour (inside) or the
  colour times `drawing.DIM` (outside), in the proportions and places `Preprocess.crop_box` gives.
- The brush is sized relative to the image: one stroke, drawn through the same canvas fractions, covers
  about the same fraction of a 512 px photo and of a 4000 px upload (the mask read back from the share
  string the search made).
- An error of the "Why similar" tab shows once, on the tab's message, with no "Error" badge on its
  output panels, and the next action clears it.

Screenshots go to `tests/artifacts/` (ignored by git).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from app_server import ARTIFACTS, BROWSER_MARKS, paint_and_search, wait_for_first_image
from PIL import Image

from app import drawing
from app.state import decode_state

pytest.importorskip("playwright.sync_api", reason="playwright is in requirements-dev.txt")
pytestmark = BROWSER_MARKS
STROKE = [(0.35, 0.40), (0.50, 0.50), (0.62, 0.45)]

# the components showing gradio's "Error" badge (each status tracker's error line, when shown)
ERROR_BADGES = """() => [...document.querySelectorAll('[data-testid=status-tracker] span.error')]
  .filter((badge) => badge.offsetParent !== null && badge.innerText.trim())
  .map((badge) => badge.closest('[id]')?.id || '?')"""


def upload(page, path) -> None:
    """Drop the file at `path` into the empty editor; wait until the server has put it back, re-sized."""
    page.locator("#vfs-editor input[type=file]").set_input_files(str(path))
    # a 4000 px photo is decoded and re-exported by the page's software WebGL before the server gets it:
    # a minute or more here when the machine is busy
    page.wait_for_function("document.querySelector('#vfs-picked')?.innerText.startsWith('Uploaded image')",
                           timeout=300_000)
    wait_for_first_image(page, "#vfs-editor")


def editor_pixels(page, name: str) -> np.ndarray:
    """A screenshot of the editor's canvas as (H, W, 3) uint8, also saved as `name`."""
    ARTIFACTS.mkdir(exist_ok=True)
    png = page.locator("#vfs-editor canvas").first.screenshot(path=str(ARTIFACTS / name))
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_the_editor_dims_what_the_model_cannot_see(page, app_url, tmp_path):
    colour = np.array([40, 160, 220])
    Image.fromarray(np.broadcast_to(colour.astype(np.uint8), (300, 600, 3)).copy()).save(tmp_path / "flat.png")
    page.goto(app_url)
    page.wait_for_selector("#vfs-dataset .thumbnail-item")
    upload(page, tmp_path / "flat.png")
    assert "the model sees only its centre" in page.locator("#vfs-picked").inner_text()
    # shown at 512 x 256; the small caches' model resizes the shorter side to 128 and crops 112 x 112:
    # x 144-368 and y 16-240 of 512 x 256 stay bright, the rest is dimmed
    inside_share = (224 / 256) * (224 / 512)
    dim = np.round(colour * drawing.DIM)
    for _attempt in range(30):  # the canvas redraws the re-sized image for a few seconds (software WebGL)
        pixels = editor_pixels(page, "app-editor-crop.png").astype(int)
        bright = np.all(np.abs(pixels - colour) <= 8, axis=-1)  # (H, W)
        dimmed = np.all(np.abs(pixels - dim) <= 8, axis=-1)  # (H, W)
        if bright.sum() > 1000 and dimmed.sum() > 1000:
            break
        page.wait_for_timeout(500)
    assert bright.sum() > 1000 and dimmed.sum() > 1000, (bright.sum(), dimmed.sum())
    assert abs(bright.sum() / (bright.sum() + dimmed.sum()) - inside_share) < 0.04
    columns = np.flatnonzero(bright.any(axis=0))
    left, right = columns.min(), columns.max()
    assert dimmed[:, :left].sum() > 0.3 * dimmed.sum() and dimmed[:, right + 1:].sum() > 0.3 * dimmed.sum()
    assert not dimmed[:, left:right + 1][bright.any(axis=1)].any()  # nothing dimmed inside the crop


def stroke_share(page, path) -> float:
    """Upload `path`, draw STROKE, search, and read back the fraction of the image the stroke covered."""
    page.goto(page.url.split("?")[0])
    page.wait_for_selector("#vfs-dataset .thumbnail-item")
    upload(page, path)
    paint_and_search(page, STROKE)
    state = decode_state(page.locator("#vfs-share textarea, #vfs-share input").first.input_value())
    return float(state.mask.mean())


def test_a_stroke_covers_the_same_share_of_a_small_and_a_huge_photo(page, app_url, tmp_path):
    from skimage import data

    astronaut = data.astronaut()  # (512, 512, 3)
    Image.fromarray(astronaut).save(tmp_path / "astronaut.png")
    Image.fromarray(astronaut).resize((4000, 4000), Image.Resampling.BICUBIC).save(
        tmp_path / "astronaut-4000.jpg", quality=90)
    page.goto(app_url)
    small = stroke_share(page, tmp_path / "astronaut.png")
    page.screenshot(path=str(ARTIFACTS / "app-stroke-512.png"), full_page=True)
    huge = stroke_share(page, tmp_path / "astronaut-4000.jpg")
    page.screenshot(path=str(ARTIFACTS / "app-stroke-4000.png"), full_page=True)
    assert small > 0.005 and 0.8 < huge / small < 1.25, (small, huge)


def test_an_analysis_error_shows_once_and_the_next_action_clears_it(page, app_url):
    page.goto(app_url)
    page.wait_for_selector("#vfs-dataset .thumbnail-item")
    page.get_by_role("tab", name="Why similar").click()
    page.get_by_text("Why this result? Similarity decomposition").click()  # open the accordion
    page.locator("#vfs-why").click()  # before any search
    page.locator(".toast-body", has_text="nothing to explain yet").first.wait_for()
    # the toast and the panels' status come from one status message: the badges are drawn with the toast
    assert set(page.evaluate(ERROR_BADGES)) <= {"vfs-why-message"}  # not on the query, result or text panels
    page.screenshot(path=str(ARTIFACTS / "app-why-error-once.png"), full_page=True)
    page.locator(".toast-close").first.click()

    page.get_by_role("tab", name="Search").click()
    page.locator("#vfs-dataset .thumbnail-item").nth(6).click()
    page.wait_for_function("document.querySelector('#vfs-picked')?.innerText.includes('#6 ')")
    wait_for_first_image(page, "#vfs-editor")
    paint_and_search(page, STROKE)
    page.get_by_role("tab", name="Why similar").click()
    page.locator("#vfs-why").click()  # at once: the tab's refresh after the search may still be running
    page.wait_for_function("(document.querySelector('#vfs-why-text')?.innerText || '').trim().length > 0")
    assert page.locator(".toast-body").count() == 0  # the first click answers (it once said "run a search first")
    assert page.evaluate(ERROR_BADGES) == []

