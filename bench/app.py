"""Click-to-gallery time of the app in a real browser, against the server's own search time.

    python bench/app.py [--cache-dir DIR] [--searches 4]

Builds (or reuses) the offline default caches under DIR (default: $VFS_CACHE_DIR or ~/.cache/vfs),
launches `python -m app` on them, and in Debian chromium (Playwright, software WebGL) picks a
dataset image, paints a stroke, presses Search and waits for the gallery to change. For each search
it prints the browser's click -> gallery time, the server-side search time the app reports in its
summary, and their ratio: what the page adds on top of the search itself.
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

from app_server import browser_page, paint, running_app

from vfs.default_cache import default_root, ensure_default_caches


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
        page.goto(url)
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
                start = time.perf_counter()
                page.locator("#vfs-search").click()
                page.wait_for_function(  # the summary names this query once its gallery is in
                    "([wanted]) => { const s = document.querySelector('#vfs-summary')?.innerText || '';"
                    " const empty = [...document.querySelectorAll('.toast-body')]"
                    ".some(t => t.innerText.includes('mask is empty'));"
                    " return empty || (s.includes(wanted) && !/\\d\\.\\ds/.test(s)"
                    " && document.querySelectorAll('#vfs-results .caption-label').length > 0); }",
                    arg=[f"results for the dataset image #{attempt + 1} "],
                )
                if not page.locator(".toast-body", has_text="mask is empty").count():
                    break
                print(f"search {attempt + 1}: the stroke was lost (mask is empty), painting again")
                page.locator(".toast-close").first.click()
            else:
                raise RuntimeError("three strokes in a row were lost: the editor never took the picked image")
            browser_seconds = time.perf_counter() - start
            summary = page.locator("#vfs-summary").inner_text()
            server_ms = float(re.search(r"in ([\d.]+) ms", summary)[1])
            rows.append((browser_seconds, server_ms / 1000))
            print(f"search {attempt + 1}: click -> gallery {browser_seconds:.2f} s, server search "
                  f"{server_ms:.0f} ms, ratio {browser_seconds / (server_ms / 1000):.1f}x  ({summary.strip()})")
    browser_median = statistics.median(r[0] for r in rows)
    server_median = statistics.median(r[1] for r in rows)
    print(f"median: click -> gallery {browser_median:.2f} s, server search {server_median * 1000:.0f} ms, "
          f"ratio {browser_median / server_median:.1f}x over {len(rows)} searches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
