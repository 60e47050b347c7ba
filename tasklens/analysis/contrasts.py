"""Contrasts between two tasks' normalised effects: a studentized permutation test with a margin.

A set's *effect* on a task is the fraction of the task's gap to its no-information floor that
the set removes, a ratio of means over the task's prompts (`pseudo_values`). Comparing two
tasks' effects, with or without a margin, is a two-sample question about

    D = scale * e_own - shift - e_other

(``scale = 1, shift = 0``: the own task falls more; ``scale = 0.25``: the other loses less than
a quarter of the own effect; ``shift = 0.1``: at least 0.1 of a gap less). `contrast_test`
answers it with a studentized (Welch) permutation test of the tasks' per-prompt *pseudo-values*:
each prompt's linearised contribution to its task's ratio, so that the floor's uncertainty is
carried into the test instead of being taken as known. The permutation distribution of the
Welch statistic is exact when the two samples are exchangeable and asymptotically valid when
their variances differ (Janssen 1997; Chung & Romano 2013); the calibration suite checks its
level at 8, 16 and 48 prompts. Resamples stop Besag-Clifford style (clearly null comparisons
stop early) and otherwise run to `N_PERMUTATIONS`, so the test's own floor ``1 / (n + 1)`` lies
far below any threshold a page's correction sets.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
from jaxtyping import Float
from scipy import stats

#: the most resamples of one permutation test (its p-value is never below 1 / (n + 1))
N_PERMUTATIONS = 9999
#: resamples drawn at a time
CHUNK = 1000
#: exceedances (in both directions) after which a permutation test stops
STOP_AFTER = 20


def pseudo_values(
    base: Float[np.ndarray, " prompt"], value: Float[np.ndarray, " prompt"], floors: np.ndarray
) -> tuple[float, Float[np.ndarray, " prompt"]]:
    """A task's normalised effect and its per-prompt pseudo-values.

    The effect is ``e = mean(base - value) / mean(base - floor)``; a prompt's pseudo-value is
    ``e + ((base - value) - e * (base - floor)) / mean(base - floor)``, its influence on the
    ratio: the pseudo-values average to ``e`` and their variance over ``n`` is the delta-method
    variance of ``e``, floor included. ``floors`` is one floor per prompt or a single value.

    >>> e, z = pseudo_values(np.array([-1.0, -1.0]), np.array([-5.0, -7.0]), np.array([-11.0]))
    >>> e, z.tolist()
    (0.5, [0.4, 0.6])
    """
    base, value = np.asarray(base, dtype=float), np.asarray(value, dtype=float)
    floors = np.asarray(floors, dtype=float)
    gap = base - (floors if floors.size == base.size else floors.mean())
    mean_gap = float(gap.mean()) if gap.size else math.nan
    if not mean_gap > 0:
        return math.nan, np.full(base.size, math.nan)
    drop = base - value
    effect = float(drop.mean()) / mean_gap
    return effect, effect + (drop - effect * gap) / mean_gap


def gap_error(base: np.ndarray, floors: np.ndarray) -> float:
    """The standard error of a task's gap (unmodified mean minus floor) over its prompts."""
    base, floors = np.asarray(base, dtype=float), np.asarray(floors, dtype=float)
    gap = base - (floors if floors.size == base.size else floors.mean())
    return float(gap.std(ddof=1) / math.sqrt(gap.size)) if gap.size > 1 else math.nan


@dataclass(frozen=True)
class Contrast:
    """``D = scale * e_own - shift - e_other``: its ``estimate``, a ``1 - alpha`` Welch interval
    ``low``..``high`` with standard error ``se`` and degrees of freedom ``df``; ``p``, the
    permutation p-value that D > 0, and ``p_reverse``, that D < 0, both from the same ``n``
    resamples (never below ``1 / (n + 1)``)."""

    estimate: float
    low: float
    high: float
    se: float
    df: float
    p: float
    p_reverse: float
    n: int

    def detectable(self, alpha: float, power: float = 0.8) -> float:
        """The D a one-sided test at ``alpha`` detects with ``power`` (normal approximation)."""
        return float((stats.norm.isf(alpha) + stats.norm.ppf(power)) * self.se)


def _welch(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray | np.floating, ...]:
    """Welch's t of ``first - second`` along the last axis, with its standard error and df."""
    n1, n2 = first.shape[-1], second.shape[-1]
    v1, v2 = first.var(axis=-1, ddof=1) / n1, second.var(axis=-1, ddof=1) / n2
    se = np.sqrt(v1 + v2)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (first.mean(axis=-1) - second.mean(axis=-1)) / se
        df = (v1 + v2) ** 2 / (v1**2 / (n1 - 1) + v2**2 / (n2 - 1))
    return t, se, df


