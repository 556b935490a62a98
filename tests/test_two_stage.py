"""Two-stage search over a coarse index: exact re-scoring, recall on a planted case, the index's ties to its cache.

Oracles: every returned score equals the exact score of its window (vfs.best_windows on that image,
and a float64 loop); the result equals the exact top k among the candidates the index picks (what
bench/two_stage.py computes for its recall table); planted copies of the query region are all found
(recall 1.0); an interrupted index build resumed == an uninterrupted one, bit for bit.
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import torch

import vfs
from vfs.cache.arrays import write_cache
from vfs.cache.coarse import build_coarse_index, has_coarse_index, open_coarse_index
from vfs.errors import CacheCorruptError, CacheError, CacheIncompleteError, CacheMismatchError, SearchError
from vfs.retrieval.two_stage import coarse_scores, search_two_stage, top_indices

N, C, H, W, SHARD = 300, 24, 5, 6, 64
MASKS = ("full", "cell", "box", "L")


def low_rank_features(rng, n: int = N) -> np.ndarray:
    """(n, H, W, C) float16 features with most energy in a few directions, like real layers."""
    strong = rng.standard_normal((n, H, W, 6)) @ rng.standard_normal((6, C))  # (n, H, W, C)
    return (strong + 0.3 * rng.standard_normal((n, H, W, C))).astype(np.float16)


def make_cache(path, features: np.ndarray, **options):
    blocks = [features[start:start + SHARD] for start in range(0, len(features), SHARD)]
    return write_cache(blocks, path, count=len(features), grid=features.shape[1:3], channels=features.shape[3],
                       shard_size=SHARD, **options)


def weights_of(kind: str) -> torch.Tensor:
    out = torch.zeros(H, W)
    if kind == "full":
        out[:] = 1
    elif kind == "cell":
        out[H - 1, 0] = 1
    elif kind == "box":
        out[1:3, 2:5] = 1
    elif kind == "L":
        out[0:3, 1] = 1
        out[2, 1:4] = 1
    return out


def window_cosine(query: np.ndarray, weights: np.ndarray, image: np.ndarray, row: int, col: int) -> float:
    """The float64 loop: cosine of the weighted query box with the weighted window at (row, col)."""
    rows, cols = np.nonzero(weights)
    top, left = rows.min(), cols.min()
    dot = q_norm = x_norm = 0.0
    for i, j in zip(rows, cols):
        w2 = float(weights[i, j]) ** 2
        q, x = query[:, i, j].astype(np.float64), image[:, row + i - top, col + j - left].astype(np.float64)
        dot, q_norm, x_norm = dot + w2 * q @ x, q_norm + w2 * q @ q, x_norm + w2 * x @ x
    return dot / np.sqrt(q_norm * x_norm)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    path = make_cache(tmp_path_factory.mktemp("two_stage") / "cache", low_rank_features(np.random.default_rng(0)))
    build_coarse_index(path, dims=6, sample=100, progress=False)
    return path


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize("mask", MASKS)
def test_returned_scores_are_the_exact_scores_of_the_returned_windows(indexed, in_memory, mask):
    cache = vfs.open_cache(indexed, in_memory=in_memory)
    index = open_coarse_index(cache)
    weights = weights_of(mask)
    for image in (0, 77, 299):
        query = torch.from_numpy(cache[image].astype(np.float32))  # (C, H, W)
        result = search_two_stage(query, weights, cache, index=index, candidates=40, k=8, exclude=[image])
        assert len(result.matches) == 8 and image not in [m.index for m in result.matches]
        exact = vfs.best_windows(query, weights, cache)
        for match in result.matches:
            assert (match.score, match.row, match.col) == (exact.scores[match.index], exact.rows[match.index],
                                                           exact.cols[match.index])
            oracle = window_cosine(query.numpy(), weights.numpy(), cache[match.index].astype(np.float32),
                                   match.row, match.col)
            assert abs(match.score - oracle) < 1e-5
        # the same as the bench's simulation: the exact top k among the M images the index ranks best
        approximate = vfs.best_windows(index.project(query), weights, index).scores.copy()
        approximate[image] = -np.inf
        picked = top_indices(approximate, 40)
        scores = exact.scores.copy()
        expected = picked[top_indices(scores[picked], 8)]
        assert sorted(m.index for m in result.matches) == sorted(expected.tolist())
        assert [m.score for m in result.matches] == sorted(scores[expected].tolist(), reverse=True)


@pytest.mark.parametrize("numba", [True, False])
@pytest.mark.parametrize("mask", MASKS)
def test_stage_one_scores_are_best_windows_over_the_index(indexed, monkeypatch, numba, mask):
    """coarse_scores (one fused call over the whole index, or without numba) == vfs.best_windows over the
    index, for every image and for a subset."""
    monkeypatch.setattr("vfs.retrieval.kernels.USE_NUMBA", numba)
    cache = vfs.open_cache(indexed)
    index = open_coarse_index(cache)
    query, weights = index.project(torch.from_numpy(cache[11].astype(np.float32))), weights_of(mask)
    expected = vfs.best_windows(query, weights, index)
    indices, scores = coarse_scores(query, weights, index)
    np.testing.assert_array_equal(indices, np.arange(N))
    np.testing.assert_allclose(scores, expected.scores, atol=1e-6)
    subset = [299, 3, 150, 151]
    indices, scores = coarse_scores(query, weights, index, subset=subset)
    np.testing.assert_array_equal(indices, sorted(subset))
    np.testing.assert_allclose(scores, expected.scores[sorted(subset)], atol=1e-6)


def test_all_candidates_equals_exact_search(indexed):
    cache = vfs.open_cache(indexed)
    query, weights = torch.from_numpy(cache[5].astype(np.float32)), weights_of("box")
    result = search_two_stage(query, weights, cache, candidates=N, k=20, per_image=2)
    assert result.matches == vfs.search(query, weights, cache, k=20, per_image=2)
    assert "M=300" in result.label and "approximate" in result.label


def test_planted_copies_are_all_found(tmp_path, rng):
    """Copies of the query region planted in 12 noise images: two-stage returns all 12, with score 1."""
    features = rng.standard_normal((N, H, W, C)).astype(np.float16)  # (N, H, W, C)
    box = features[0, 1:3, 2:5].copy()  # (2, 3, C), the region painted on image 0
    planted = rng.choice(np.arange(1, N), 12, replace=False)
    for number, image in enumerate(planted):
        row, col = number % (H - 1), number % (W - 2)
        features[image, row:row + 2, col:col + 3] = box
    path = make_cache(tmp_path / "planted", features)
    build_coarse_index(path, dims=4, sample=N, progress=False)
    cache = vfs.open_cache(path)
    query = torch.from_numpy(cache[0].astype(np.float32))
    result = search_two_stage(query, weights_of("box"), cache, candidates=30, k=12, exclude=[0])
    assert sorted(m.index for m in result.matches) == sorted(planted.tolist())  # recall@12 = 1.0
    np.testing.assert_allclose([m.score for m in result.matches], 1.0, atol=1e-6)
    exact = vfs.search(query, weights_of("box"), cache, k=12, exclude=[0])
    assert sorted(m.index for m in exact) == sorted(planted.tolist())


def test_index_is_tied_to_its_cache(tmp_path, rng):
    features = low_rank_features(rng, 130)
    first = make_cache(tmp_path / "a", features)
    build_coarse_index(first, dims=4, progress=False)
    assert has_coarse_index(vfs.open_cache(first))
    other = make_cache(tmp_path / "b", low_rank_features(rng, 130), name="other")
    shutil.copytree(first / "coarse", other / "coarse")
    with pytest.raises(CacheMismatchError, match="another cache.*index-coarse"):
        open_coarse_index(vfs.open_cache(other))
    assert not has_coarse_index(vfs.open_cache(other))
    kept = tmp_path / "kept"
    shutil.copytree(first / "coarse", kept)
    time.sleep(1.1)  # build times have one-second resolution
    make_cache(first, features, overwrite=True)  # the same cache, built again
    shutil.copytree(kept, first / "coarse")
    with pytest.raises(CacheMismatchError, match="earlier build"):
        open_coarse_index(vfs.open_cache(first))
    with pytest.raises(CacheMismatchError, match="--overwrite"):
        build_coarse_index(first, dims=4, progress=False)
    build_coarse_index(first, dims=4, progress=False, overwrite=True)
    assert open_coarse_index(vfs.open_cache(first)).meta.dims == 4
    with pytest.raises(CacheMismatchError, match="dims=4"):
        build_coarse_index(first, dims=5, progress=False)


def test_resumed_build_equals_an_uninterrupted_one(tmp_path, rng):
    features = low_rank_features(rng)
    whole = make_cache(tmp_path / "whole", features)
    build_coarse_index(whole, dims=5, progress=False)
    broken = tmp_path / "broken"
    shutil.copytree(whole, broken)
    shutil.rmtree(broken / "coarse")
    seen = []

    def stop_after_two(fraction: float, message: str) -> None:
        seen.append(message)
        if len(seen) == 2:
            raise KeyboardInterrupt  # as a Ctrl-C between blocks would

    with pytest.raises(KeyboardInterrupt):
        build_coarse_index(broken, dims=5, progress=stop_after_two)
    with pytest.raises(CacheIncompleteError, match=r"2 of 5 blocks.*index-coarse"):
        open_coarse_index(vfs.open_cache(broken))
    messages = []
    build_coarse_index(broken, dims=5, progress=lambda fraction, message: messages.append(message))
    assert messages[0].startswith("3/5") and len(messages) == 3  # only the blocks not written
    resumed, uninterrupted = open_coarse_index(vfs.open_cache(broken)), open_coarse_index(vfs.open_cache(whole))
    np.testing.assert_array_equal(resumed.codes, uninterrupted.codes)
    np.testing.assert_array_equal(resumed.basis, uninterrupted.basis)


def test_a_damaged_index_is_named(indexed, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(indexed, copy)
    block = copy / "coarse" / "codes" / "c" / "2" / "0" / "0" / "0"
    block.write_bytes(block.read_bytes()[:-10])
    with pytest.raises(CacheCorruptError, match="coarse/codes.*c/2/0/0/0"):
        open_coarse_index(vfs.open_cache(copy))


def test_errors_say_what_to_do(indexed, tmp_path, rng):
    cache = vfs.open_cache(indexed)
    query, weights = torch.from_numpy(cache[0].astype(np.float32)), weights_of("full")
    with pytest.raises(SearchError, match="candidates must be a positive integer"):
        search_two_stage(query, weights, cache, candidates=0)
    with pytest.raises(SearchError, match="channels"):
        search_two_stage(query[:5], weights, cache)
    bare = make_cache(tmp_path / "bare", low_rank_features(rng, 70))
    with pytest.raises(CacheError, match="python -m vfs index-coarse"):
        search_two_stage(query, weights, vfs.open_cache(bare))
    with pytest.raises(ValueError, match="dims must be between 1 and"):
        build_coarse_index(bare, dims=C + 1, progress=False)


def test_index_coarse_command(tmp_path, rng, capsys):
    from vfs.__main__ import main

    path = make_cache(tmp_path / "cache", low_rank_features(rng, 100))
    assert main(["index-coarse", str(path), "--dims", "3", "--sample", "50"]) == 0
    assert "coarse index ready" in capsys.readouterr().out
    assert open_coarse_index(vfs.open_cache(path)).meta.dims == 3


# ---- the app: offered for caches with an index, labelled approximate with M


@pytest.fixture(scope="module")
def app_library(tmp_path_factory):
    from app_server import shared_caches

    from app.library import CacheLibrary

    root = tmp_path_factory.mktemp("two_stage_app")
    shutil.copytree(shared_caches(tmp_path_factory) / "fmnist-blocks5", root / "indexed")
    shutil.copytree(shared_caches(tmp_path_factory) / "fmnist-blocks5", root / "plain")
    build_coarse_index(root / "indexed", dims=8, progress=False)
    library = CacheLibrary(root, hub=False)
    titles = {entry.key: entry.title for entry in library.refresh()}
    assert "two-stage" in titles["indexed"] and "two-stage" not in titles["plain"]
    return library


def test_app_two_stage_is_labelled_and_exact_in_its_scores(app_library, tmp_path):
    import csv
    import json

    from app import exports, handlers
    from app.state import SearchOptions, SharedState, decode_state, encode_state

    cache = app_library.open("indexed")
    image = handlers.display_image(app_library, "indexed", 7)
    mask = np.zeros(image.shape[:2], bool)
    mask[60:260, 80:300] = True
    value = {"background": np.dstack([image, np.full(image.shape[:2], 255, np.uint8)]),
             "layers": [np.dstack([np.zeros_like(image), mask.astype(np.uint8) * 255])], "composite": None}
    picked = handlers.Picked(cache_key="indexed", index=7, image_id=cache.ids[7])
    query, _ = handlers.read_query(app_library, "indexed", value, picked)
    exact = handlers.run_search(app_library, query, SearchOptions(k=8))
    everything = handlers.run_search(app_library, query, SearchOptions(k=8, candidates=cache.shape[0]))
    assert everything.matches == exact.matches  # M = N: two-stage is exact search
    outcome = handlers.run_search(app_library, query, SearchOptions(k=8, candidates=20))
    assert outcome.best.scores.size == 20 and 7 not in outcome.best.indices
    expected = search_two_stage(outcome.features, outcome.weights, cache, candidates=20, k=8, exclude=[7])
    assert outcome.matches == expected.matches
    assert "approximate" in handlers.search_summary(app_library, outcome) and "M=20" in handlers.search_summary(
        app_library, outcome)
    assert "approximate" not in handlers.search_summary(app_library, exact)
    json_path, csv_path = exports.export_results(app_library, outcome, folder=tmp_path)
    document = json.loads(json_path.read_text())
    assert document["search"]["approximate"] is True and document["search"]["candidates"] == 20
    assert {row["search"] for row in csv.DictReader(csv_path.open())} == {"approximate (two-stage, M=20)"}
    state = decode_state(encode_state(SharedState(cache_key="indexed", revision=None, index=7, image_id=None,
                                                  image_size=image.shape[:2], mask=mask, options=outcome.options)))
    assert state.options.candidates == 20
    plain = handlers.Picked(cache_key="plain", index=7, image_id=cache.ids[7])
    query, _ = handlers.read_query(app_library, "plain", value, plain)
    with pytest.raises(vfs.VFSError, match="no coarse index.*index-coarse"):
        handlers.run_search(app_library, query, SearchOptions(k=8, candidates=20))


def test_hub_publishes_and_opens_the_index(tmp_path, monkeypatch, rng):
    """A cache pushed with its index opens from the Hub with it, and two-stage search gives the same results."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from hub_server import HubServer

    import hub_caches

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_ENDPOINT", "HUB_CACHES_CATALOG"):
        monkeypatch.delenv(name, raising=False)
    path = make_cache(tmp_path / "cache", low_rank_features(rng))
    build_coarse_index(path, dims=5, progress=False)
    local = vfs.open_cache(path)
    query, weights = torch.from_numpy(local[9].astype(np.float32)), weights_of("L")
    expected = search_two_stage(query, weights, local, candidates=30, k=6)
    with HubServer(tmp_path / "server") as server:
        hub_caches.push_cache(path, "vfs-test/two-stage", tag="v1", endpoint=server.endpoint, token=False)
        remote = hub_caches.open("vfs-test/two-stage", revision="v1", endpoint=server.endpoint, token=False)
        assert has_coarse_index(remote)
        index = open_coarse_index(remote)
        np.testing.assert_array_equal(index.codes, open_coarse_index(local).codes)
        assert search_two_stage(query, weights, remote, index=index, candidates=30, k=6).matches == expected.matches


