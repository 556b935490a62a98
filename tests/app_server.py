"""Test helpers for the app: small real caches, and the app launched on a free port.

The caches are built with the real builder (efficientnet_lite0 at a small input size) from 48
Fashion-MNIST test images (two layers, so Compare has two caches of one dataset) and from the
scikit-image photos (another dataset). The server is waited on through `/gradio_api/info`.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMALL_CACHES = {  # folder -> (layer, dataset spec, input size)
    "fmnist-blocks5": ("blocks.5", "fashion-mnist:test[:48]", 112),
    "fmnist-blocks3": ("blocks.3", "fashion-mnist:test[:48]", 112),
    "photos-blocks5": ("blocks.5", "skimage-photos", 112),
}


def build_small_caches(root: Path) -> dict[str, Path]:
    """Build (or reuse) the small caches under `root`; return folder name -> path."""
    import vfs

    model = vfs.load_model("efficientnet_lite0")
    paths = {}
    for name, (layer, dataset, size) in SMALL_CACHES.items():
        paths[name] = vfs.build_cache(
            model, layer, dataset, Path(root) / name, input_size=size, progress=False
        )
    return paths


def shared_caches(tmp_path_factory) -> Path:
    """One folder of small caches per pytest session (built by whichever test module asks first)."""
    root = tmp_path_factory.getbasetemp() / "app-caches"
    build_small_caches(root)
    return root


def oracle_captions(cache_path: Path, image, mask, *, k: int, index: int | None = None,
                    one_per_label: bool = False) -> list[tuple[int, str, float]]:
    """(rank, label, score) of the top k for a painted query, computed with the library alone.

    The expected answer for the app's tests, independent of the app's handlers: the query's features
    are the cached row `index` (a dataset image, excluded from its results) or extracted with
    `vfs.FeatureExtractor` (an upload); the mask goes onto the grid with `vfs.mask_to_grid` through
    the cache's own preprocessing; `one_per_label` keeps the best image of each label.
    """
    import numpy as np
    from PIL import Image

    import vfs

    cache = vfs.open_cache(cache_path)
    preprocess = cache.meta.make_preprocess()
    if index is not None:
        query = np.asarray(cache[index:index + 1], dtype=np.float32)[0]  # (C, h, w)
    else:
        model = vfs.load_model(cache.meta.model)
        extractor = vfs.FeatureExtractor(model.module, cache.meta.layer, preprocess=preprocess)
        query = np.asarray(extractor(Image.fromarray(image)), dtype=np.float32)[0]  # (C, h, w)
    weights = vfs.mask_to_grid(mask, tuple(cache.shape[-2:]), preprocess=preprocess)  # (h, w)
    exclude = [] if index is None else [index]
    matches = vfs.search(query, weights, cache, k=cache.shape[0] if one_per_label else k, exclude=exclude)
    labels = [cache.label_names[int(cache.labels[m.index])] for m in matches]
    if one_per_label:
        firsts = [i for i, label in enumerate(labels) if label not in labels[:i]]
        matches, labels = [matches[i] for i in firsts][:k], [labels[i] for i in firsts][:k]
    return [(rank, label, m.score) for rank, (label, m) in enumerate(zip(labels, matches), start=1)]


def check_captions(captions: list[str], expected: list[tuple[int, str, float]]) -> None:
    """Captions 'rank · score · label' (score to 3 decimals) say the expected (rank, label, score)."""
    import re

    shown = []
    for caption in captions:
        parts = re.fullmatch(r"(?P<rank>\d+) · (?P<score>-?\d\.\d{3}) · (?P<label>.+)", caption.strip())
        assert parts, caption
        shown.append((int(parts["rank"]), parts["label"], float(parts["score"])))
    assert [(rank, label) for rank, label, _ in shown] == [(rank, label) for rank, label, _ in expected]
    for (_, _, score), (_, _, exact) in zip(shown, expected):
        assert abs(score - exact) <= 0.0005 + 1e-6, (shown, expected)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, *, timeout: float = 180) -> None:
    """Poll `url/gradio_api/info` until it answers 200; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/gradio_api/info", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)  # polling interval, not a wait for readiness
    raise TimeoutError(f"the app at {url} did not answer /gradio_api/info within {timeout:.0f} s")


