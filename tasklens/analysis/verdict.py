"""The specificity verdict: a double dissociation on a common scale, tested without a normal model.

A neuron set is *specific* to its task ``t`` when all of these hold (see docs/statistics.md):

(a) it lowers ``t`` more than random sets of the same per-layer counts do: a Monte Carlo
    p-value ``(b + 1) / (n + 1)`` over the ``n`` random sets (`monte_carlo_p`), exact when the
    set is exchangeable with them, never below ``1 / (n + 1)``;
(b) it lowers ``t`` more than it lowers *every* other task ``k``, each comparison a one-sided
    permutation test of the per-prompt normalised changes (`scipy.stats.permutation_test`);
(c) both on a normalised scale: the fraction of the gap between the unmodified model's value
    and the task's no-information floor that the set removes (`normalised_effect`), so the
    headroom of a task does not decide the comparison.

The verdict's p-value is the largest of the components (an intersection-union test needs no
further correction). Each verdict carries the smallest effect it could detect with 80 % power;
a non-significant test without that power is "underpowered", never "not specific".
`family` adjusts every p-value behind a page at once (Benjamini-Hochberg by default, or Holm).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from tasklens.analysis.stats import ALPHA, monte_carlo_p
from tasklens.errors import TasklensError

#: the power the smallest detectable effect is computed for
POWER = 0.8
#: resamples for permutation tests and bootstrap intervals
N_RESAMPLES = 999
#: how a page's p-values are adjusted together, by the name `family` takes
METHODS = {"bh": "fdr_bh", "holm": "holm"}
METHOD_NAMES = {"bh": "Benjamini-Hochberg", "holm": "Holm"}


def check_alpha(alpha: float) -> float:
    """``alpha`` if it is a finite number strictly between 0 and 1, else a clear error.

    >>> check_alpha(0.05)
    0.05
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise TasklensError(f"alpha must be a number between 0 and 1 (exclusive), e.g. 0.05; got {alpha!r}")
    return float(alpha)


# --- the common scale ---------------------------------------------------------------------------


def normalised_effect(base: np.ndarray, value: np.ndarray, floor: float) -> float:
    """The fraction of the gap between the unmodified mean and ``floor`` that a change removes.

    1 takes the task to its no-information floor, 0 leaves it alone, negative values improve it;
    NaN when there is no gap (the model does no better than the floor) or no prompts.

    >>> normalised_effect(np.array([-1.0, -1.0]), np.array([-5.0, -7.0]), -11.0)
    0.5
    """
    if base.size == 0 or not math.isfinite(floor):
        return math.nan
    gap = float(base.mean()) - floor
    if not gap > 0:
        return math.nan
    return (float(base.mean()) - float(value.mean())) / gap


# --- Monte Carlo p-values -------------------------------------------------------------------------


@dataclass(frozen=True)
class SequentialP:
    """A sequential Monte Carlo p-value: ``p`` after ``n`` draws with ``exceedances`` of them at
    least the observation; ``stopped_early`` when ``h`` exceedances ended the sampling."""

    p: float
    n: int
    exceedances: int
    stopped_early: bool


def sequential_monte_carlo_p(
    observed: float, draw: Callable[[], float], h: int = 10, n_max: int = 999
) -> SequentialP:
    """Besag and Clifford's (1991) sequential Monte Carlo p-value.

    Draws null statistics one at a time (``draw()``, e.g. evaluate the next random set) and stops
    at ``h`` draws at least ``observed`` (p = h / n: a clearly null set stops after about ``h /
    p`` draws) or after ``n_max`` draws (p = (b + 1) / (n_max + 1)). The p-value is valid at any
    stopping point and never below ``1 / (n_max + 1)``.

    Args:
        observed: the statistic of the set tested (larger: more extreme).
        draw: returns the next null draw's statistic.
        h: exceedances that stop the sampling.
        n_max: the most draws.

    Returns:
        A `SequentialP`.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> null = sequential_monte_carlo_p(0.0, lambda: rng.normal(), h=5, n_max=99)
        >>> null.stopped_early, null.n < 30
        (True, True)
        >>> sequential_monte_carlo_p(9.0, lambda: rng.normal(), h=5, n_max=99).p
        0.01
    """
    if h < 1 or n_max < h:
        raise TasklensError(f"Sequential Monte Carlo needs 1 <= h <= n_max, got h={h}, n_max={n_max}")
    exceedances = 0
    for n in range(1, n_max + 1):
        exceedances += bool(draw() >= observed)
        if exceedances == h:
            return SequentialP(h / n, n, h, True)
    return SequentialP((exceedances + 1) / (n_max + 1), n_max, exceedances, False)


