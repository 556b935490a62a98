"""`python -m vfs search` on the bundled photos: skimage's `cat` is the same photo as `chelsea`, a planted copy."""

from __future__ import annotations

import pytest

from vfs.demo import search_command


@pytest.mark.slow  # about 10-20 s: loads the model and extracts 19 photos
def test_search_finds_the_planted_copy_of_the_query(capsys):
    assert search_command(["--query", "chelsea", "--box", "40,120,200,300", "--k", "3"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    assert rows[0][1] == "cat" and float(rows[0][2]) > 0.999  # the identical photo, at the same place
    assert "chelsea" not in [row[1] for row in rows]  # the query itself is excluded
    assert all(float(row[2]) < 0.9 for row in rows[1:])


def test_bad_input_exits_with_the_library_error_code_and_a_message(capsys):
    from vfs.__main__ import main
    from vfs.cli import LIBRARY_ERROR

    assert main(["search", "--box", "1,2,3"]) == LIBRARY_ERROR
    assert "top,left,bottom,right" in capsys.readouterr().err
    assert main(["search", "--query", "nope"]) == LIBRARY_ERROR
    assert "chelsea" in capsys.readouterr().err
    assert main(["search", "--box", "0,0,300,20"]) == LIBRARY_ERROR  # chelsea is 300x451: a left strip is cropped away
    assert "outside the centre crop" in capsys.readouterr().err