@functools.lru_cache(maxsize=8)
def _splits(size: int, first: int, seed: int, most: int) -> np.ndarray:
    """Resampled orderings of ``size`` pooled values, ``[resample x size]`` (the first ``first``
    of a row form the first sample): every split when there are at most ``most``, else ``most``
    random permutations. Shared by the comparisons of a set, whose samples have the same sizes."""
    if math.comb(size, first) <= most:
        rows = []
        for chosen in itertools.combinations(range(size), first):
            picked = set(chosen)
            rows.append([*chosen, *(i for i in range(size) if i not in picked)])
        return np.array(rows)
    rng = np.random.default_rng(seed)
    return rng.random((most, size)).argsort(axis=1)


def contrast_test(
    own: Float[np.ndarray, " prompt"],
    other: Float[np.ndarray, " other_prompt"],
    scale: float = 1.0,
    shift: float = 0.0,
    alpha: float = 0.05,
    seed: int = 0,
    n_max: int = N_PERMUTATIONS,
) -> Contrast:
    """Test ``D = scale * mean(own) - shift - mean(other)`` with a studentized permutation test.

    Args:
        own: the own task's pseudo-values (`pseudo_values`), one per prompt.
        other: the other task's pseudo-values (independent prompts).
        scale, shift: the margin (``D > 0`` is the alternative of ``p``).
        alpha: the level of the reported interval (``1 - alpha``, two-sided).
        seed: the resampling seed.
        n_max: the most resamples (every split of the pooled values when there are fewer).

    Returns:
        A `Contrast`. Resampling stops once `STOP_AFTER` resamples reach the observed statistic
        in each direction (neither p can then fall below ``alpha``), else after ``n_max``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> own, other = rng.normal(0.8, 0.3, 48), rng.normal(0.05, 0.3, 48)
        >>> test = contrast_test(own, other, scale=0.25)  # does the other lose < 1/4 of the own?
        >>> round(test.estimate, 2), test.p < 0.05, test.p_reverse > 0.5
        (0.11, True, True)
    """
    first = scale * np.asarray(own, dtype=float) - shift
    second = np.asarray(other, dtype=float)
    n1, n2 = first.size, second.size
    if n1 < 2 or n2 < 2 or not (np.isfinite(first).all() and np.isfinite(second).all()):
        return Contrast(*(math.nan,) * 7, 0)
    estimate = float(first.mean() - second.mean())
    t_obs, se, df = (float(v) for v in _welch(first, second))
    if se > 0:
        half = float(stats.t.isf(alpha / 2, df)) * se
        low, high = estimate - half, estimate + half
    else:
        low = high = estimate
    pooled = np.concatenate([first, second])
    if np.ptp(pooled) == 0:
        return Contrast(estimate, low, high, se, math.nan, 1.0, 1.0, 0)
    if not math.isfinite(t_obs):  # no spread in either sample: the ordering alone speaks
        t_obs = math.copysign(math.inf, estimate)
    splits = _splits(pooled.size, n1, seed, n_max)
    exact = math.comb(pooled.size, n1) <= n_max  # every split enumerated, the observed one among them
    up = down = seen = 0
    tolerance = 1e-9 * max(1.0, abs(t_obs)) if math.isfinite(t_obs) else 0.0
    for start in range(0, len(splits), CHUNK):
        resampled = pooled[splits[start : start + CHUNK]]
        t, _, _ = _welch(resampled[:, :n1], resampled[:, n1:])
        t = np.where(np.isnan(t), 0.0, t)  # a split with no spread and no difference
        hit_up, hit_down = t >= t_obs - tolerance, t <= t_obs + tolerance
        if not exact:
            reached = (np.cumsum(hit_up) + up >= STOP_AFTER) & (np.cumsum(hit_down) + down >= STOP_AFTER)
            stop = np.flatnonzero(reached)
            if stop.size:
                keep = int(stop[0]) + 1
                up += int(hit_up[:keep].sum())
                down += int(hit_down[:keep].sum())
                seen += keep
                break
        up += int(hit_up.sum())
        down += int(hit_down.sum())
        seen += len(t)
    extra = 0 if exact else 1  # random resamples count the observed split (scipy's convention)
    return Contrast(
        estimate, low, high, se, df, (up + extra) / (seen + extra), (down + extra) / (seen + extra), seen
    )
