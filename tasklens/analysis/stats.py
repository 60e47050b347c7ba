"""Uncertainty for neuron-set comparisons: intervals over prompts, tests against random sets.

Every comparison of a neuron set is a test that can fail:

- a cell's accuracy gets a Wilson interval (`proportion_interval`), a mean of a continuous
  metric or a per-prompt change a bootstrap interval over prompts (`mean_interval`);
- a raw-units statistic of a set (its own-task drop, `drop_test`, or its drop minus the mean
  of the others', `specificity_test`) is compared with the same statistic of random sets of
  the same per-layer counts by a Monte Carlo p-value, and the p-values of several sets are
  corrected together (`holm`).

The specificity *verdict* tasklens reports is `tasklens.analysis.verdict`'s (a double
dissociation on a normalised scale); these raw-units tests remain for curves such as
`tasklens.analysis.experiments.cumulativity`.

The statistics come from scipy.stats and statsmodels; this module only arranges them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from tasklens.errors import TasklensError

#: the significance level of every verdict tasklens writes
ALPHA = 0.05
#: bootstrap resamples for intervals over prompts
N_RESAMPLES = 2000


def is_binary(values: Sequence[float] | np.ndarray) -> bool:
    """Whether every value is 0 or 1 (an accuracy-like metric)."""
    array = np.asarray(values, dtype=float)
    return bool(array.size) and bool(np.isin(array, (0.0, 1.0)).all())


def proportion_interval(successes: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """Wilson score interval of a proportion (``successes`` of ``n``).

    >>> low, high = proportion_interval(18, 20)
    >>> round(low, 3), round(high, 3)
    (0.699, 0.972)
    """
    if n <= 0:
        return (math.nan, math.nan)
    low, high = proportion_confint(successes, n, alpha=alpha, method="wilson")
    return float(low), float(high)


def mean_interval(
    values: Sequence[float] | np.ndarray, alpha: float = ALPHA, seed: int = 0
) -> tuple[float, float]:
    """Interval of a mean over prompts: Wilson for 0/1 values, else a percentile bootstrap.

    >>> mean_interval([1.0, 1.0, 1.0, 0.0])[1] > 0.75
    True
    """
    array = np.asarray(values, dtype=float)
    array = array[np.isfinite(array)]
    if array.size == 0:
        return (math.nan, math.nan)
    if is_binary(array):
        return proportion_interval(int(array.sum()), array.size, alpha)
    return bootstrap_interval(array, alpha, seed)


def bootstrap_interval(
    values: Sequence[float] | np.ndarray, alpha: float = ALPHA, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of a mean over prompts (e.g. paired per-prompt changes).

    >>> bootstrap_interval([0.0, 0.0, 0.0])
    (0.0, 0.0)
    """
    array = np.asarray(values, dtype=float)
    array = array[np.isfinite(array)]
    if array.size == 0:
        return (math.nan, math.nan)
    return _bootstrap((array,), lambda x, axis: x.mean(axis=axis), alpha, seed)[:2]


def _bootstrap(samples: tuple[np.ndarray, ...], statistic, alpha: float, seed: int):
    """(low, high, standard error) of ``statistic`` over independent ``samples`` (each resampled
    separately); a sample whose values are all equal has no spread to resample."""
    if all(s.size < 2 or np.ptp(s) == 0 for s in samples):
        value = float(statistic(*samples, axis=-1))
        return value, value, 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # degenerate resamples of tiny samples
        result = stats.bootstrap(
            samples,
            statistic,
            n_resamples=N_RESAMPLES,
            confidence_level=1 - alpha,
            method="percentile",
            vectorized=True,
            rng=np.random.default_rng(seed),
        )
    interval = result.confidence_interval
    return float(interval.low), float(interval.high), float(result.standard_error)


