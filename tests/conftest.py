"""Shared fixtures, kept small.

- `lite0`: the bundled ImageNet `efficientnet_lite0` (`vfs.LoadedModel`), loaded once per session.
- `rng`: a seeded `numpy.random.Generator` (seed 0), fresh for each test.
- `app_caches`: the small real caches of `tests/app_server.py`, built once per session.
- `app_url`: `python -m app` over them, one server per test module (its log in the module's temp folder).
- `page`: a fresh Debian chromium page (Playwright) for each test.
"""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def lite0():
    import vfs

    return vfs.load_model("efficientnet_lite0")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def app_caches(tmp_path_factory):
    from app_server import shared_caches

    return shared_caches(tmp_path_factory)


@pytest.fixture(scope="module")
def app_url(app_caches, tmp_path_factory, request):
    from app_server import running_app

    log = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]) / "server.log"
    with running_app(app_caches, log_path=log) as url:
        yield url


@pytest.fixture
def page(app_url):
    from app_server import browser_page

    with browser_page() as page:
        yield page
