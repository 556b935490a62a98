"""Neighbour metrics with planted answers; AUROC against scikit-learn; the experiment command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from vfs.analysis.metrics import (
    auroc,
    bin_by,
    box_iou,
    distinct_labels,
    domain_neighbours,
    label_scores,
    matched_boxed,
    neighbours,
    same_label_fraction,
    shared_neighbours,
    top_k_ious,
    window_ious,
)
from vfs.analysis.statistics import clustered_auroc, estimate
from vfs.errors import MaskError, SearchError


def planted_source(per_label: int = 6, labels: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Each label is one random pattern (C, H, W); images are their label's pattern plus small noise."""
    rng = np.random.default_rng(seed)
    patterns = rng.normal(size=(labels, 8, 3, 3))
    label_of = np.repeat(np.arange(labels), per_label)
    rng.shuffle(label_of)
    features = patterns[label_of] + 0.05 * rng.normal(size=(len(label_of), 8, 3, 3))
    return features.astype(np.float32), label_of


def test_distinct_labels_is_one_when_each_label_is_a_pattern():
    source, labels = planted_source()
    nb = neighbours(source, range(len(source)), k=5)
    assert nb.indices.shape == (24, 5)
    assert not (nb.indices == nb.queries[:, None]).any()  # the query itself is excluded
    assert (distinct_labels(nb, labels) == 1).all()
    assert (same_label_fraction(nb, labels) == 1.0).all()
    # shuffled labels break it: the metric can fail
    shuffled = np.random.default_rng(1).permutation(labels)
    assert distinct_labels(nb, shuffled).mean() > 1.5


def test_shared_neighbours_of_a_source_with_itself_is_k():
    source, _ = planted_source()
    a = neighbours(source, [0, 3, 7], k=4)
    b = neighbours(source.copy(), [0, 3, 7], k=4)
    assert shared_neighbours(a, b).tolist() == [4, 4, 4]
    other = neighbours(np.random.default_rng(2).normal(size=source.shape), [0, 3, 7], k=4)
    assert shared_neighbours(a, other).max() < 4
    with pytest.raises(SearchError, match="same query list"):
        shared_neighbours(a, neighbours(source, [0, 3], k=4))


def test_planted_box_is_found_with_iou_one():
    rng = np.random.default_rng(3)
    source = (0.1 * rng.random((6, 5, 8, 8))).astype(np.float32)
    patch = rng.normal(size=(5, 2, 3)) * 10
    source[0, :, 2:4, 3:6] = patch  # query region: cells rows 2..3, cols 3..5
    source[4, :, 5:7, 1:4] = patch  # the planted copy
    sizes = np.full((6, 2), 64)  # 64x64 pixels, 8 pixels per cell
    boxes = [None] * 6
    boxes[4] = np.array([[40.0, 8.0, 56.0, 32.0], [0.0, 0.0, 8.0, 8.0]])  # the copy, and a decoy
    boxes[1] = np.array([[0.0, 0.0, 64.0, 64.0]])
    nb = neighbours(source, [0], k=2, boxes=[(16.0, 24.0, 32.0, 48.0)], image_sizes=sizes)
    assert nb.indices[0, 0] == 4 and (nb.rows[0, 0], nb.cols[0, 0]) == (5, 1)
    assert nb.scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert (nb.heights[0], nb.widths[0]) == (2, 3)
    ious = window_ious(nb, boxes, sizes, (8, 8))
    assert ious[0] == pytest.approx(1.0)
    # the runner-up is image 2, window rows 2..3, cols 0..2: pixels (top, left, bottom, right) (16, 0, 32, 24)
    assert nb.indices[0, 1] == 2 and (nb.rows[0, 1], nb.cols[0, 1]) == (2, 0)
    assert window_ious(nb, boxes, sizes, (8, 8), rank=1)[0] == 0.0  # image 2 has no box: a miss
    boxes[2] = np.array([[16.0, 0.0, 32.0, 12.0]])  # the left half of that window (16, 0, 32, 24)
    assert window_ious(nb, boxes, sizes, (8, 8), rank=1)[0] == pytest.approx(0.5)


