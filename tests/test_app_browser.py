"""The app in a real browser: Debian chromium through Playwright (never `playwright install`).

Pick a dataset image, press Search with nothing painted (a readable message), paint a stroke on the
editor's canvas, press Search, wait for the gallery, check its captions, and save a screenshot to
the test's folder and to `tests/artifacts/app-search.png` (ignored by git). Then an example photo:
its mask previewed on the grid (✓), searched twice and compared, with the painted editor read
(uploaded) once per click.
"""

from __future__ import annotations

import re
import shutil
import time

import numpy as np
import pytest
from app_server import ARTIFACTS, BROWSER_MARKS, check_captions, oracle_captions, paint, wait_for_first_image

pytest.importorskip("playwright.sync_api", reason="playwright is in requirements-dev.txt")
CAPTION = re.compile(r"^(?P<rank>\d+) · (?P<score>-?\d\.\d{3}) · (?P<label>.+)$")
pytestmark = BROWSER_MARKS


def test_paint_search_and_read_the_gallery(page, app_url, tmp_path):
    page.goto(app_url)
    page.wait_for_selector("#vfs-dataset .thumbnail-item")
    page.locator("#vfs-dataset .thumbnail-item").nth(5).click()
    page.wait_for_function("document.querySelector('#vfs-picked')?.innerText.includes('#5')")
    wait_for_first_image(page, "#vfs-editor")

    page.locator("#vfs-search").click()  # nothing painted yet: a message, not a trace
    toast = page.locator(".toast-body", has_text="mask is empty")
    toast.first.wait_for()
    page.locator(".toast-close").first.click()

    paint(page, "#vfs-editor", [(0.42, 0.35), (0.55, 0.45), (0.50, 0.62), (0.40, 0.55)])
    start = time.perf_counter()
    page.locator("#vfs-search").click()
    page.wait_for_function("document.querySelectorAll('#vfs-results .caption-label').length >= 12")
    seconds = time.perf_counter() - start
    captions = page.locator("#vfs-results .caption-label").all_inner_texts()
    assert len(captions) == 12
    for rank, caption in enumerate(captions, start=1):
        parts = CAPTION.match(caption.strip())
        assert parts, caption
        assert int(parts["rank"]) == rank and -1 <= float(parts["score"]) <= 1
    scores = [float(CAPTION.match(c.strip())["score"]) for c in captions]
    assert scores == sorted(scores, reverse=True)
    summary = page.locator("#vfs-summary").inner_text()
    assert "dataset image #5" in summary
    cells = int(re.search(r"mask covers (\d+) of", summary)[1])
    assert cells > 0

    page.wait_for_selector("#vfs-plot .marks")  # the chart's own canvas or svg (not an icon's svg)
    shot = tmp_path / "app-search.png"
    page.screenshot(path=str(shot), full_page=True)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "app-search.png")
    print(f"click -> gallery {seconds:.2f} s in the browser; server: {summary}")


def test_state_in_the_url_reproduces_a_query(page, app_url, app_caches):
    from app import exports, handlers
    from app.editor import editor_value
    from app.library import CacheLibrary
    from app.state import SearchOptions

    library = CacheLibrary(app_caches, hub=False)
    library.refresh()
    key = "fmnist-blocks5"
    cache = library.open(key)
    image = handlers.display_image(library, key, 7)
    mask = np.zeros(image.shape[:2], bool)
    mask[150:330, 40:200] = True
    picked = handlers.Picked(cache_key=key, index=7, image_id=cache.ids[7])
    query, _ = handlers.read_query(library, key, editor_value(image, mask), picked)
    outcome = handlers.run_search(library, query, SearchOptions(k=5, unique="label"))  # for its share string
    # oracle: the library alone (cached row 7, excluded, best image per label), not the handlers
    expected = oracle_captions(app_caches / key, image, mask, k=5, index=7, one_per_label=True)

    page.goto(f"{app_url}/?state={exports.share_string(library, outcome)}")
    page.wait_for_function("document.querySelector('#vfs-picked')?.innerText.includes('#7')")
    page.locator("#vfs-search").click()
    page.wait_for_function("document.querySelectorAll('#vfs-results .caption-label').length == 5")
    check_captions(page.locator("#vfs-results .caption-label").all_inner_texts(), expected)


def test_an_example_photo_is_searched_and_compared_reading_the_editor_once_per_click(page, app_url):
    uploads = []  # the editor uploads its background, layer and composite each time the page reads it
    page.on("request", lambda request: uploads.append(request.url) if "/upload" in request.url else None)
    page.goto(app_url)
    page.wait_for_selector("#vfs-examples .thumbnail-item")
    page.locator("#vfs-examples .thumbnail-item").nth(1).click()
    page.wait_for_function("document.querySelector('#vfs-picked')?.innerText.includes('Example photo')")
    wait_for_first_image(page, "#vfs-editor")
    paint(page, "#vfs-editor", [(0.40, 0.30), (0.55, 0.45), (0.45, 0.60)])
    unpainted = page.evaluate("document.querySelector('#vfs-grid img').src")
    page.locator("#vfs-editor button[aria-label='Save changes']").click()  # the ✓: the mask on the grid
    page.wait_for_function(f"document.querySelector('#vfs-grid img').src !== {unpainted!r}")

    for k in (6, 5):  # a second search: where gradio's re-reads of past inputs used to pile up
        page.locator("#vfs-k input[type=number]").fill(str(k))
        page.locator("#vfs-k input[type=number]").press("Enter")
        page.locator("#vfs-search").click()
        page.wait_for_function(
            f"document.querySelectorAll('#vfs-results .caption-label').length == {k}"
            " && (document.querySelector('#vfs-summary')?.innerText || '').includes('uploaded image')"
        )
    page.get_by_role("tab", name="Compare").click()
    page.locator("#vfs-compare").click()
    page.wait_for_function("document.querySelectorAll('#vfs-results-b .caption-label').length == 5")
    assert "share" in page.locator("#vfs-compare-summary").inner_text()
    # one read per Search or Compare click; the ✓ costs two (gradio also reads an event's trigger); the
    # example put in the editor is reported back once as an upload (app.search_actions.put_upload)
    assert 3 <= len(uploads) <= (2 + 1 + 2 + 2) * 3, uploads
