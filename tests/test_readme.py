"""Every python and bash snippet in README.md runs as written, in order, in one scratch folder.

A snippet that cannot run here says why on the line before its fence, and is skipped with that reason:

    <!-- not run: needs a Hub account -->
    ```bash
    python -m hub_caches push ...
    ```

Snippets run from a temporary folder (so `caches/...` lands there, not in the checkout), offline,
with `VFS_CACHE_DIR` pointing into it; a later snippet may use what an earlier one wrote.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNNERS = {"python": [sys.executable, "-c"], "bash": ["bash", "-euo", "pipefail", "-c"]}
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<language>[\w+-]*)[ \t]*$")
NOT_RUN = re.compile(r"^\s*<!--\s*not run:(?P<reason>.*?)-->\s*$")


@dataclass(frozen=True)
class Snippet:
    line: int  # 1-based line of the opening fence
    language: str  # the fence's info string ("python", "bash", "" ...)
    code: str  # the body, its indentation removed
    not_run: str | None  # the reason given in a `<!-- not run: ... -->` just before the fence


def snippets(text: str) -> list[Snippet]:
    """The fenced code blocks of a Markdown text, in order."""
    lines = text.splitlines()
    found, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        end = next((j for j in range(index + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise ValueError(f"line {index + 1}: the code fence is never closed")
        before = next((lines[j] for j in range(index - 1, -1, -1) if lines[j].strip()), "")
        marker = NOT_RUN.match(before)
        reason = marker["reason"].strip() if marker else None
        if marker and not reason:
            raise ValueError(f"line {index + 1}: `<!-- not run: -->` needs a reason after the colon")
        code = textwrap.dedent("\n".join(lines[index + 1:end]))
        found.append(Snippet(index + 1, opening["language"], code, reason))
        index = end + 1
    return found


def test_snippets_are_found_with_their_reasons():
    text = textwrap.dedent("""\
        ```python
        print(1)
        ```

        <!-- not run: needs a cluster -->

        ```bash
        dask-scheduler
        ```
        - a list item:

          ```bash
          echo indented
          ```
        ```text
        not code
        ```
        """)
    found = snippets(text)
    assert [(s.line, s.language, s.code, s.not_run) for s in found] == [
        (1, "python", "print(1)", None),
        (7, "bash", "dask-scheduler", "needs a cluster"),
        (12, "bash", "echo indented", None),
        (15, "text", "not code", None),
    ]
    with pytest.raises(ValueError, match="needs a reason"):
        snippets("<!-- not run: -->\n```bash\nls\n```\n")
    with pytest.raises(ValueError, match="never closed"):
        snippets("```bash\nls\n")


README = [s for s in snippets((REPO / "README.md").read_text()) if s.language in RUNNERS]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("readme")


@pytest.mark.slow  # loads a model per snippet; about 10-40 s in all on an idle machine
@pytest.mark.parametrize("snippet", README, ids=[f"README.md:{s.line}" for s in README])
def test_readme_snippet_runs(snippet: Snippet, scratch: Path):
    if snippet.not_run:
        pytest.skip(f"README.md:{snippet.line} is marked not run: {snippet.not_run}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "VFS_CACHE_DIR": str(scratch / "vfs-cache"), "HF_HUB_OFFLINE": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}  # `python` is this one
    result = subprocess.run([*RUNNERS[snippet.language], snippet.code], cwd=scratch, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (
        f"README.md:{snippet.line} ({snippet.language}) exited {result.returncode}:\n"
        f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