def test_a_match_without_a_box_is_a_miss_with_iou_zero():
    """VFS v1 Fig. 8 counts a face query that retrieves a non-face as a failure: planted here, the
    best match of query 0 is image 2, which has no box; image 3 holds a weaker copy inside its box."""
    rng = np.random.default_rng(7)
    source = (0.1 * rng.random((5, 4, 6, 6))).astype(np.float32)
    patch = rng.normal(size=(4, 2, 2)) * 10
    source[0, :, 0:2, 0:2] = patch
    source[2, :, 3:5, 3:5] = patch  # exact copy, in an image without boxes: the miss
    source[3, :, 1:3, 1:3] = patch + rng.normal(size=patch.shape)  # near copy, inside its box
    sizes = np.full((5, 2), 60)  # 10 pixels per cell
    boxes = [np.zeros((0, 4))] * 5
    boxes[0] = np.array([[0.0, 0.0, 20.0, 20.0]])
    boxes[3] = np.array([[10.0, 10.0, 30.0, 30.0]])
    nb = neighbours(source, [0], k=2, boxes=[boxes[0][0]], image_sizes=sizes)
    assert nb.indices[0].tolist() == [2, 3]
    ious = window_ious(nb, boxes, sizes, (6, 6))
    assert ious.tolist() == [0.0]  # counted, not left out of the mean
    assert matched_boxed(nb, boxes).tolist() == [False]
    np.testing.assert_allclose(top_k_ious(nb, boxes, sizes, (6, 6)), [[0.0, 1.0]])
    assert estimate(top_k_ious(nb, boxes, sizes, (6, 6)).mean(axis=1)).mean == 0.5


def test_queries_from_another_source_are_not_excluded():
    source, labels = planted_source()
    queries = source[[2, 9]] + 0.001  # another set holding near copies of images 2 and 9
    nb = neighbours(source, [0, 1], k=3, query_source=queries)
    assert nb.indices[:, 0].tolist() == [2, 9]  # found, not excluded as "itself"
    assert same_label_fraction(nb, labels, labels[[2, 9]]).tolist() == [1.0, 1.0]
    own = neighbours(source, [2, 9], k=3)
    assert own.indices[:, 0].tolist() != [2, 9]
    np.testing.assert_array_equal(nb.indices[:, 1:], own.indices[:, :2])
    scored = label_scores(source, [0, 1], labels, query_source=queries, query_labels=labels[[2, 9]])
    assert not np.isnan(scored.scores).any() and np.allclose(scored.aurocs, 1.0)
    with pytest.raises(SearchError, match="do not match"):
        neighbours(source, [0], k=3, query_source=queries[:, :4])
    with pytest.raises(SearchError, match="query_labels"):
        label_scores(source, [0], labels, query_source=queries)


def test_estimate_has_standard_error_and_t_interval():
    from scipy import stats

    values = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    found = estimate(values)
    assert found.count == 4 and found.mean == 2.5
    assert found.se == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)
    low, high = stats.t.interval(0.95, 3, loc=2.5, scale=found.se)
    assert (found.low, found.high) == (pytest.approx(low), pytest.approx(high))
    assert np.isnan(estimate([1.0]).se) and estimate([]).count == 0


