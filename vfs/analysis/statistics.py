"""Means with their uncertainty: every mean the experiments report comes with a standard error and a
95 % interval (the papers' figures show standard error bars).

    estimate(values)   -> Estimate(mean, se, low, high, count)     NaN values are left out
    clustered_auroc(scores, positives)   -> Estimate of one AUROC over (query, image) pairs pooled
                                            from many queries, the queries as clusters

The standard error is the sample standard deviation (ddof=1) over sqrt(count); the interval is
mean +- t(0.975, count-1) * se, Student's t, which for a few dozen values or more is about +-1.96 se.
It treats the values (one per query) as independent draws, which is what the papers' error bars do.

A pooled AUROC is not a mean over queries: it compares every positive pair with every negative pair of
all queries, and the pairs of one query are not independent (one odd query moves all of its scores).
Its standard error is Obuchowski's (1997, "Nonparametric analysis of clustered ROC curve data",
Biometrics 53:567) with each query a cluster: DeLong's placement values, summed per query.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from vfs.errors import SearchError


@dataclass(frozen=True)
class Estimate:
    """A mean over independent values, with its standard error and 95 % interval."""

    mean: float  # NaN when there are no values
    se: float  # standard error of the mean; NaN for fewer than 2 values
    low: float  # lower end of the 95 % interval (Student's t); NaN for fewer than 2 values
    high: float  # upper end of the 95 % interval
    count: int  # how many values (NaN ones left out)

    def columns(self, name: str) -> dict[str, float | list[float]]:
        """`{name: mean, "name se": se, "name ci95": [low, high]}`: one reported mean in a table row."""
        return {name: self.mean, f"{name} se": self.se, f"{name} ci95": [self.low, self.high]}


def estimate(values: ArrayLike) -> Estimate:
    """The mean of `values` (NaN left out) with standard error and 95 % interval."""
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[~np.isnan(values)]
    count = len(values)
    if count == 0:
        return Estimate(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(values.mean())
    if count < 2:
        return Estimate(mean, math.nan, math.nan, math.nan, count)
    se = float(values.std(ddof=1) / math.sqrt(count))
    half = _t975(count - 1) * se
    return Estimate(mean, se, mean - half, mean + half, count)


def _t975(dof: int) -> float:
    """The 0.975 quantile of Student's t with `dof` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))  # two-sided 95 %: 2.5 % in each tail


def clustered_auroc(scores: ArrayLike, positives: ArrayLike) -> Estimate:
    """The AUROC of `scores` predicting `positives` over all (query, image) pairs pooled, each row of
    the (Q, N) arrays one query (a cluster; NaN scores left out), with Obuchowski's clustered standard
    error and a normal 95 % interval clipped to [0, 1]. Ties count one half (Mann-Whitney).

    With V10[x] the share of all negatives below positive x (ties half) and V01[y] the share of all
    positives above negative y, summed per query into V10_i, V01_i, and m_i, n_i the query's positive
    and negative counts (M, N in all, I queries, theta the AUROC):
        S10 = I / ((I-1) M) sum_i (V10_i - m_i theta)^2       S01 likewise with V01_i, n_i and N
        S11 = I / (I-1) sum_i (V10_i - m_i theta)(V01_i - n_i theta)
        var = S10 / M + S01 / N + 2 S11 / (M N)
    """
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    if scores.ndim != 2 or scores.shape != positives.shape:
        raise SearchError(f"scores {scores.shape} and positives {positives.shape} must both be (queries, images): "
                          "one row of scores and of same-label flags per query")
    valid = ~np.isnan(scores)  # (Q, N)
    cluster = np.broadcast_to(np.arange(scores.shape[0])[:, None], scores.shape)[valid]  # (P,)
    values, is_pos = scores[valid], positives[valid]  # (P,)
    pos, neg = np.sort(values[is_pos]), np.sort(values[~is_pos])
    n_pos, n_neg, n_clusters = len(pos), len(neg), scores.shape[0]
    if n_pos == 0 or n_neg == 0:
        return Estimate(math.nan, math.nan, math.nan, math.nan, n_clusters)
    x, y = values[is_pos], values[~is_pos]
    v10 = (np.searchsorted(neg, x, "left") + np.searchsorted(neg, x, "right")) / (2.0 * n_neg)  # (M,)
    v01 = ((n_pos - np.searchsorted(pos, y, "right")) + (n_pos - np.searchsorted(pos, y, "left"))) / (2.0 * n_pos)  # (N,)
    theta = float(v10.mean())
    if n_clusters < 2:
        return Estimate(theta, math.nan, math.nan, math.nan, n_clusters)
    m_i = np.bincount(cluster[is_pos], minlength=n_clusters)  # (I,)
    n_i = np.bincount(cluster[~is_pos], minlength=n_clusters)  # (I,)
    d10 = np.bincount(cluster[is_pos], weights=v10, minlength=n_clusters) - m_i * theta  # (I,)
    d01 = np.bincount(cluster[~is_pos], weights=v01, minlength=n_clusters) - n_i * theta  # (I,)
    scale = n_clusters / (n_clusters - 1)
    s10, s01, s11 = scale * (d10 @ d10) / n_pos, scale * (d01 @ d01) / n_neg, scale * (d10 @ d01)
    se = math.sqrt(max(s10 / n_pos + s01 / n_neg + 2.0 * s11 / (n_pos * n_neg), 0.0))
    return Estimate(theta, se, max(theta - 1.96 * se, 0.0), min(theta + 1.96 * se, 1.0), n_clusters)
