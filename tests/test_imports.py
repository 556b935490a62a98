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
