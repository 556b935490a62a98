"""One exit code per kind of failure across `python -m vfs` and `python -m hub_caches`: every library
error (a `VFSError`) exits with `vfs.cli.LIBRARY_ERROR` and prints its message without a traceback; a
bad command line exits with argparse's 2 (`vfs.cli.USAGE_ERROR`). Each command runs in its own process,
as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vfs.cli import LIBRARY_ERROR, USAGE_ERROR

REPO = Path(__file__).resolve().parents[1]
MISSING = "/nonexistent/vfs-cache"

# (argv after `python -m`, a phrase the message must hold): bad input a user can type, one per command
LIBRARY_ERRORS = [
    (["vfs", "verify", MISSING], "no feature cache at"),
    (["vfs", "layers", "resnet5"], "Did you mean 'resnet50'"),
    (["vfs", "search", "--box", "1,2,3"], "is not four numbers"),
    (["vfs", "search", "--query", "nope"], "no photo 'nope'"),
    (["vfs", "search", MISSING, "--index", "0"], "no feature cache at"),
    (["vfs", "experiment", "labels", MISSING], "no feature cache at"),
    (["vfs", "index", "--layer", "blocks.4", "--dataset", "nope:foo", "--out", "OUT"], "unknown dataset spec"),
    (["vfs", "index-coarse", MISSING], "no feature cache at"),
    (["hub_caches", "list", "--catalog", "/nonexistent/catalog.json"], "cannot read the cache catalog"),
    (["hub_caches", "pull", "no-such-cache"], "no cache called 'no-such-cache'"),
    (["hub_caches", "push", MISSING, "--repo", "org/name"], "no feature cache at"),
]
USAGE_ERRORS = [
    ["vfs", "search", "--k", "0"],  # positive_int refuses it
    ["vfs", "index", "--layer", "blocks.4"],  # --dataset and --out are required
    ["vfs", "no-such-command"],
    ["hub_caches", "push"],
]


def run(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(REPO)}
    env.pop("HUB_CACHES_CATALOG", None)
    argv = [str(tmp_path / "out") if arg == "OUT" else arg for arg in argv]
    return subprocess.run([sys.executable, "-m", *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.slow  # one process per command: about 3 s each
def test_every_library_error_exits_1_with_its_message_and_no_traceback(tmp_path):
    assert (LIBRARY_ERROR, USAGE_ERROR) == (1, 2)  # as documented in README.md and vfs/cli.py
    for argv, phrase in LIBRARY_ERRORS:
        result = run(argv, tmp_path)
        where = f"python -m {' '.join(argv)}: exit {result.returncode}\n{result.stderr}"
        assert result.returncode == LIBRARY_ERROR, where
        assert result.stderr.startswith("error: ") and phrase in result.stderr, where
        assert "Traceback" not in result.stderr, where


@pytest.mark.slow
def test_a_bad_command_line_exits_2_with_the_usage(tmp_path):
    for argv in USAGE_ERRORS:
        result = run(argv, tmp_path)
        where = f"python -m {' '.join(argv)}: exit {result.returncode}\n{result.stdout}{result.stderr}"
        assert result.returncode == USAGE_ERROR, where
        assert "usage: python -m" in result.stdout + result.stderr and "Traceback" not in result.stderr, where