def naive_clustered_auroc(scores, positives) -> tuple[float, float]:
    """Obuchowski (1997) written out with loops over every (positive, negative) pair: the oracle."""
    pairs = [(q, s, bool(p)) for q, (row, flags) in enumerate(zip(scores, positives))
             for s, p in zip(row, flags) if not np.isnan(s)]
    pos = [(q, s) for q, s, p in pairs if p]
    neg = [(q, s) for q, s, p in pairs if not p]

    def psi(x, y):
        return 1.0 if x > y else 0.5 if x == y else 0.0

    theta = sum(psi(x, y) for _, x in pos for _, y in neg) / (len(pos) * len(neg))
    clusters = len(scores)
    s10 = s01 = s11 = 0.0
    for i in range(clusters):
        v10 = sum(sum(psi(x, y) for _, y in neg) / len(neg) for q, x in pos if q == i)
        v01 = sum(sum(psi(x, y) for _, x in pos) / len(pos) for q, y in neg if q == i)
        m_i, n_i = sum(q == i for q, _ in pos), sum(q == i for q, _ in neg)
        s10 += (v10 - m_i * theta) ** 2
        s01 += (v01 - n_i * theta) ** 2
        s11 += (v10 - m_i * theta) * (v01 - n_i * theta)
    f = clusters / (clusters - 1)
    var = f * s10 / len(pos) ** 2 + f * s01 / len(neg) ** 2 + 2 * f * s11 / (len(pos) * len(neg))
    return theta, var**0.5


def test_clustered_auroc_by_hand():
    # query 0: positive 0.9 above its negative 0.1; query 1: positive 0.4 below its negative 0.6.
    # Pooled: 3 of 4 pairs ordered, AUROC 0.75; placement sums per query d10 = d01 = (+0.25, -0.25),
    # so S10 = S01 = 2 * 0.125 / 2 = 0.125, S11 = 2 * 0.125 = 0.25 and
    # var = 0.125 / 2 + 0.125 / 2 + 2 * 0.25 / 4 = 0.25: se 0.5.
    found = clustered_auroc([[0.9, 0.1], [0.4, 0.6]], [[True, False], [True, False]])
    assert (found.mean, found.se, found.count) == (0.75, 0.5, 2)
    assert (found.low, found.high) == (0.0, 1.0)  # 0.75 -+ 0.98, clipped


@pytest.mark.parametrize("seed", range(4))
def test_clustered_auroc_equals_the_naive_loops_with_ties_and_nans(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, size=(6, 9)).astype(np.float64)  # (Q, N), many ties
    scores[rng.random(scores.shape) < 0.15] = np.nan  # e.g. each query itself
    positives = rng.random(scores.shape) < 0.4
    positives[0] = False  # a query with no positive at all still counts as a cluster
    found = clustered_auroc(scores, positives)
    theta, se = naive_clustered_auroc(scores, positives)
    valid = ~np.isnan(scores)
    assert found.mean == pytest.approx(roc_auc_score(positives[valid], scores[valid]), abs=1e-12)
    assert (found.mean, found.se) == (pytest.approx(theta, abs=1e-12), pytest.approx(se, abs=1e-12))
    assert found.count == 6


def test_clustered_auroc_se_matches_the_spread_of_simulated_experiments():
    """Queries with their own random offset (pairs of one query move together): the clustered se is
    the standard deviation of the pooled AUROC over repeated experiments; treating the pairs as
    independent (Hanley & McNeil) would claim one about a third smaller."""
    rng = np.random.default_rng(0)
    thetas, ses, independent = [], [], []
    for _ in range(300):
        positives = rng.random((30, 40)) < 0.3  # (Q, N)
        offset = rng.normal(0.0, 1.0, size=(30, 1))  # the query's own level, shared by its images
        lift = rng.normal(0.8, 0.6, size=(30, 1))  # and its own separation
        scores = offset + lift * positives + rng.normal(size=(30, 40))
        found = clustered_auroc(scores, positives)
        thetas.append(found.mean)
        ses.append(found.se)
        m, n, a = positives.sum(), (~positives).sum(), found.mean
        q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
        independent.append(np.sqrt((a * (1 - a) + (m - 1) * (q1 - a * a) + (n - 1) * (q2 - a * a)) / (m * n)))
    spread = np.std(thetas, ddof=1)
    assert np.mean(ses) == pytest.approx(spread, rel=0.15)
    assert np.mean(independent) < 0.7 * spread  # about 0.63 here