@dataclass(frozen=True)
class SpecificityTest:
    """A set's specificity against random sets of the same per-layer counts.

    ``statistic`` = mean change on the other tasks minus the change on the set's own task
    (positive: the own task falls more than the others); ``low``/``high`` its bootstrap
    interval over prompts and ``se`` its standard error. ``null_mean``/``null_sd`` describe
    the same statistic over ``n_null`` random sets. ``p_value`` is one-sided (more specific
    than random sets): the Monte Carlo p-value (b + 1) / (n + 1), ``b`` of the ``n`` random
    sets at least as specific; it never falls below 1 / (n + 1) and assumes no distribution.
    ``p_empirical`` is the same number, kept for older readers.
    """

    statistic: float
    low: float
    high: float
    se: float
    null_mean: float
    null_sd: float
    n_null: int
    p_value: float
    p_empirical: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def monte_carlo_p(observed: float, null: Sequence[float] | np.ndarray) -> float:
    """One-sided Monte Carlo p-value ``(b + 1) / (n + 1)``: ``b`` of the ``n`` null draws are at
    least ``observed``. Never below ``1 / (n + 1)``; NaN without draws or observation.

    >>> monte_carlo_p(3.0, [0.0, 1.0, 4.0])
    0.5
    >>> monte_carlo_p(-1.0, [0.0, 0.0])  # doctest: +ELLIPSIS
    1.0
    """
    null = np.asarray(null, dtype=float)
    null = null[np.isfinite(null)]
    if null.size == 0 or not math.isfinite(observed):
        return math.nan
    return float((1 + np.sum(null >= observed)) / (1 + null.size))


def specificity(own: float, others: Sequence[float] | np.ndarray) -> float:
    """Mean change on the other tasks minus the change on the own task."""
    return float(np.mean(others)) - float(own) if len(others) else math.nan


def specificity_test(
    own: Sequence[float] | np.ndarray,
    others: Sequence[Sequence[float] | np.ndarray],
    null: Sequence[float] | np.ndarray,
    alpha: float = ALPHA,
    seed: int = 0,
) -> SpecificityTest:
    """Test whether a set changes its own task more than the others, beyond random sets.

    Args:
        own: per-prompt change of the metric on the set's own task (set on minus unmodified).
        others: per other task, its per-prompt changes.
        null: the specificity of each random set of the same per-layer counts (see `specificity`).

    Returns:
        A `SpecificityTest`.

    >>> rng = np.random.default_rng(0)
    >>> hit = specificity_test(-np.ones(30), [np.zeros(30)], rng.normal(0, 0.05, 20))
    >>> hit.statistic, round(hit.p_value, 4)  # beats all 20 random sets: 1 / 21
    (1.0, 0.0476)
    >>> miss = specificity_test(np.zeros(30), [np.zeros(30)], rng.normal(0, 0.05, 20))
    >>> miss.p_value > 0.05
    True
    >>> specificity_test([-1.0, -1.0], [[0.0, 0.0]], [0.0, 0.0]).p_value  # no spread at all: not 0
    0.3333333333333333
    """
    own = np.asarray(own, dtype=float)
    others = [np.asarray(o, dtype=float) for o in others]
    null = np.asarray(null, dtype=float)
    null = null[np.isfinite(null)]
    if not others:
        raise TasklensError("Specificity needs at least one other task to compare the own task with")
    if null.size < 2:
        raise TasklensError(
            f"Specificity needs at least 2 random control sets evaluated on every task, got {null.size}; "
            "raise n_controls and use controls_on='all'"
        )

    def statistic(own_sample, *other_samples, axis=-1):
        return np.mean([o.mean(axis=axis) for o in other_samples], axis=0) - own_sample.mean(axis=axis)

    value = float(statistic(own, *others))
    low, high, se = _bootstrap((own, *others), statistic, alpha, seed)
    null_mean, null_sd = float(null.mean()), float(null.std(ddof=1))
    p_value = monte_carlo_p(value, null)
    return SpecificityTest(value, low, high, se, null_mean, null_sd, int(null.size), p_value, p_value)


def drop_test(
    own: Sequence[float] | np.ndarray, null: Sequence[float] | np.ndarray, alpha: float = ALPHA, seed: int = 0
) -> SpecificityTest:
    """Test whether a set lowers its own task more than random sets of the same per-layer counts.

    The statistic is the drop, minus the set's mean per-prompt change (positive: the metric
    falls); ``null`` holds each random set's drop on the same prompts. The test is
    `specificity_test` with a task that never changes in place of the other tasks.

    >>> rng = np.random.default_rng(0)
    >>> drop_test(-np.ones(30), rng.normal(0.0, 0.05, 39)).p_value  # above all 39 random sets
    0.025
    >>> drop_test(np.zeros(30), rng.normal(0.0, 0.05, 39)).p_value > 0.05
    True
    """
    own = np.asarray(own, dtype=float)
    return specificity_test(own, [np.zeros_like(own)], null, alpha, seed)


def holm(p_values: Sequence[float] | np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """Holm-adjusted p-values (statsmodels), NaN kept where a test was not run.

    >>> holm([0.01, 0.04, 0.03]).round(2).tolist()
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = multipletests(p[finite], alpha=alpha, method="holm")[1]
    return out
