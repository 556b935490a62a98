"""Shared fixtures, kept small.

- `lite0`: the bundled ImageNet `efficientnet_lite0` (`vfs.LoadedModel`), loaded once per session.
- `rng`: a seeded `numpy.random.Generator` (seed 0), fresh for each test.
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