@contextmanager
def running_app(cache_dir: Path, *, log_path: Path | None = None, extra_args: tuple[str, ...] = ()):
    """`python -m app` on a free port over `cache_dir` (no default build, no Hub); yields its URL.

    Gradio checks at start that its page answers within 3 s and exits when it does not (on a busy
    machine it may not): the app counts as started once it printed that the check passed, and a
    start that died is tried again, up to 3 times.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False", "VFS_HUB": "0"}
    log_path = log_path or Path(tempfile.mkdtemp(prefix="vfs-app-")) / "server.log"
    for attempt in range(3):
        port = free_port()
        command = [sys.executable, "-m", "app", "--port", str(port), "--cache-dir", str(cache_dir),
                   "--no-default", "--no-hub", *extra_args]
        with open(log_path, "w") as log:
            process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, process)
            deadline = time.monotonic() + 60  # gradio's check gives up after 5 tries of 3 s
            while process.poll() is None and GRADIO_STARTED not in log_path.read_text():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.25)  # polling interval, not a wait for readiness
            if process.poll() is None:
                break
        except (RuntimeError, TimeoutError):
            if attempt == 2:
                _stop(process)
                raise
        _stop(process)
    else:
        raise RuntimeError(f"the app did not start in 3 attempts; its log: {log_path}")
    try:
        yield url
    finally:
        _stop(process)


GRADIO_STARTED = "To create a public link"  # what gradio prints once its start-up check passed


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# Debian chromium driven by Playwright (never `playwright install`); flags keep it off the network.
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "tests" / "artifacts"  # screenshots kept after a run (ignored by git)
BROWSER_MARKS = [  # `pytestmark` of a browser test module
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian chromium (apt-get install chromium); scripts/test installs it",
    ),
]
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextmanager
def browser_page(*, timeout_ms: int = 90_000):
    """A fresh chromium page, 1400 x 1100, that waits up to `timeout_ms` for anything it is asked."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(timeout_ms)
            yield page
        finally:
            browser.close()


def wait_for_first_image(page, selector: str) -> None:
    """Wait until the editor at `selector`, empty so far, shows its first image and can take a stroke.

    The editor loads a picked image for ~2.5 s here (software WebGL); a stroke made meanwhile is lost
    with the old canvas. Its upload placeholder (`.empty`) goes when the image is in.
    """
    page.wait_for_function(
        f"document.querySelector('{selector} canvas') && !document.querySelector('{selector} .empty')"
    )


def wait_until_still(locator, *, looks: int = 3, interval_ms: int = 300, timeout_s: float = 30.0) -> None:
    """Wait until `locator`'s box and pixels stay the same for `looks` looks in a row.

    The editor re-fits (zooms) and re-draws a newly loaded image for a moment after it shows it: a stroke
    begun then starts elsewhere on the image than the same stroke a moment later (seen once in CI: a
    stroke's first segment drawn from another place, so it covered 1.3x the area).
    """
    deadline = time.monotonic() + timeout_s
    last, same = None, 0
    while same < looks and time.monotonic() < deadline:
        look = (str(locator.bounding_box()), hashlib.sha256(locator.screenshot()).hexdigest())
        same = same + 1 if look == last else 1
        last = look
        locator.page.wait_for_timeout(interval_ms)


def paint(page, selector: str, points: list[tuple[float, float]]) -> None:
    """Drag the brush through `points` (fractions of the canvas box): few waypoints, each move ~1 s here."""
    canvas = page.locator(f"{selector} canvas").first
    canvas.scroll_into_view_if_needed()  # the mouse only reaches what is inside the viewport
    wait_until_still(canvas)
    box = canvas.bounding_box()
    x0, y0 = box["x"] + box["width"] * points[0][0], box["y"] + box["height"] * points[0][1]
    page.mouse.move(x0, y0)
    page.mouse.down()
    for fx, fy in points[1:]:
        page.mouse.move(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy, steps=2)
    page.mouse.up()


def paint_and_search(page, points: list[tuple[float, float]], *, tries: int = 3) -> None:
    """Paint `points` on `#vfs-editor`, press Search and wait for a new summary; paint again when the
    stroke was lost (made while the editor was still loading its image: "mask is empty")."""
    for _ in range(tries):
        before = page.locator("#vfs-summary").inner_text()
        paint(page, "#vfs-editor", points)
        page.locator("#vfs-search").click()
        page.wait_for_function(
            "([before]) => [...document.querySelectorAll('.toast-body')].some(t => t.innerText.includes("
            "'mask is empty')) || ((document.querySelector('#vfs-summary')?.innerText || '') !== before"
            " && document.querySelectorAll('#vfs-results .caption-label').length > 0)",
            arg=[before],
        )
        if not page.locator(".toast-body", has_text="mask is empty").count():
            return
        page.locator(".toast-close").first.click()
    raise AssertionError(f"{tries} strokes in a row were lost: the editor never took its image")
