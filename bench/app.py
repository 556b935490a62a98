"""Click-to-gallery time of the app in a real browser, against the server's own search time.

    python bench/app.py [--cache-dir DIR] [--searches 4]

Builds (or reuses) the offline default caches under DIR (default: $VFS_CACHE_DIR or ~/.cache/vfs),
launches `python -m app` on them, and in Debian chromium (Playwright, software WebGL) picks a
dataset image, paints a stroke, presses Search at once and waits for the gallery to change. For each
search it prints the click -> gallery time measured in the page (from the click event to the first
animation frame that shows the new captions), the same time seen from outside (Playwright's click
call to its wait returning: adds the driver's own overhead), the server-side search time the app
reports in its summary, their ratio, and how many files the page uploaded meanwhile.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from app_server import browser_page, paint, running_app  # noqa: E402 (after the path set-up)

from vfs.cache.defaults import default_root, ensure_default_caches  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--searches", type=int, default=4)
    args = parser.parse_args()
    root = args.cache_dir or default_root()
    started = time.perf_counter()
    paths = ensure_default_caches(root)
    print(f"default caches ready in {time.perf_counter() - started:.1f} s: {', '.join(map(str, paths.values()))}")

    rows = []
    with running_app(root) as url, browser_page(timeout_ms=120_000) as page:
        uploads = []  # every file the page sends to the server (the editor uploads its canvases)
        page.on("request", lambda request: uploads.append(request.url) if "/upload" in request.url else None)
        page.goto(url)
        page.evaluate("document.addEventListener('click', (e) => { if (e.target.closest('#vfs-search'))"
                      " window.vfsClicked = performance.now(); }, true)")
        page.wait_for_selector("#vfs-dataset .thumbnail-item")
        for attempt in range(args.searches):
            grid_src = "document.querySelector('#vfs-grid img')?.src || ''"
            shown = page.evaluate(grid_src)
            page.locator("#vfs-dataset .thumbnail-item").nth(attempt + 1).click()
            page.wait_for_function(  # the new image is in the editor once its grid preview is drawn
                f"document.querySelector('#vfs-picked')?.innerText.includes('#{attempt + 1} ')"
                f" && ({grid_src}) !== '' && ({grid_src}) !== {shown!r}"
            )
            for _ in range(3):  # a stroke made while the editor is still loading the image is lost
                paint(page, "#vfs-editor", [(0.40, 0.30), (0.55, 0.45), (0.45, 0.60)])
                start, sent = time.perf_counter(), len(uploads)
                page.locator("#vfs-search").click()
                in_page = page.wait_for_function(  # the summary names this query once its gallery is in
                    "([wanted]) => { const s = document.querySelector('#vfs-summary')?.innerText || '';"
                    " const empty = [...document.querySelectorAll('.toast-body')]"
                    ".some(t => t.innerText.includes('mask is empty'));"
                    " const done = empty || (s.includes(wanted) && !/\\d\\.\\ds/.test(s)"
                    " && document.querySelectorAll('#vfs-results .caption-label').length > 0);"
                    " return done && performance.now() - window.vfsClicked; }",
                    arg=[f"for the dataset image #{attempt + 1} "],
                    polling="raf",
                ).json_value() / 1000
                if not page.locator(".toast-body", has_text="mask is empty").count():
                    break
                print(f"search {attempt + 1}: the stroke was lost (mask is empty), painting again")
                page.locator(".toast-close").first.click()
            else:
                raise RuntimeError("three strokes in a row were lost: the editor never took the picked image")
            outside_seconds = time.perf_counter() - start
            upload_count = len(uploads) - sent
            summary = page.locator("#vfs-summary").inner_text()
            server_ms = float(re.search(r"in ([\d.]+) ms", summary)[1])
            rows.append((in_page, outside_seconds, server_ms / 1000))
            print(f"search {attempt + 1}: click -> gallery {in_page:.2f} s in the page ({outside_seconds:.2f} s "
                  f"from outside), server search {server_ms:.0f} ms, ratio {in_page / (server_ms / 1000):.1f}x, "
                  f"{upload_count} uploads  ({summary.strip()})")
    in_page, outside, server = (statistics.median(r[i] for r in rows) for i in range(3))
    print(f"median: click -> gallery {in_page:.2f} s in the page ({outside:.2f} s from outside), server search "
          f"{server * 1000:.0f} ms, ratio {in_page / server:.1f}x over {len(rows)} searches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
