"""Means with their uncertainty: every mean the experiments report comes with a standard error and a
95 % interval (the papers' figures show standard error bars).

    estimate(values)   -> Estimate(mean, se, low, high, count)     NaN values are left out

The standard error is the sample standard deviation (ddof=1) over sqrt(count); the interval is
mean +- t(0.975, count-1) * se, Student's t, which for a few dozen values or more is about +-1.96 se.
It treats the values (one per query) as independent draws, which is what the papers' error bars do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike


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
