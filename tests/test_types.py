"""mypy, strict (settings in pyproject.toml), finds nothing in vfs's public modules, and the ways users
call them (tests/typing_sources.py) type-check. mypy is pinned in requirements-dev.txt."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# checked strictly: every module of `vfs` (a new module is strict from its first commit), and the ways
# users call the library (tests/typing_sources.py)
STRICT = ["vfs", "tests/typing_sources.py"]


def test_mypy_strict_finds_nothing():
    pytest.importorskip("mypy", reason="mypy is in requirements-dev.txt")
    assert (REPO / "vfs" / "py.typed").exists()  # without it, type checkers ignore vfs's annotations
    result = subprocess.run([sys.executable, "-m", "mypy", *STRICT], cwd=REPO, capture_output=True,
                            text=True, check=False, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
