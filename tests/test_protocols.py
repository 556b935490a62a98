"""The papers' figures as commands (`python -m vfs experiment v1-fig6 ...`), queries from another set,
and any model from the command line (`--module pkg.mod:factory`), on tiny planted canvases."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from vfs.__main__ import main
from vfs.analysis import metrics

TINYNET = '''
import torch
from vfs.models.loading import load_model
from vfs.models.preprocess import Preprocess

def make():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 4, stride=4), torch.nn.ReLU())
    return load_model("tiny", module=net, preprocess=Preprocess(size=32, crop=32, mean=(0.0,) * 3, std=(1.0,) * 3))

def broken():
    return 42
'''


def canvases(folder, count: int, *, seed: int, empty: int = 0) -> None:
    """32x32 canvases on a dark or light background (the domains) holding a bright square or bar (the
    labels) with its box; the first `empty` canvases hold nothing (no label, no box)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    rows = []
    for n in range(count):
        domain = ("dark", "light")[n % 2]
        canvas = np.full((32, 32, 3), 30 if domain == "dark" else 90, np.uint8)
        row = {"path": f"{n:03d}.png", "label": "", "domain": domain, "box": ""}
        if n >= empty:
            label = ("square", "bar")[(n // 2) % 2]
            height, width = (12, 12) if label == "square" else (6, 20)
            top, left = int(rng.integers(0, 32 - height)), int(rng.integers(0, 32 - width))
            canvas[top : top + height, left : left + width] = (250, 200, 40) if label == "square" else (40, 200, 250)
            row |= {"label": label, "box": f"{top} {left} {top + height} {left + width}"}
        Image.fromarray(canvas).save(folder / row["path"])
        rows.append(row)
    with (folder / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "domain", "box"])
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A searched cache (24 canvases, 4 empty) and a query cache (8 other canvases), both built with
    `python -m vfs index --module tinynet:make`."""
    from vfs.cache.commands import index_command

    root = tmp_path_factory.mktemp("protocols")
    (root / "tinynet.py").write_text(TINYNET)
    canvases(root / "searched", 24, seed=0, empty=4)
    canvases(root / "queries", 8, seed=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.syspath_prepend(str(root))
        for name in ("searched", "queries"):
            assert index_command(["--module", "tinynet:make", "--layer", "1", "--dataset", f"folder:{root / name}",
                                  "--out", str(root / f"{name}-cache"), "--threads", "1"]) == 0
        yield root


def run(world, monkeypatch, *argv) -> int:
    monkeypatch.chdir(world)
    monkeypatch.syspath_prepend(str(world))
    return main(["experiment", *(str(a) for a in argv)])  # as `python -m vfs experiment` runs: errors exit 1


def test_index_builds_with_a_module_from_the_command_line(world):
    from vfs.cache.reader import open_cache
    from vfs.models.arguments import load_factory

    cache = open_cache(world / "searched-cache")
    assert cache.meta.model == "tiny" and cache.shape == (24, 6, 8, 8)
    assert cache.meta.weights_id == load_factory("tinynet:make")().weights_id


def test_v1_fig8_counts_matches_without_a_box_as_misses(world, monkeypatch, capsys):
    from vfs.cache.reader import open_cache
    from vfs.models.arguments import load_factory

    out = world / "fig8"
    assert run(world, monkeypatch, "v1-fig8", world / "searched-cache", "--queries", f"folder:{world / 'queries'}",
               "--module", "tinynet:make", "--k", "3", "--bins", "0,100,200,inf", "--out", out) == 0
    assert "top1 IoU" in capsys.readouterr().out
    record = json.loads((out / "v1-fig8.json").read_text())
    assert (out / "v1-fig8.png").stat().st_size > 1000 and "| features |" in (out / "v1-fig8.md").read_text()
    # the oracle: the same queries, features and search through the metric functions directly
    cache = open_cache(world / "searched-cache")
    monkeypatch.syspath_prepend(str(world))
    model = load_factory("tinynet:make")()
    from vfs.datasets import open_dataset
    from vfs.models.features import FeatureExtractor

    data = open_dataset(f"folder:{world / 'queries'}")
    items = [data[i] for i in range(len(data))]
    features = FeatureExtractor(model.module, "1", preprocess=cache.meta.make_preprocess())([i.image for i in items])
    features = features.half().float().numpy()
    sizes = np.array([[32, 32]] * 8)
    nb = metrics.neighbours(cache, range(8), k=3, boxes=[i.boxes[0] for i in items], image_sizes=sizes,
                            preprocess=cache.meta.make_preprocess(), query_source=features)
    ious = metrics.top_k_ious(nb, cache.boxes, cache.image_sizes, (8, 8), preprocess=cache.meta.make_preprocess())
    empty = set(range(4))
    misses = sum(int(i) in empty for i in nb.indices[:, 0])
    total = record["rows"][-1]
    assert total["bin"] == "all" and total["queries"] == 8 and total["top1 misses"] == misses
    assert total["top3 misses"] == sum(int(i) in empty for i in nb.indices.ravel())
    # planted: the top 24 of 24 canvases holds all 4 empty ones for each of the 8 queries
    assert run(world, monkeypatch, "v1-fig8", world / "searched-cache", "--queries", world / "queries-cache",
               "--k", "24", "--out", world / "fig8-all") == 0
    assert json.loads((world / "fig8-all" / "v1-fig8.json").read_text())["rows"][-1]["top24 misses"] == 32
    assert total["top1 IoU"] == pytest.approx(ious[:, 0].mean())
    assert total["top3 IoU"] == pytest.approx(ious.mean())
    assert total["top1 IoU se"] == pytest.approx(ious[:, 0].std(ddof=1) / np.sqrt(8))
    assert sum(row["queries"] for row in record["rows"][:-1]) == 8


def test_v1_fig6_of_a_cache_against_itself_shares_all(world, monkeypatch):
    out = world / "fig6"
    cache = world / "searched-cache"
    assert run(world, monkeypatch, "v1-fig6", cache, cache, "--queries", "0", "--k", "3", "--out", out) == 0
    rows = json.loads((out / "v1-fig6.json").read_text())["rows"]
    assert rows[1]["shared@3 with reference"] == 3.0 and rows[0]["distinct@3"] == rows[1]["distinct@3"]
    assert rows[0]["queries"] == 24 and len(rows[0]["distinct@3 ci95"]) == 2
    assert (out / "v1-fig6.png").is_file()


def test_queries_from_another_cache_equal_queries_from_its_dataset(world, monkeypatch):
    from_cache, from_spec = world / "labels-cache.json", world / "labels-spec.json"
    common = ["labels", world / "searched-cache", "--k", "3"]
    assert run(world, monkeypatch, *common, "--queries", world / "queries-cache", "--json", from_cache) == 0
    assert run(world, monkeypatch, *common, "--queries", f"folder:{world / 'queries'}", "--module", "tinynet:make",
               "--json", from_spec) == 0
    a, b = json.loads(from_cache.read_text())["rows"], json.loads(from_spec.read_text())["rows"]
    assert a[-1]["queries"] == 8 and a[-1]["precision@3"] == pytest.approx(b[-1]["precision@3"])


def test_v2_protocols_write_their_figures(world, monkeypatch):
    out = world / "v2"
    assert run(world, monkeypatch, "v2-fig2b", world / "searched-cache", "--queries", world / "queries-cache",
               "--boxes", "--k", "2", "--out", out) == 0
    rows = json.loads((out / "v2-fig2b.json").read_text())["rows"]
    assert [row["top k"] for row in rows] == ["overall", "distinct domains"]
    assert rows[1]["domains in top 2"] == 2.0  # one image per domain
    assert rows[0]["score 1"] >= rows[1]["score 1"] - 1e-6 and rows[0]["score 2"] >= rows[1]["score 2"] - 1e-6
    assert run(world, monkeypatch, "v2-fig3", world / "searched-cache", "--queries", world / "queries-cache",
               "--out", out) == 0
    record = json.loads((out / "v2-fig3.json").read_text())
    assert [row["query"] for row in record["rows"]] == ["region", "whole image"]
    assert 0.0 <= record["rows"][0]["AUROC"] <= 1.0 and (out / "v2-fig3.png").is_file()
    for row in record["rows"]:  # the pooled AUROC has its standard error, queries as clusters
        assert 0.0 <= row["pooled AUROC"] <= 1.0 and row["pooled AUROC se"] > 0.0
        low, high = row["pooled AUROC ci95"]
        assert low <= row["pooled AUROC"] <= high
    assert "pooled AUROC" in (out / "v2-fig3.md").read_text()


def test_a_model_that_cannot_be_rebuilt_is_explained(world, monkeypatch, capsys):
    spec = f"folder:{world / 'queries'}"
    assert run(world, monkeypatch, "labels", world / "searched-cache", "--queries", spec) == 1
    assert "cannot rebuild the model of the cache" in capsys.readouterr().err
    assert run(world, monkeypatch, "labels", world / "searched-cache", "--queries", spec,
               "--module", "tinynet:broken") == 1
    assert "must return a torch nn.Module" in capsys.readouterr().err
    assert run(world, monkeypatch, "labels", world / "searched-cache", "--queries", spec,
               "--module", "tinynet:nothing") == 1
    assert "no callable 'nothing'" in capsys.readouterr().err
    assert run(world, monkeypatch, "labels", world / "searched-cache", "--queries", spec,
               "--module", "tinynet:make", "--weights", "random") == 1  # other weights than the cache's
    assert "cannot rebuild" in capsys.readouterr().err


def test_search_command_takes_the_model_from_the_command_line(world, monkeypatch, capsys):
    from vfs.demo import search_command

    monkeypatch.chdir(world)
    monkeypatch.syspath_prepend(str(world))
    assert search_command(["--module", "tinynet:make", "--layer", "1", "--query", "chelsea", "--k", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("tiny (") and "layer 1" in printed


def test_a_module_build_killed_at_start_prints_a_resume_command_that_resumes(world, tmp_path):
    """`index --module pkg.mod:factory --weights PATH`, killed as it starts: the unfinished cache's
    message gives the command that resumes it (the module and the weights, not `--model NAME`)."""
    import shlex
    import subprocess
    import sys
    from pathlib import Path

    import torch

    from vfs.cache.reader import open_cache
    from vfs.errors import CacheIncompleteError
    from vfs.models.loading import file_id

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "tinynet.py").write_text(TINYNET)
    with torch.no_grad():  # other weights than make()'s own, so a resume without --weights would differ
        state = {k: v + 0.5 for k, v in torch.nn.Sequential(torch.nn.Conv2d(3, 6, 4, stride=4)).state_dict().items()}
    torch.save(state, tmp_path / "my weights.pt")
    out = tmp_path / "cache $HOME"
    argv = ["--module", "tinynet:make", "--weights", "my weights.pt", "--layer", "1", "--dataset",
            f"folder:{world / 'searched'}", "--out", str(out), "--threads", "1", "--shard-size", "8"]
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    died = subprocess.run([sys.executable, "-c", f"""
import os, signal
import vfs.cache.build as cb
from vfs.cache.commands import index_command
cb._create_digests = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # killed while creating arrays
index_command({argv!r})
"""], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert died.returncode == -9, died.stderr
    with pytest.raises(CacheIncompleteError, match="resume with") as raised:
        open_cache(out)
    command = str(raised.value).split("resume with: ", 1)[1].removesuffix(" (same command)")
    resume = shlex.split(command)
    assert resume[:3] == ["python", "-m", "vfs"] and "--model" not in resume
    assert resume[resume.index("--module") + 1] == "tinynet:make"
    assert resume[resume.index("--weights") + 1] == str(tmp_path / "my weights.pt")
    resumed = subprocess.run([sys.executable, *resume[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    cache = open_cache(out)
    cache.verify()
    assert cache.meta.weights_id == file_id(tmp_path / "my weights.pt") and cache.meta.count == 24
    assert cache.meta.model == "tiny"  # the name make() gives it