def test_clustered_auroc_of_one_class_or_one_query():
    assert np.isnan(clustered_auroc([[0.1, 0.2]], [[True, True]]).mean)
    one = clustered_auroc([[0.1, 0.9]], [[False, True]])
    assert one.mean == 1.0 and np.isnan(one.se)
    with pytest.raises(SearchError, match="one row of scores"):
        clustered_auroc([0.1, 0.2], [True, False])


def test_box_iou_and_binning():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (0, 5, 10, 15)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    rows = bin_by(np.array([1.0, 0.5, 0.0, np.nan]), np.array([0.1, 0.15, 0.6, 0.6]), [0.0, 0.5, 1.0])
    assert {k: rows[0][k] for k in ("low", "high", "count", "mean")} == {"low": 0.0, "high": 0.5, "count": 2,
                                                                         "mean": 0.75}
    assert rows[0]["mean se"] == pytest.approx(0.25)
    assert rows[1]["count"] == 1 and rows[1]["mean"] == 0.0


def whole_image_cosine(source: np.ndarray, i: int) -> np.ndarray:
    flat = source.reshape(len(source), -1).astype(np.float64)
    return flat @ flat[i] / (np.linalg.norm(flat, axis=1) * np.linalg.norm(flat[i]))


def test_domain_neighbours_take_the_best_image_of_each_domain():
    rng = np.random.default_rng(4)
    source = rng.normal(size=(30, 6, 2, 2)).astype(np.float32)
    domains = [f"d{i % 5}" for i in range(30)]
    for query in (0, 7, 29):
        nb = domain_neighbours(source, [query], domains, k=3)
        cosine = whole_image_cosine(source, query)
        cosine[query] = -np.inf
        best_per_domain = {}
        for i in range(30):
            d = domains[i]
            if d not in best_per_domain or cosine[i] > cosine[best_per_domain[d]]:
                best_per_domain[d] = i
        expected = sorted(best_per_domain.values(), key=lambda i: -cosine[i])[:3]
        assert nb.indices[0].tolist() == expected
        assert len({domains[i] for i in nb.indices[0]}) == 3
        np.testing.assert_allclose(nb.scores[0], cosine[expected], atol=1e-5)
    with pytest.raises(SearchError, match="k <= 5"):
        domain_neighbours(source, [0], domains, k=6)


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=200).astype(np.float64)  # many ties
    positives = rng.random(200) < 0.3 + 0.1 * scores / 5
    assert auroc(scores, positives) == pytest.approx(roc_auc_score(positives, scores), abs=1e-12)
    continuous = rng.normal(size=50)
    labels = rng.random(50) < 0.5
    assert auroc(continuous, labels) == pytest.approx(roc_auc_score(labels, continuous), abs=1e-12)


def test_auroc_extremes_and_one_class():
    assert auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auroc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [True, False, True, False]) == 0.5
    with pytest.raises(SearchError, match="both classes"):
        auroc([0.1, 0.2], [True, True])


def test_label_scores_separate_planted_labels():
    source, labels = planted_source()
    result = label_scores(source, [0, 5, 11], labels)
    assert result.scores.shape == (3, 24)
    for q, query in enumerate([0, 5, 11]):
        assert np.isnan(result.scores[q, query])
        expected = whole_image_cosine(source, query)
        others = np.arange(24) != query
        np.testing.assert_allclose(result.scores[q, others], expected[others], atol=1e-5)
    np.testing.assert_allclose(result.aurocs, 1.0)
    shuffled = label_scores(source, [0, 5, 11], np.random.default_rng(5).permutation(labels))
    assert shuffled.aurocs.mean() < 0.9


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """A real cache: 12 images of two planted labels (bright top or bright bottom), a 4x4-grid conv net."""
    import torch

    from vfs.cache.build import build_cache
    from vfs.datasets import ArrayDataset
    from vfs.models.loading import load_model
    from vfs.models.preprocess import Preprocess

    rng = np.random.default_rng(6)
    images, labels = [], []
    for i in range(12):
        image = (rng.random((16, 16, 3)) * 40).astype(np.uint8)
        image[:8] += 200 if i % 2 == 0 else 0
        image[8:] += 200 if i % 2 == 1 else 0
        images.append(image)
        labels.append(i % 2)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 4, stride=4), torch.nn.ReLU())
    model = load_model("tiny", module=net, weights="random",
                       preprocess=Preprocess(size=16, crop=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)))
    data = ArrayDataset(images, name="planted", labels=labels, label_names=["top", "bottom"])
    return build_cache(model, "1", data, tmp_path_factory.mktemp("cache") / "tiny", progress=False, shard_size=5)


