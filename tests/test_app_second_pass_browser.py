"""What a first-time user meets in the first ten minutes (issue 17), in a real browser (Debian chromium).

- Results legible at 1400 and 800 px: every caption shows its whole text (rank, cosine, label), the
  score plot lies inside its panel, and at 800 px the Search button sits right under the editor.
- Exploring: a result opens large; one click makes it the next query (its window painted) and runs
  it; the history lists both queries; the copied link opens the page and runs the query at once.
- A cache chosen right after the page loads stays chosen; an uploaded photo is searched in one cache,
  then in another (the results of the first are cleared at the switch); Compare opens with two caches
  of one dataset preselected and shows per-side results and the shared count.

Screenshots go to `tests/artifacts/` (ignored by git).
"""

from __future__ import annotations

import re

import pytest
from app_server import ARTIFACTS, BROWSER_MARKS, paint_and_search, wait_for_first_image
from playwright.sync_api import TimeoutError as PlaywrightTimeout

pytest.importorskip("playwright.sync_api", reason="playwright is in requirements-dev.txt")
pytestmark = BROWSER_MARKS
CAPTION = re.compile(r"^(?P<rank>\d+) · (?P<score>-?\d\.\d{3}) · (?P<label>.+)$")
STROKE = [(0.42, 0.35), (0.55, 0.45), (0.50, 0.62)]

# every caption of a gallery: its text, and whether the text is cut (wider than its box, or its box
# sticking out of the gallery)
CAPTIONS = """(selector) => {
  const gallery = document.querySelector(selector).getBoundingClientRect();
  return [...document.querySelectorAll(selector + ' .caption-label')].map((el) => {
    const box = el.getBoundingClientRect();
    const cut = el.scrollWidth > el.clientWidth + 1 || box.right > gallery.right + 1 || box.left < gallery.left - 1;
    return [el.innerText.trim(), cut];
  });
}"""


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def open_dataset_image(page, index: int) -> None:
    page.wait_for_selector("#vfs-dataset .thumbnail-item")
    page.locator("#vfs-dataset .thumbnail-item").nth(index).click()
    page.wait_for_function(f"document.querySelector('#vfs-picked')?.innerText.includes('#{index} ')")
    wait_for_first_image(page, "#vfs-editor")


def pick_cache(page, selector: str, text: str) -> None:
    page.locator(f"{selector} input").click()
    page.locator("[role=option]", has_text=text).first.click()
    page.wait_for_function(f"document.querySelector('{selector} input').value.includes({text!r})")


def captions(page, selector: str = "#vfs-results") -> list[str]:
    return [text for text, _ in page.evaluate(CAPTIONS, selector)]


def test_results_are_legible_at_1400_and_800_px(page, app_url):
    page.goto(app_url)
    open_dataset_image(page, 5)
    paint_and_search(page, STROKE)
    assert "dataset image #5" in page.locator("#vfs-summary").inner_text()  # a pick, not an upload
    for width in (1400, 800):
        page.set_viewport_size({"width": width, "height": 1100})
        page.wait_for_function("document.querySelector('#vfs-plot .marks')")
        shown = page.evaluate(CAPTIONS, "#vfs-results")
        assert len(shown) == 12
        for rank, (text, cut) in enumerate(shown, start=1):
            parts = CAPTION.match(text)
            assert parts and int(parts["rank"]) == rank, text
            assert not cut, f"caption {text!r} is cut at {width} px"
        panel = page.locator("#vfs-plot").bounding_box()
        chart = page.locator("#vfs-plot .marks").first.bounding_box()
        assert panel["x"] - 1 <= chart["x"] and chart["x"] + chart["width"] <= panel["x"] + panel["width"] + 1
        assert 0 <= chart["x"] and chart["x"] + chart["width"] <= width  # the y-axis and the last label on screen
        editor = page.locator("#vfs-editor").bounding_box()
        search = page.locator("#vfs-search").bounding_box()
        assert 0 <= search["y"] - (editor["y"] + editor["height"]) < 200, (width, editor, search)
        shot(page, f"app-results-{width}.png")


def test_a_result_is_walked_to_and_the_link_runs_the_query_on_open(page, app_url):
    page.goto(app_url)
    open_dataset_image(page, 8)
    paint_and_search(page, STROKE)
    second = captions(page)[1]
    page.locator("#vfs-results .thumbnail-item").nth(1).click()
    page.wait_for_function("document.querySelector('#vfs-detail-text')?.innerText.includes('Result 2')")
    detail = page.locator("#vfs-detail-text").inner_text()
    score, label = CAPTION.match(second)["score"], CAPTION.match(second)["label"]
    assert score in detail and label in detail and " id " in detail
    index = int(re.search(r"dataset image #(\d+)", detail)[1])
    shot(page, "app-result-large.png")

    page.locator("#vfs-explore").click()  # one action: the result becomes the query, and it runs
    page.wait_for_function(
        f"(document.querySelector('#vfs-summary')?.innerText || '').includes('dataset image #{index} ')")
    assert f"#{index} " in page.locator("#vfs-picked").inner_text()
    page.locator("#vfs-history input").click()
    history = page.locator("[role=option]").all_inner_texts()
    assert len(history) == 2 and history[0].startswith(f"#{index} ") and history[1].startswith("#8 ")
    page.keyboard.press("Escape")
    shot(page, "app-explored.png")

    walked = captions(page)
    link = page.locator("#vfs-link textarea, #vfs-link input").first.input_value()
    assert "?state=" in link
    page.goto(link)  # a colleague opens the link (a new page session): the query runs with no click
    page.wait_for_function(f"document.querySelectorAll('#vfs-results .caption-label').length == {len(walked)}")
    assert captions(page) == walked
    assert f"#{index} " in page.locator("#vfs-picked").inner_text()
    assert f"dataset image #{index} " in page.locator("#vfs-summary").inner_text()
    shot(page, "app-shared-link.png")