def test_search_command_with_candidates_is_the_two_stage_search_labelled_approximate(indexed, capsys):
    """`python -m vfs search CACHE --index I --candidates M --json`: vfs.search_two_stage's matches, marked approximate."""
    import json

    from vfs.__main__ import main
    from vfs.retrieval.command import search_command

    cache = vfs.open_cache(indexed)
    query = torch.from_numpy(cache[7].astype(np.float32))
    expected = search_two_stage(query, torch.ones(H, W), cache, candidates=20, k=5, exclude=[3, 7])
    assert search_command([str(indexed), "--index", "7", "--candidates", "20", "-k", "5", "--exclude", "3",
                           "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [(m["index"], m["row"], m["col"], m["score"]) for m in document["matches"]] == [
        (m.index, m.row, m.col, m.score) for m in expected.matches]
    assert document["approximate"] is True and document["candidates"] == 20
    assert document["mode"] == expected.label and "M=20" in document["mode"]
    assert search_command([str(indexed), "--index", "7", "-k", "5", "--json"]) == 0  # the default stays exact
    exact = json.loads(capsys.readouterr().out)
    assert exact["approximate"] is False and exact["mode"] == "exact"
    assert search_command([str(indexed), "--index", "7", "--candidates", "20", "-k", "3"]) == 0
    assert "approximate: two-stage search" in capsys.readouterr().out
    assert main(["search", str(indexed), "--index", "7", "--candidates", "0"]) == 1
    assert "candidates must be a positive integer" in capsys.readouterr().err


def test_default_dims_keeps_all_channels_of_a_narrow_cache(tmp_path, rng):
    """The default d (48) on a cache of 24 channels keeps the 24, instead of refusing the default."""
    from vfs.cache.coarse import DIMS

    assert C < DIMS
    path = make_cache(tmp_path / "narrow", low_rank_features(rng, 64))
    build_coarse_index(path, sample=32, progress=False)
    assert open_coarse_index(vfs.open_cache(path)).meta.dims == C