def test_experiment_command_reports_what_the_metrics_compute(tiny_cache, tmp_path, capsys):
    from vfs.analysis.experiment import choose_queries, experiment_command
    from vfs.cache.reader import open_cache

    out = tmp_path / "labels.json"
    assert experiment_command(["labels", str(tiny_cache), "--k", "3", "--queries", "8", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "distinct@3" in printed and "top" in printed and "bottom" in printed
    record = json.loads(out.read_text())
    cache = open_cache(tiny_cache)
    queries = choose_queries(12, 8, seed=0)
    nb = neighbours(cache, queries, k=3)
    assert record["rows"][-1]["label"] == "all"
    assert record["rows"][-1]["distinct@3"] == pytest.approx(distinct_labels(nb, cache.labels).mean())
    assert record["rows"][-1]["distinct@3"] == 1.0  # the planted labels separate

    out = tmp_path / "shared.json"
    assert experiment_command(["shared", str(tiny_cache), str(tiny_cache), "--k", "3", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][-1]["shared@3"] == 3.0

    out = tmp_path / "auroc.json"
    assert experiment_command(["auroc", str(tiny_cache), "--queries", "0", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    direct = label_scores(cache, np.arange(12), cache.labels)
    assert record["rows"][-1]["auroc"] == pytest.approx(np.nanmean(direct.aurocs))
    assert record["pooled_auroc"] > 0.9
    pooled = clustered_auroc(direct.scores, direct.same)
    assert (record["pooled_auroc"], record["pooled_auroc_se"]) == (pytest.approx(pooled.mean), pytest.approx(pooled.se))
    assert record["pooled_auroc_ci95"] == [pytest.approx(pooled.low), pytest.approx(pooled.high)]
    assert f"{pooled.mean:.3f} ± {pooled.se:.3f}" in capsys.readouterr().out


def test_experiment_command_explains_missing_data(tiny_cache, capsys):
    from vfs.__main__ import main
    from vfs.cli import LIBRARY_ERROR

    assert main(["experiment", "iou", str(tiny_cache)]) == LIBRARY_ERROR
    assert "no ground-truth boxes" in capsys.readouterr().err
    assert main(["experiment", "domains", str(tiny_cache)]) == LIBRARY_ERROR
    assert "no domains" in capsys.readouterr().err


def test_box_weights_of_small_and_large_boxes():
    from vfs.analysis.metrics import box_weights

    # 8x8 grid over 64x64 pixels: a box of 2x3 cells exactly, and one smaller than a cell
    exact = box_weights((8, 8), box=(16.0, 24.0, 32.0, 48.0), image_size=(64, 64))
    assert exact.sum() == 6 and exact[2:4, 3:6].all()
    small = box_weights((8, 8), box=(17.0, 17.0, 20.0, 20.0), image_size=(64, 64))
    assert small.sum() == 1 and small[2, 2] == 1  # its best-covered cell, though under half covered
    assert box_weights((8, 8)).sum() == 64
    with pytest.raises(MaskError, match="outside the image"):  # from box_to_grid: nothing re-checked after it
        box_weights((8, 8), box=(70.0, 70.0, 90.0, 90.0), image_size=(64, 64))