def sequential_draws(
    observed: Sequence[float] | np.ndarray,
    draw: Callable[[int], Sequence[float] | np.ndarray],
    h: int,
    n_max: int,
) -> np.ndarray:
    """Null draws for several statistics at once (one per metric), stopped Besag-Clifford style:
    after ``n_max`` draws, or once *every* statistic has ``h`` draws at least its ``observed``.

    ``draw(i)`` returns the ``i``-th draw's statistics (larger: more extreme). Returns the draws,
    ``[n x statistics]``. Each statistic's `monte_carlo_p` over them keeps its level: a stop
    before ``n_max`` leaves every statistic with ``h >= 1`` exceedances, so it happens only where
    the test with all ``n_max`` draws would not have rejected either (when ``(h + 1) / (n_max +
    1)`` is at least the level) and p is then at least ``(h + 1) / (n + 1)``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> draws = sequential_draws([0.0, 9.0], lambda i: rng.normal(size=2), h=3, n_max=39)
        >>> draws.shape  # the second statistic is extreme: all 39 draws are needed
        (39, 2)
        >>> sequential_draws([-5.0, -5.0], lambda i: rng.normal(size=2), h=3, n_max=39).shape
        (3, 2)
    """
    observed = np.asarray(observed, dtype=float)
    if h < 1 or n_max < h:
        raise TasklensError(f"Sequential Monte Carlo needs 1 <= h <= n_max, got h={h}, n_max={n_max}")
    rows, exceedances = [], np.zeros(observed.size, dtype=int)
    for i in range(n_max):
        row = np.asarray(draw(i), dtype=float)
        rows.append(row)
        exceedances += row >= observed
        if (exceedances >= h).all():
            break
    return np.array(rows).reshape(len(rows), observed.size)


def controls_needed(tests: int = 1, alpha: float = ALPHA) -> int:
    """The fewest random sets for which a Monte Carlo p-value can fall below ``alpha / tests``,
    the threshold the smallest p of a page of ``tests`` faces under Benjamini-Hochberg or Holm
    (``1 / (n + 1) < alpha / tests``); a set beyond all of them then passes its page alone.

    >>> controls_needed(), controls_needed(12)  # 1/20 = 0.05 is not below 0.05; 1/241 < 0.05/12
    (20, 240)
    """
    if isinstance(tests, bool) or not isinstance(tests, int) or tests < 1:
        raise TasklensError(f"tests must be a whole number >= 1, got {tests!r}")
    alpha = check_alpha(alpha)
    return math.floor(tests / Fraction(str(alpha)))  # exact: 1 / (n + 1) < alpha / tests


def monte_carlo_threshold(null: np.ndarray, threshold: float) -> float:
    """The smallest observation a Monte Carlo test against ``null`` calls significant below
    ``threshold`` (it must exceed the returned value); inf when ``1 / (n + 1)`` is not below it.

    >>> monte_carlo_threshold(np.arange(39.0), 0.05)  # 1 of 39 may exceed: (1 + 1) / 40 = 0.05
    38.0
    """
    null = np.sort(np.asarray(null, dtype=float)[np.isfinite(null)])[::-1]
    allowed = math.ceil(threshold * (null.size + 1) - 1) - 1  # exceedances that keep p < threshold
    if allowed < 0:
        return math.inf
    return float(null[allowed]) if allowed < null.size else -math.inf


# --- comparisons ------------------------------------------------------------------------------


