"""The "Why similar" hover overlays in a real browser: Debian chromium through Playwright, as in
`test_app_browser.py` (never `playwright install`).

Pick a dataset image, paint, search, open the tab; the overlays show every image at the cache's layer
and at a second layer of its model. Hovering a cell of the query recolors both layers, the other
layer pointing at the cell `vfs.analysis.overlays.map_cell` gives; hovering the second layer maps back; a click
points too, and so does the click fallback (pictures shaded by the server). A screenshot goes to the test's folder
and to `tests/artifacts/analysis-hover.png` (ignored by git).
"""

from __future__ import annotations

import html
import json
import shutil

import pytest
from app_server import ARTIFACTS, BROWSER_MARKS, paint, wait_for_first_image

from vfs.analysis.overlays import map_cell

pytest.importorskip("playwright.sync_api", reason="playwright is in requirements-dev.txt")
pytestmark = BROWSER_MARKS

# the canvas of one figure (layer k, image i) as a PNG data URL, and its alpha at a cell's centre
CANVAS = "(id) => document.querySelector('#' + id + ' canvas').toDataURL()"
ALPHA = """([id, row, col, h, w]) => {
  const canvas = document.querySelector('#' + id + ' canvas');
  const x = Math.floor((col + 0.5) * canvas.width / w), y = Math.floor((row + 0.5) * canvas.height / h);
  const all = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let most = 0;
  for (let k = 3; k < all.length; k += 4) most = Math.max(most, all[k]);
  return [canvas.getContext('2d').getImageData(x, y, 1, 1).data[3], most];
}"""


def hover_cell(page, figure: str, row: int, col: int, grid: tuple[int, int], *, click: bool = False) -> None:
    """Move the pointer to the centre of cell (row, col) of a figure's image (and click there)."""
    page.locator(f"#{figure} img").scroll_into_view_if_needed()
    box = page.locator(f"#{figure} img").bounding_box()
    h, w = grid
    x, y = box["x"] + box["width"] * (col + 0.5) / w, box["y"] + box["height"] * (row + 0.5) / h
    page.mouse.click(x, y) if click else page.mouse.move(x, y)


def cell_of(page, figure: str) -> tuple[int, int]:
    text = page.locator(f"#{figure}").get_attribute("data-cell")
    row, col = text.split(",")
    return int(row), int(col)


def test_hover_recolors_both_layers_in_step(page, app_url, tmp_path):
    page.goto(app_url)
    page.wait_for_selector("#vfs-dataset .thumbnail-item")
    page.locator("#vfs-dataset .thumbnail-item").nth(3).click()
    page.wait_for_function("document.querySelector('#vfs-picked')?.innerText.includes('#3')")
    wait_for_first_image(page, "#vfs-editor")  # painting now lands on the picked image
    paint(page, "#vfs-editor", [(0.40, 0.35), (0.58, 0.45), (0.50, 0.62)])
    page.locator("#vfs-search").click()
    page.wait_for_function("document.querySelectorAll('#vfs-results .caption-label').length >= 12")

    page.get_by_role("tab", name="Why similar").click()
    page.wait_for_selector("#vfs-overlays .vfs-overlays[data-layers='2']")
    page.wait_for_function("document.querySelector('#vfs-ov-1-0')?.dataset.cell")  # the centre is painted
    payload = json.loads(html.unescape(page.locator("#vfs-overlays .vfs-overlays").get_attribute("data-payload")))
    first, second = payload["layers"]
    grids = [(first["h"], first["w"]), (second["h"], second["w"])]
    assert grids[0] != grids[1], "the default second layer should have another grid size"
    assert page.locator("#vfs-ov-layer2 input").input_value() == second["name"]

    # hover a cell of the query at the cache's layer: both layers recolor, the second at the mapped cell
    before = [page.evaluate(CANVAS, f"vfs-ov-{k}-{i}") for k in (0, 1) for i in (0, 1)]
    row, col = grids[0][0] - 2, 1
    hover_cell(page, "vfs-ov-0-0", row, col, grids[0])
    expected = map_cell(row, col, grids[0], grids[1])
    page.wait_for_function(f"document.querySelector('#vfs-ov-1-0').dataset.cell === '{expected[0]},{expected[1]}'")
    assert cell_of(page, "vfs-ov-0-0") == (row, col)
    assert page.locator("#vfs-ov-1-1").get_attribute("data-pointed") == f"0,{expected[0]},{expected[1]}"
    after = [page.evaluate(CANVAS, f"vfs-ov-{k}-{i}") for k in (0, 1) for i in (0, 1)]
    assert all(b != a for b, a in zip(before, after)), "every canvas of both layers should be repainted"
    for k, cell in ((0, (row, col)), (1, expected)):
        pointed, darkest = page.evaluate(ALPHA, [f"vfs-ov-{k}-0", *cell, *grids[k]])
        assert pointed < 10 < darkest, (k, pointed, darkest)  # the pointed cell stays bright, others darken
    status = page.locator("#vfs-overlays .vfs-ov-status").inner_text()
    assert f"{first['name']} ({row}, {col})" in status and f"{second['name']} ({expected[0]}, {expected[1]})" in status

    # hover the second layer of result #2: the cache's layer follows back through the mapping
    row2, col2 = 0, grids[1][1] - 1
    hover_cell(page, "vfs-ov-1-2", row2, col2, grids[1])
    back = map_cell(row2, col2, grids[1], grids[0])
    page.wait_for_function(f"document.querySelector('#vfs-ov-0-2').dataset.cell === '{back[0]},{back[1]}'")
    assert page.locator("#vfs-ov-0-0").get_attribute("data-cell") == ""
    shot = tmp_path / "analysis-hover.png"
    page.locator("#vfs-overlays").screenshot(path=str(shot))
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "analysis-hover.png")

    # a click points as well: a click event alone (no mousemove) at cell (0, 0) of result #1
    page.mouse.move(2, 2)
    page.evaluate("""() => {
      const img = document.querySelector('#vfs-ov-0-1 img');
      const box = img.getBoundingClientRect();
      img.dispatchEvent(new MouseEvent('click', { bubbles: true, clientX: box.left + 3, clientY: box.top + 3 }));
    }""")
    page.wait_for_function("document.querySelector('#vfs-ov-0-1').dataset.cell === '0,0'")
    assert cell_of(page, "vfs-ov-1-1") == map_cell(0, 0, grids[0], grids[1])
    assert page.locator("#vfs-ov-0-2").get_attribute("data-cell") == ""

    # the click fallback: the server shades both layers for the clicked query cell
    page.get_by_text("Overlays by clicking").click()
    page.wait_for_selector("#vfs-ov-query img")
    first_picture = "document.querySelector('#vfs-ov-clicked img')?.src"
    old = page.evaluate(first_picture)
    captions = page.locator("#vfs-ov-clicked .caption-label").all_inner_texts()
    assert len(captions) == 2 * payload["n"]
    assert sum(c.startswith(f"{first['name']} · ") for c in captions) == payload["n"]
    assert sum(c.startswith(f"{second['name']} · ") for c in captions) == payload["n"]
    query = page.locator("#vfs-ov-query img")
    box = query.bounding_box()
    # gradio centres the picture in the box at most at its natural size: aim 60 px above its centre (a row
    # above the centre cell, which the overlay already shows)
    query.click(position={"x": box["width"] / 2, "y": box["height"] / 2 - 60})  # scrolls it into view first
    page.wait_for_function(f"document.querySelector('#vfs-ov-clicked img')?.src !== {json.dumps(old)}")
    page.screenshot(path=str(tmp_path / "analysis-page.png"), full_page=True)
