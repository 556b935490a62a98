"""`import vfs` stays light (no gradio, no huggingface_hub) and every public name resolves."""

from __future__ import annotations

import subprocess
import sys

import vfs

LIGHT = """
import sys
import vfs
vfs.Preprocess, vfs.load_model, vfs.FeatureExtractor, vfs.mask_to_grid, vfs.search
heavy = sorted(name for name in ("gradio", "huggingface_hub") if name in sys.modules)
print(",".join(heavy))
"""


def test_import_vfs_leaves_gradio_and_the_hub_out():
    # a fresh interpreter, so that other tests' imports do not count
    result = subprocess.run([sys.executable, "-c", LIGHT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_every_public_name_resolves():
    missing = []
    for name in vfs.__all__:
        try:
            getattr(vfs, name)
        except (AttributeError, ImportError) as error:
            missing.append(f"{name}: {error}")
    assert not missing
    assert len(set(vfs.__all__)) == len(vfs.__all__) and set(vfs.__all__) <= set(dir(vfs))


CALLABLE = """
import vfs
from vfs.window_search import Match  # importing the defining module first must not shadow anything
vfs.Match, vfs.BestWindows
import vfs.features, vfs.masks, vfs.cache, vfs.cache_build, vfs.models
bad = [name for name in ("search", "best_windows", "load_model", "mask_to_grid", "open_cache", "build_cache")
       if not callable(getattr(vfs, name)) or type(getattr(vfs, name)).__name__ == "module"]
print(",".join(bad))
"""


def test_public_functions_stay_functions_after_their_modules_are_imported():
    # a submodule named like a public function would replace it on `vfs` once imported
    result = subprocess.run([sys.executable, "-c", CALLABLE], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