def test_cache_choice_upload_across_caches_and_the_compare_default(page, app_url):
    page.goto(app_url)
    page.wait_for_selector("#vfs-dataset .thumbnail-item")
    pick_cache(page, "#vfs-cache", "blocks.5 · fashion-mnist")  # right after the page loaded
    page.wait_for_function("document.querySelector('#vfs-cache-info')?.innerText.includes('blocks.5')")
    page.wait_for_selector("#vfs-examples .thumbnail-item")
    page.locator("#vfs-examples .thumbnail-item").nth(2).click()
    page.wait_for_function("document.querySelector('#vfs-picked')?.innerText.includes('Example photo')")
    wait_for_first_image(page, "#vfs-editor")
    assert "blocks.5 · fashion-mnist" in page.locator("#vfs-cache input").input_value()  # still chosen
    paint_and_search(page, STROKE)
    assert "uploaded image" in page.locator("#vfs-summary").inner_text()

    pick_cache(page, "#vfs-cache", "blocks.5 · skimage-photos")  # the same upload, in another cache
    page.wait_for_function("document.querySelectorAll('#vfs-results .caption-label').length == 0")
    page.locator("#vfs-search").click()
    page.wait_for_function("(document.querySelector('#vfs-summary')?.innerText || '').includes('skimage-photos')"
                           " && document.querySelectorAll('#vfs-results .caption-label').length > 0")
    assert "uploaded image" in page.locator("#vfs-summary").inner_text()
    assert not page.locator(".toast-body").count()
    shot(page, "app-upload-second-cache.png")

    page.get_by_role("tab", name="Compare").click()
    left = page.locator("#vfs-cache-a input").input_value()
    right = page.locator("#vfs-cache-b input").input_value()
    assert "fashion-mnist" in left and "fashion-mnist" in right and left != right  # preselected, one dataset
    page.locator("#vfs-compare").click()
    page.wait_for_function("document.querySelectorAll('#vfs-results-b .caption-label').length == 12")
    summary = page.locator("#vfs-compare-summary").inner_text()
    shared = int(re.search(r"(\d+) of the top 12 are shared", summary)[1])
    starred = [sum(text.startswith("★ ") for text in captions(page, side)) for side in ("#vfs-results-a", "#vfs-results-b")]
    assert starred == [shared, shared]
    shot(page, "app-compare-default.png")


# the components showing gradio's "Error" badge (each status tracker's error line, when shown)
ERROR_BADGES = """() => [...document.querySelectorAll('[data-testid=status-tracker] span.error')]
  .filter((badge) => badge.offsetParent !== null && badge.innerText.trim())
  .map((badge) => badge.closest('[id]')?.id || '?')"""


def test_an_error_shows_once_clear_canvas_forgets_the_image_and_k_shows_what_ran(page, app_url):
    page.goto(app_url)
    open_dataset_image(page, 2)
    page.locator("#vfs-search").click()  # nothing painted: one message, in one place
    page.locator(".toast-body", has_text="mask is empty").first.wait_for()
    # the toast and the panels' status come from one status message: the badges are drawn with the toast
    assert set(page.evaluate(ERROR_BADGES)) <= {"vfs-message"}  # no badge over the results or the summary
    shot(page, "app-error-once.png")
    page.locator(".toast-close").first.click()
    page.locator("#vfs-random").click()  # the next action clears it
    page.wait_for_function("!document.querySelector('#vfs-picked').innerText.includes('#2 ')")
    assert page.evaluate(ERROR_BADGES) == []

    # the editor is still loading the random image for a few seconds (software WebGL): a click on
    # Clear in that time can be lost, so click again until the caption says the canvas is empty
    cleared = "document.querySelector('#vfs-picked').innerText.startsWith('Pick an image')"
    for attempt in range(4):
        page.locator("#vfs-editor button[aria-label='Clear canvas']").click()
        try:
            page.wait_for_function(cleared, timeout=15_000)
            break
        except PlaywrightTimeout:
            if attempt == 3:
                raise

    open_dataset_image(page, 4)
    page.locator("#vfs-k input[type=number]").fill("0")  # below the slider's minimum
    page.locator("#vfs-k input[type=number]").press("Enter")
    paint_and_search(page, STROKE)
    count = len(captions(page))
    assert page.locator("#vfs-summary").inner_text().startswith(f"{count} result{'' if count == 1 else 's'} in ")
    assert page.locator("#vfs-k input[type=number]").input_value() == str(count)  # the k that ran
    shot(page, "app-k-shown.png")