def permutation_p(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """One-sided permutation test that ``a``'s mean exceeds ``b``'s (two independent samples).

    Returns ``(p, sd)``: the p-value over every split of the pooled values when there are at
    most `N_RESAMPLES` of them, else over `N_RESAMPLES` random splits counting the observed one
    (``(b + 1) / (n + 1)``, as `scipy.stats.permutation_test` does; drawn here in one array
    instead of one Python call per split, which the calibration suite's thousands of tests
    need); and the spread of the mean difference under the null, for the power calculation.

    >>> p, sd = permutation_p(np.array([1.0, 1.0]), np.array([0.0, 0.0]))
    >>> round(p, 4)  # 1 of the 6 splits of 4 prompts: no p below what the data can give
    0.1667
    """
    if a.size == 0 or b.size == 0:
        return math.nan, math.nan
    pooled = np.concatenate([a, b])
    if np.ptp(pooled) == 0:
        return 1.0, 0.0
    observed = a.mean() - b.mean()
    if math.comb(pooled.size, a.size) <= N_RESAMPLES:
        picks = np.array(list(itertools.combinations(range(pooled.size), a.size)))
        extra = 0
    else:
        rng = np.random.default_rng(seed)
        picks = rng.random((N_RESAMPLES, pooled.size)).argsort(axis=1)[:, : a.size]
        extra = 1
    sum_a = pooled[picks].sum(axis=1)
    null = sum_a / a.size - (pooled.sum() - sum_a) / b.size
    exceed = np.sum(null >= observed - 1e-12 * max(1.0, abs(observed)))
    return float((exceed + extra) / (null.size + extra)), float(null.std())


def sign_test_lower(own: np.ndarray, rival: np.ndarray) -> float:
    """One-sided exact sign test, paired by prompt, that ``own`` is lower than ``rival``: a
    binomial test of the prompts where they differ, which for 0/1 values is McNemar's exact test.

    >>> round(sign_test_lower(np.zeros(8), np.ones(8)), 4)  # 8 prompts cannot give less than 2 ** -8
    0.0039
    """
    diff = np.asarray(rival, dtype=float) - np.asarray(own, dtype=float)
    diff = diff[np.isfinite(diff)]
    lower, higher = int((diff > 0).sum()), int((diff < 0).sum())
    if lower + higher == 0:
        return 1.0
    return float(stats.binomtest(lower, lower + higher, 0.5, alternative="greater").pvalue)


# --- the verdict ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskCells:
    """One task's per-prompt values: unmodified ``base``, ``value`` with the set intervened,
    the random sets' ``random`` (``[run x prompt]``, or ``[run x 1]`` holding each run's mean
    when only means were kept) and ``floors``, the task's no-information floor per prompt (one
    value for a fixed floor such as exact match's 0)."""

    base: np.ndarray
    value: np.ndarray
    random: np.ndarray
    floors: np.ndarray

    @property
    def floor(self) -> float:
        return float(self.floors.mean()) if self.floors.size else math.nan

    @property
    def gap(self) -> float:
        return float(self.base.mean()) - self.floor if self.base.size else math.nan

    def per_prompt(self) -> np.ndarray:
        """Each prompt's change as a fraction of the task's gap (positive: the metric falls)."""
        return (self.base - self.value) / self.gap

    def effect(self) -> float:
        return normalised_effect(self.base, self.value, self.floor)

    def random_effects(self) -> np.ndarray:
        """Each random set's normalised effect."""
        if not self.random.size or not self.gap > 0:
            return np.zeros(0)
        return (float(self.base.mean()) - self.random.mean(axis=1)) / self.gap

    def resampled(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`N_RESAMPLES` bootstrap draws of the prompts: ``(prompts, base, gap)``, the drawn
        indices ``[draw x prompt]`` and each draw's unmodified mean and gap (the floor drawn
        with its prompts when it was measured per prompt)."""
        n = self.base.size
        prompts = rng.integers(0, n, size=(N_RESAMPLES, n))
        base = self.base[prompts].mean(axis=1)
        floor = self.floors[prompts].mean(axis=1) if self.floors.size == n else self.floor
        return prompts, base, base - floor

    def resampled_effects(self, rng: np.random.Generator) -> np.ndarray:
        """The normalised effect over `N_RESAMPLES` bootstrap draws (NaN where a draw has no gap)."""
        prompts, base, gap = self.resampled(rng)
        return _ratio(base - self.value[prompts].mean(axis=1), gap)


def _ratio(drop: np.ndarray, gap: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gap > 0, drop / gap, np.nan)


def effect_interval(cells: TaskCells, alpha: float = ALPHA, seed: int = 0) -> dict[str, float]:
    """The set's normalised effect and its excess over the random sets, with percentile
    bootstrap intervals resampling the prompts (with their floors) and the random sets together.

    Returns ``effect``, ``effect_low``, ``effect_high``, ``random_effect``, ``excess``,
    ``excess_low``, ``excess_high`` (NaN where the task has no gap above its floor). When the
    random sets kept only their means, their part is resampled over sets alone.
    """
    out = dict.fromkeys(
        ("effect", "effect_low", "effect_high", "random_effect", "excess", "excess_low", "excess_high"),
        math.nan,
    )
    if not cells.gap > 0 or cells.value.size != cells.base.size:
        return out
    rng = np.random.default_rng(seed)
    prompts, base, gap = cells.resampled(rng)
    value = cells.value[prompts].mean(axis=1)
    effect = _ratio(base - value, gap)
    tail = (100 * alpha / 2, 100 * (1 - alpha / 2))
    out["effect"] = cells.effect()
    out["effect_low"], out["effect_high"] = np.nanpercentile(effect, tail)
    runs = cells.random
    if runs.size:
        per_prompt = runs.shape[1] == cells.base.size
        kept = runs.mean(axis=1)
        means = (
            runs.T[prompts].mean(axis=1) if per_prompt else np.broadcast_to(kept, (N_RESAMPLES, len(runs)))
        )
        picked = rng.integers(0, len(runs), size=(N_RESAMPLES, len(runs)))
        random_mean = np.take_along_axis(means, picked, axis=1).mean(axis=1)
        excess = _ratio(random_mean - value, gap)  # the set's drop beyond the random sets' mean
        out["random_effect"] = float(cells.random_effects().mean())
        out["excess"] = out["effect"] - out["random_effect"]
        out["excess_low"], out["excess_high"] = np.nanpercentile(excess, tail)
    return {k: float(v) for k, v in out.items()}


def _compare(
    mine: np.ndarray, mine_drawn: np.ndarray, other: TaskCells, rng: np.random.Generator
) -> tuple[float, float]:
    """(b) for one other task: ``(p, sd)``, the larger p of a permutation test of the per-prompt
    normalised changes (which respects what few prompts can show) and a bootstrap test that
    also resamples each task's floor (whose estimate the permutation test takes as exact); the
    larger spread of the difference under either, for the power calculation."""
    p_perm, sd_perm = permutation_p(mine, other.per_prompt(), int(rng.integers(2**31)))
    difference = mine_drawn - other.resampled_effects(rng)
    difference = difference[np.isfinite(difference)]
    if difference.size == 0:
        return p_perm, sd_perm
    p_boot = float((1 + np.sum(difference <= 0)) / (1 + difference.size))
    return max(p_perm, p_boot), max(sd_perm, float(difference.std()))


def _minimum_detectable(sd: float, threshold: float) -> float:
    """The difference a one-sided test at ``threshold`` detects with `POWER` (normal approximation)."""
    return (stats.norm.isf(threshold) + stats.norm.ppf(POWER)) * sd


def against_random(
    own: str, effect: float, drops: np.ndarray, alpha: float = ALPHA
) -> tuple[float, float, bool, str]:
    """(a): does the set lower task ``own`` more than its random sets (normalised ``drops``)?

    Returns ``(p, mde, decisive, reason)``: the Monte Carlo p-value, the smallest effect it
    calls significant (`monte_carlo_threshold`), whether a non-significant result is decisive
    (that effect lies within reach, at most 1, or the exceedances seen already put the true p
    above ``alpha`` with 95 % confidence, Clopper-Pearson) and the words for a failure. A p
    below ``alpha`` is not a failure: ``(p, mde, False, "")``, so a page's correction that
    undoes it reads "underpowered: significant alone, not after correction".

    >>> against_random("t", 0.9, np.linspace(0.0, 0.1, 39))[2:]
    (False, '')
    >>> against_random("t", 0.05, np.linspace(0.0, 0.1, 39))[3]
    't falls no more than random sets (p = 0.5)'

    """
    p = monte_carlo_p(effect, drops)
    mde = monte_carlo_threshold(drops, alpha)
    if p < alpha:  # significant alone: only a page's correction can undo it, which lacks power
        return p, mde, False, ""
    exceed = int(np.sum(drops >= effect))
    p_lowest = proportion_confint(exceed, drops.size, alpha=2 * alpha, method="beta")[0]
    if mde <= 1 or p_lowest > alpha:
        return p, mde, True, f"{own} falls no more than random sets (p = {p:.2g})"
    if 1 / (drops.size + 1) >= alpha:
        return p, mde, False, f"{drops.size} random sets cannot give p < {alpha:g}; evaluate more"
    return (
        p,
        mde,
        False,
        (
            f"random sets remove up to {mde:.2f} of the gap, more than a perfect set's 1 (p = {p:.2g}); "
            "evaluate more random sets or prompts"
        ),
    )


@dataclass(frozen=True)
class Dissociation:
    """(b) for one set: ``p``, the largest p over the other tasks (NaN when there is none to
    compare with), from task ``closest`` whose effect is ``closest_effect``; ``margin``, the own
    effect minus the largest other; ``mde``, the smallest margin detected with `POWER`;
    ``compared``, the tasks compared; ``failures``, ``(decisive, why)`` per task it fails on."""

    p: float
    closest: str
    closest_effect: float
    margin: float
    mde: float
    compared: tuple[str, ...]
    failures: tuple[tuple[bool, str], ...]


def dissociation(
    own: str, tasks: Mapping[str, TaskCells], alpha: float = ALPHA, seed: int = 0
) -> Dissociation:
    """(b): does the set lower task ``own`` more than it lowers every other task? Each task with
    a gap above its floor is compared (`_compare`); an intersection-union test, so the largest p
    is the test's. It needs no random sets, so `evaluation_matrices` runs it before drawing any
    (``at_stake``) with the same ``seed`` `specificity_verdict` uses.

    >>> flat, floor, none = np.full(4, -1.0), np.array([-5.0]), np.zeros((0, 4))
    >>> cells = {"t": TaskCells(flat, flat - 3, none, floor), "u": TaskCells(flat, flat, none, floor)}
    >>> test = dissociation("t", cells)
    >>> round(test.p, 4), test.margin  # 4 prompts each: 1 of the 70 splits is as extreme
    (0.0143, 0.75)
    """
    cells = tasks[own]
    effect = cells.effect()
    others = {k: c for k, c in tasks.items() if k != own and c.gap > 0 and c.value.size}
    p_others, closest, closest_effect, mde_others = math.nan, "", math.nan, 0.0
    failures: list[tuple[bool, str]] = []
    mine = cells.per_prompt()
    mine_drawn = cells.resampled_effects(np.random.default_rng(seed))
    for i, (name, other) in enumerate(others.items()):
        p, sd = _compare(mine, mine_drawn, other, np.random.default_rng(seed + i + 1))
        mde_others = max(mde_others, _minimum_detectable(sd, alpha))
        if not p <= p_others:  # the largest p so far (also replaces NaN)
            p_others, closest, closest_effect = p, name, other.effect()
        if p >= alpha:
            # powered when it could detect a set doing to its own task what this one does, and
            # nothing to ``name``
            decisive = bool(_minimum_detectable(sd, alpha) <= effect)
            reason = f"hurts {name} as much ({other.effect():.2f} of its gap vs {effect:.2f}, p = {p:.2g})"
            failures.append((decisive, reason if decisive else f"{reason}; too few prompts to tell"))
    margin = effect - max(c.effect() for c in others.values()) if others else math.nan
    return Dissociation(
        float(p_others), closest, float(closest_effect), float(margin), float(mde_others), tuple(others),
        tuple(failures),
    )  # fmt: skip


def at_stake(own: str, tasks: Mapping[str, TaskCells], alpha: float = ALPHA, seed: int = 0) -> bool:
    """Whether a set can still be called specific before any random set is drawn: (b) passes at
    ``alpha`` (`dissociation`, the same test and ``seed`` as the verdict's).

    A set that fails (b) fails the verdict whatever its random sets show, so `evaluation_matrices`
    gives it fewer. A page's correction keeps its level: it rejects only p-values below ``alpha``,
    each of which passed (b) and so drew the full sequence; the rest exceed ``alpha`` under either
    number of draws, and a p-value above ``alpha`` changes no Benjamini-Hochberg or Holm rejection.
    """
    cells = tasks.get(own)
    if cells is None or not math.isfinite(cells.effect()):
        return False
    return bool(dissociation(own, tasks, alpha, seed).p < alpha)


def specificity_verdict(
    own: str, tasks: Mapping[str, TaskCells], alpha: float = ALPHA, seed: int = 0
) -> dict[str, object]:
    """Test whether a set is specific to task ``own`` (module docstring: (a), (b), (c)).

    Args:
        own: the set's task, a key of ``tasks``.
        tasks: every task's `TaskCells` for this set.
        alpha: the significance level the power is computed for.

    Returns:
        A row: ``effect`` (own task, normalised) and its interval, ``random_effect``, ``p_random``
        (a), ``n_null``, ``p_floor`` (1 / (n + 1)), ``p_others`` (the largest of (b)) with the
        task it came from (``closest``) and that task's ``closest_effect``, ``margin`` (own effect
        minus the largest other), ``p_value`` (the largest of all), ``mde_random`` and
        ``mde_others`` (the smallest own effect and margin the tests detect with 80 % power),
        ``decisive`` (a failing component had that power) and ``reason`` (why it fails, if so).
    """
    alpha = check_alpha(alpha)
    cells = tasks[own]
    row: dict[str, object] = {"n_null": len(cells.random), "reason": ""}
    row.update(effect_interval(cells, alpha, seed))
    effect = cells.effect()
    drops = cells.random_effects()
    row["p_floor"] = 1 / (drops.size + 1)
    blank = dict.fromkeys(
        ("p_random", "p_others", "closest_effect", "margin", "p_value", "mde_random", "mde_others"), math.nan
    )
    row.update(blank, closest="", decisive=False)
    missing = [k for k, c in tasks.items() if not (np.isfinite(c.base).all() and np.isfinite(c.value).all())]
    if missing:
        row["reason"] = f"missing values (NaN) on {', '.join(missing)}"
        return row
    if not math.isfinite(effect):
        row["reason"] = f"no gap between {own}'s unmodified value and its floor"
        return row
    if drops.size == 0 or not np.isfinite(drops).all():
        row["reason"] = "no random sets on the own task"
        return row
    p_random, mde_random, decisive, reason = against_random(own, effect, drops, alpha)
    failures: list[tuple[bool, str]] = [(decisive, reason)] if p_random >= alpha else []  # (decisive, why)

    test = dissociation(own, tasks, alpha, seed)
    failures += test.failures
    if not test.compared:
        row["reason"] = "no other task with a gap above its floor to compare with"
        return row
    decisive = [reason for sure, reason in failures if sure]
    row.update(
        p_random=p_random,
        p_others=test.p,
        closest=test.closest,
        closest_effect=test.closest_effect,
        margin=test.margin,
        p_value=max(p_random, test.p),
        mde_random=mde_random,
        mde_others=test.mde,
        decisive=bool(decisive),
        reason=_first(decisive or [r for _, r in failures]),
    )
    return row


def _first(reasons: list[str], shown: int = 2) -> str:
    """The first ``shown`` reasons, and how many more there are."""
    more = f"; and {len(reasons) - shown} more" if len(reasons) > shown else ""
    return "; ".join(reasons[:shown]) + more


def rival_test(own_values: np.ndarray, rivals: Mapping[str, np.ndarray]) -> tuple[str, float]:
    """On the own task's prompts: does any other task's set hurt them as much as the own set?

    Each rival is tested, paired by prompt, for the own set lowering the task more
    (`sign_test_lower`); returns the rival with the largest p (the closest) and that p
    (``("", NaN)`` without rivals). A large p says some other set hurts this task as much.
    """
    best, best_p = "", math.nan
    for name, values in rivals.items():
        p = sign_test_lower(own_values, values)
        if not p <= best_p:
            best, best_p = name, p
    return best, best_p


# --- one error rate per page ------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """p-values adjusted together: ``adjusted`` (NaN where untested), the ``method`` (``bh`` or
    ``holm``), the family's ``name`` and ``size`` (tests in it), and ``alpha``."""

    adjusted: np.ndarray
    method: str
    name: str
    size: int
    alpha: float

    @property
    def label(self) -> str:
        """How a page names its error control, e.g. "Benjamini-Hochberg (q = 0.05) over 12 tests"."""
        level = "q" if self.method == "bh" else "alpha"
        where = f" of {self.name}" if self.name else ""
        return f"{METHOD_NAMES[self.method]} ({level} = {self.alpha:g}) over the {self.size} tests{where}"


def family(
    p_values: Sequence[float] | np.ndarray, method: str = "bh", alpha: float = ALPHA, name: str = ""
) -> Family:
    """Adjust every p-value behind a page together: Benjamini-Hochberg (false discovery rate
    ``alpha``) by default, or Holm (family-wise error rate ``alpha``); NaN stays NaN, uncounted.

    >>> f = family([0.01, 0.04, 0.03, float("nan")], name="this page")
    >>> f.adjusted.round(2).tolist()[:3], f.size
    ([0.03, 0.04, 0.04], 3)
    >>> f.label
    'Benjamini-Hochberg (q = 0.05) over the 3 tests of this page'
    """
    alpha = check_alpha(alpha)
    if method not in METHODS:
        raise TasklensError(f"Unknown correction {method!r}; choose 'bh' (Benjamini-Hochberg) or 'holm'")
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = multipletests(p[finite], alpha=alpha, method=METHODS[method])[1]
    return Family(out, method, name, int(finite.sum()), alpha)


def verdict_words(
    p_adjusted: float, decisive: bool, reason: str, alpha: float = ALPHA, what: str = "specific"
) -> str:
    """The words for one verdict: ``what`` ("specific"), "not <what>: why", "underpowered: why"
    or "not tested: why" (NaN p). Never "not specific" for a test that lacked the power.

    >>> verdict_words(0.01, False, "")
    'specific'
    >>> verdict_words(0.3, False, "20 random sets cannot give p < 0.05; evaluate more")
    'underpowered: 20 random sets cannot give p < 0.05; evaluate more'
    """
    if not math.isfinite(p_adjusted):
        return f"not tested: {reason}" if reason else "not tested"
    if p_adjusted < alpha:
        return what
    if decisive:
        return f"not {what}: {reason}"
    return f"underpowered: {reason}" if reason else "underpowered: significant alone, not after correction"


def apply_family(
    table: pd.DataFrame, method: str = "bh", alpha: float = ALPHA, name: str = ""
) -> tuple[pd.DataFrame, Family]:
    """A table of tests (`EvaluationResult.specificity` or `~EvaluationResult.against_random`,
    or several concatenated: one page's) with ``p_adjusted``, ``family`` and ``verdict``
    recomputed over all its rows together; a ``what`` column, where present, names what each
    row's test finds when significant (default "specific")."""
    adjusted = family(table["p_value"].to_numpy(dtype=float), method, alpha, name)
    out = table.copy()
    out["p_adjusted"] = adjusted.adjusted
    out["family"] = adjusted.label
    what = out["what"].fillna("specific") if "what" in out else pd.Series("specific", out.index)
    out["verdict"] = [
        verdict_words(p, bool(d), r if isinstance(r, str) else "", alpha, str(w))  # a CSV's empty reason: NaN
        for p, d, r, w in zip(out["p_adjusted"], out["decisive"], out["reason"], what, strict=True)
    ]
    return out, adjusted
