"""The specificity verdict: the own task falls beyond random sets and the other tasks are spared.

Every effect is on a common scale: the fraction of a task's gap between the unmodified model's
value and its measured no-information floor that the set removes, **capped at 1** (a task cannot
lose more than its whole gap; `TaskCells.capped`). A task whose gap is not above its floor, or
whose gap's standard error exceeds `GAP_ERROR` of it, is not tested. For a set found for task
``t`` (see docs/statistics.md):

(a) ``t`` falls more than under random sets of the same per-layer counts: a Monte Carlo p-value
    ``(b + 1) / (n + 1)`` over the ``n`` random sets (`monte_carlo_p`), exact when the set is
    exchangeable with them, never below ``1 / (n + 1)``;
(b) ``t`` falls more than every other task ``k``;
(s) every other task is **spared**: it loses at most `spare_limit` of its gap, a quarter of the
    own effect (`SPARE_SHARE`) and at least `SPARE_GAP` less than it.

(b) and (s) are studentized permutation tests of the tasks' per-prompt pseudo-values, which
carry the floor's uncertainty (`tasklens.analysis.contrasts`); (s) is a non-inferiority test at
each margin (the upper confidence bound of the other task's effect below the limit). Levels:
*specific* = (a), (b) and (s) (``p_value``, the largest of the three: an intersection-union
test); *preferential* = (a) and (b) but some task not shown spared (``p_preferential``);
*breaks everything* = another task taken to its floor; *not specific* = a failure shown by an
interval (the exceedances of (a) or the own effect's interval; another task's effect above the
limit, Bonferroni over the tasks); otherwise *underpowered*, with what would give the power.
`family` adjusts every p-value behind a page at once (Benjamini-Hochberg by default, or Holm).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from tasklens.analysis.contrasts import Contrast, contrast_test, gap_error, pseudo_values
from tasklens.analysis.stats import ALPHA, monte_carlo_p
from tasklens.errors import TasklensError

#: the power the smallest detectable effect is computed for
POWER = 0.8
#: resamples for permutation tests and bootstrap intervals
N_RESAMPLES = 999
#: how a page's p-values are adjusted together, by the name `family` takes
METHODS = {"bh": "fdr_bh", "holm": "holm"}
METHOD_NAMES = {"bh": "Benjamini-Hochberg", "holm": "Holm"}
#: a spared task loses at most this share of the own task's (capped) effect ...
SPARE_SHARE = 0.25
#: ... and at least this much less of its gap than the own task
SPARE_GAP = 0.1
#: a task's gap is too uncertain to normalise by when its standard error exceeds this share of it
GAP_ERROR = 0.2
#: the fewest prompts per task for (b) and the sparing test, whose level holds from there
MIN_PROMPTS = 12
#: how every page states the margin
MARGIN = (
    f"spared: another task loses at most {SPARE_SHARE:g} of the own effect and at least "
    f"{SPARE_GAP:g} of its gap less (effects capped at the floor)"
)


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
        """The normalised effect, uncapped (above 1: the task pushed past its floor)."""
        return normalised_effect(self.base, self.value, self.floor)

    def capped(self) -> float:
        """The normalised effect capped at 1: a task cannot lose more than its whole gap."""
        return min(self.effect(), 1.0)

    def reliable(self) -> bool:
        """Whether the gap is measured well enough to normalise by: above 0, with a standard
        error over the prompts (floor included) at most `GAP_ERROR` of it."""
        return bool(self.gap > 0) and gap_error(self.base, self.floors) <= GAP_ERROR * self.gap

    def pseudo(self) -> np.ndarray:
        """Per-prompt pseudo-values of the capped effect: the effect's (`contrasts.pseudo_values`)
        centred on `capped`, their spread scaled by the chance that the effect lies below the cap
        (the derivative of ``min(e, 1)`` averaged over the estimate's normal approximation), so a
        task far past its floor counts as at it, with no spread left."""
        effect, values = pseudo_values(self.base, self.value, self.floors)
        if not math.isfinite(effect):
            return values
        se = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else 0.0
        below = float(stats.norm.cdf((1.0 - effect) / se)) if se > 0 else float(effect < 1.0)
        return min(effect, 1.0) + (values - effect) * below

    def random_effects(self) -> np.ndarray:
        """Each random set's normalised effect (uncapped)."""
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


def _ratio(drop: np.ndarray, gap: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gap > 0, drop / gap, np.nan)


def effect_interval(cells: TaskCells, alpha: float = ALPHA, seed: int = 0) -> dict[str, float]:
    """The set's normalised effect and its excess over the random sets, with percentile
    bootstrap intervals resampling the prompts (with their floors) and the random sets together.

    Returns ``effect``, ``effect_low``, ``effect_high``, ``random_effect``, ``excess``,
    ``excess_low``, ``excess_high`` (NaN where the task has no gap above its floor), uncapped.
    When the random sets kept only their means, their part is resampled over sets alone.
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


def against_random(
    own: str, effect: float, drops: np.ndarray, alpha: float = ALPHA, effect_high: float = math.nan
) -> tuple[float, float, bool, str]:
    """(a): does the set lower task ``own`` more than its random sets (normalised ``drops``)?

    Returns ``(p, mde, decisive, reason)``: the Monte Carlo p-value, the smallest effect it
    calls significant (`monte_carlo_threshold`), whether a non-significant result is decisive
    and the words for a failure. A failure is decisive only on an interval: the exceedances
    seen put the true p above ``alpha`` with 95 % confidence (Clopper-Pearson), or the upper
    bound ``effect_high`` of the set's effect lies below the smallest significant effect. A p
    below ``alpha`` is not a failure: ``(p, mde, False, "")``, so a page's correction that undoes
    it reads "underpowered: significant alone, not after correction". A NaN effect or no random
    sets: ``(nan, nan, False, "not tested: ...")``.

    >>> against_random("t", 0.9, np.linspace(0.0, 0.1, 39))[2:]
    (False, '')
    >>> against_random("t", 0.05, np.linspace(0.0, 0.1, 39))[3]
    't falls no more than random sets (p = 0.5)'
    >>> against_random("t", float("nan"), np.linspace(0.0, 0.1, 39))[3]
    'not tested: no effect to test on t'
    """
    drops = np.asarray(drops, dtype=float)
    if not math.isfinite(effect):
        return math.nan, math.nan, False, f"not tested: no effect to test on {own}"
    if drops.size == 0 or not np.isfinite(drops).all():
        return math.nan, math.nan, False, f"not tested: no random sets on {own}"
    p = monte_carlo_p(effect, drops)
    mde = monte_carlo_threshold(drops, alpha)
    if p < alpha:  # significant alone: only a page's correction can undo it, which lacks power
        return p, mde, False, ""
    exceed = int(np.sum(drops >= effect))
    p_lowest = proportion_confint(exceed, drops.size, alpha=2 * alpha, method="beta")[0]
    if p_lowest > alpha or (math.isfinite(mde) and effect_high < mde):
        return p, mde, True, f"{own} falls no more than random sets (p = {p:.2g})"
    if 1 / (drops.size + 1) >= alpha:
        return p, mde, False, f"{drops.size} random sets cannot give p < {alpha:g}"
    return (
        p,
        mde,
        False,
        (
            f"random sets remove up to {mde:.2f} of the gap, near the set's {effect:.2f} (p = {p:.2g}); "
            "evaluate more random sets or prompts"
        ),
    )


def spare_limit(effect: float) -> float:
    """The most another task may lose, on the common scale, and still count as spared by a set
    whose capped own effect is ``effect``: at most `SPARE_SHARE` of it and at least `SPARE_GAP`
    below it.

    >>> spare_limit(0.8), round(spare_limit(0.12), 2)
    (0.2, 0.02)
    """
    return min(SPARE_SHARE * effect, effect - SPARE_GAP)


@dataclass(frozen=True)
class Comparison:
    """The set against one other ``task``: its capped ``effect`` there with interval
    ``low``..``high``; ``own_minus``, own minus that effect (`contrasts.Contrast`, the test of
    (b)); ``spared``, the larger p of the two margin tests (the task loses less than
    `spare_limit`); ``beyond``, the p that it loses more (Bonferroni over the two margins); the
    margin contrast of the binding limit (``margin``) for the interval and the power."""

    task: str
    effect: float
    uncapped: float
    low: float
    high: float
    own_minus: Contrast
    spared: float
    beyond: float
    margin: Contrast


def compare(own: TaskCells, task: str, other: TaskCells, alpha: float = ALPHA, seed: int = 0) -> Comparison:
    """(b) and the sparing test for one other task (module docstring), on capped pseudo-values.

    >>> flat, floor, none = np.full(16, -1.0), np.array([-5.0]), np.zeros((0, 16))
    >>> rng = np.random.default_rng(0)
    >>> mine = TaskCells(flat, flat - 3 + rng.normal(0, 0.5, 16), none, floor)
    >>> theirs = TaskCells(flat, flat + rng.normal(0, 0.5, 16), none, floor)
    >>> c = compare(mine, "u", theirs)
    >>> c.own_minus.p < 0.001, c.spared < 0.05, c.beyond > 0.5
    (True, True, True)
    """
    mine, theirs = own.pseudo(), other.pseudo()
    b = contrast_test(mine, theirs, 1.0, 0.0, alpha, seed)
    relative = contrast_test(mine, theirs, SPARE_SHARE, 0.0, alpha, seed)
    absolute = contrast_test(mine, theirs, 1.0, SPARE_GAP, alpha, seed)
    binding = relative if SPARE_SHARE * own.capped() <= own.capped() - SPARE_GAP else absolute
    se = float(theirs.std(ddof=1) / math.sqrt(theirs.size)) if theirs.size > 1 else math.nan
    half = float(stats.t.isf(alpha / 2, max(theirs.size - 1, 1))) * se
    effect = other.capped()
    return Comparison(
        task, effect, other.effect(), effect - half, min(effect + half, 1.0), b,
        max(relative.p, absolute.p), min(1.0, 2 * min(relative.p_reverse, absolute.p_reverse)), binding,
    )  # fmt: skip


@dataclass(frozen=True)
class Dissociation:
    """(b) for one set: ``p``, the largest p over the other tasks (NaN when there is none to
    compare with); ``comparisons`` by task; ``not_tested``, the tasks left out and why."""

    p: float
    comparisons: tuple[Comparison, ...]
    not_tested: tuple[str, ...]


def dissociation(
    own: str, tasks: Mapping[str, TaskCells], alpha: float = ALPHA, seed: int = 0
) -> Dissociation:
    """(b) and the sparing tests against every other task whose gap is reliable (`compare`);
    an intersection-union test, so the largest p is the test's. It needs no random sets, so
    `evaluation_matrices` runs it before drawing any (``at_stake``) with the same ``seed``
    `specificity_verdict` uses.

    >>> rng, floor, none = np.random.default_rng(0), np.array([-5.0]), np.zeros((0, 12))
    >>> base = rng.normal(-1.0, 0.2, 12)
    >>> cells = {"t": TaskCells(base, base - 3, none, floor), "u": TaskCells(base, base - 0.1, none, floor)}
    >>> test = dissociation("t", cells)
    >>> test.p < 0.001, round(test.comparisons[0].effect, 3)  # u loses 0.1 nats of its 4
    (True, 0.025)
    """
    comparisons, not_tested = [], []
    for i, (name, other) in enumerate(tasks.items()):
        if name == own:
            continue
        if other.value.size and other.base.size < MIN_PROMPTS:
            not_tested.append(f"{name} (fewer than {MIN_PROMPTS} prompts)")
            continue
        if not other.value.size or not other.reliable():
            why = "no gap above its floor" if not other.gap > 0 else "its gap is too uncertain"
            not_tested.append(f"{name} ({why})" if other.value.size else f"{name} (not evaluated)")
            continue
        comparisons.append(compare(tasks[own], name, other, alpha, seed + i + 1))
    p = max((c.own_minus.p for c in comparisons), default=math.nan)
    return Dissociation(float(p), tuple(comparisons), tuple(not_tested))


def at_stake(own: str, tasks: Mapping[str, TaskCells], alpha: float = ALPHA, seed: int = 0) -> bool:
    """Whether a set can still be called specific or preferential before any random set is
    drawn: (b) passes at ``alpha`` (`dissociation`, the same test and ``seed`` as the verdict's).

    A set that fails (b) fails the verdict whatever its random sets show, so `evaluation_matrices`
    gives it fewer. A page's correction keeps its level: it rejects only p-values below ``alpha``,
    each of which passed (b) and so drew the full sequence; the rest exceed ``alpha`` under either
    number of draws, and a p-value above ``alpha`` changes no Benjamini-Hochberg or Holm rejection.
    """
    cells = tasks.get(own)
    if cells is None or not math.isfinite(cells.effect()) or not cells.reliable():
        return False
    if cells.base.size < MIN_PROMPTS:
        return False
    return bool(dissociation(own, tasks, alpha, seed).p < alpha)


def _prompts_needed(test: Contrast, n: int, alpha: float) -> str:
    """Roughly how many prompts per task would make ``test`` (a margin contrast estimated above
    0) significant with `POWER`."""
    if not (test.estimate > 0 and test.se > 0):
        return ""
    factor = ((stats.norm.isf(alpha) + stats.norm.ppf(POWER)) * test.se / test.estimate) ** 2
    return f"about {math.ceil(n * factor)} prompts per task" if factor > 1 else ""


def specificity_verdict(
    own: str, tasks: Mapping[str, TaskCells], alpha: float = ALPHA, seed: int = 0
) -> dict[str, object]:
    """Test whether a set is specific to task ``own`` (module docstring).

    Args:
        own: the set's task, a key of ``tasks``.
        tasks: every task's `TaskCells` for this set.
        alpha: the level of each test, and of the power statements.

    Returns:
        A row: ``effect`` (own task, capped at 1) with ``effect_low``/``effect_high``,
        ``effect_uncapped``, ``random_effect`` and ``random_high`` (the random sets' mean and
        ``1 - alpha / 2`` quantile), ``p_random`` (a) over ``n_null`` random sets with
        ``p_floor`` (1 / (n + 1)) and ``at_floor``; ``worst``, the other task least spared, with
        ``worst_effect``/``worst_low``/``worst_high``; ``selectivity`` (own minus worst, capped)
        with its interval; ``spare_limit`` (the most a spared task may lose); ``p_others`` (b),
        ``p_spared`` (every other task spared), ``p_preferential`` (a and b) and ``p_value``
        (a, b and spared: specific); ``mde_random`` and ``mde_spared`` (the own effect and the
        margin past the limit detected with `POWER`); ``not_tested`` (other tasks left out),
        ``breaks`` (another task taken to its floor), ``unspared`` (words for a preferential
        verdict), ``decisive`` (a failure shown by an interval), ``reason``, ``needs``.
    """
    alpha = check_alpha(alpha)
    cells = tasks[own]
    drops = cells.random_effects()
    row: dict[str, object] = {"n_null": int(drops.size), "p_floor": 1 / (drops.size + 1), "reason": ""}
    row["random_high"] = float(np.percentile(drops, 100 * (1 - alpha / 2))) if drops.size else math.nan
    interval = effect_interval(cells, alpha, seed)
    effect = cells.capped()
    row.update(
        effect=effect,
        effect_low=min(interval["effect_low"], 1.0),
        effect_high=min(interval["effect_high"], 1.0),
        effect_uncapped=interval["effect"],
        random_effect=interval["random_effect"],
    )
    blank = (
        "p_random", "p_others", "p_spared", "p_preferential", "p_value", "mde_random", "mde_spared",
        "worst_effect", "worst_low", "worst_high", "selectivity", "selectivity_low", "selectivity_high",
    )  # fmt: skip
    row.update(dict.fromkeys(blank, math.nan), spare_limit=spare_limit(effect), at_floor=False)
    row.update(worst="", not_tested="", breaks="", unspared="", decisive=False, needs="")
    missing = [k for k, c in tasks.items() if not (np.isfinite(c.base).all() and np.isfinite(c.value).all())]
    if missing:
        row["reason"] = f"missing values (NaN) on {', '.join(missing)}"
        return row
    if not cells.gap > 0:
        row["reason"] = f"no gap between {own}'s unmodified value and its floor"
        return row
    if not cells.reliable():
        row["reason"] = f"{own}'s gap to its floor is too uncertain to normalise by (more prompts)"
        return row
    if cells.base.size < MIN_PROMPTS:
        row["reason"] = f"{cells.base.size} prompts on {own}; the comparisons need at least {MIN_PROMPTS}"
        return row
    p_random, mde_random, decisive_a, reason_a = against_random(
        own, cells.effect(), drops, alpha, interval["effect_high"]
    )
    if not math.isfinite(p_random):
        row["reason"] = reason_a.removeprefix("not tested: ")
        return row
    test = dissociation(own, tasks, alpha, seed)
    row["not_tested"] = ", ".join(test.not_tested)
    if not test.comparisons:
        row["reason"] = "no other task with a reliable gap above its floor to compare with"
        return row
    worst = max(test.comparisons, key=lambda c: (c.spared, c.effect))
    p_spared = max(c.spared for c in test.comparisons)
    row.update(
        p_random=p_random,
        at_floor=bool(p_random <= row["p_floor"] + 1e-12),
        mde_random=mde_random,
        p_others=test.p,
        p_spared=p_spared,
        p_preferential=max(p_random, test.p),
        p_value=max(p_random, test.p, p_spared),
        worst=worst.task,
        worst_effect=worst.effect,
        worst_low=worst.low,
        worst_high=worst.high,
        selectivity=worst.own_minus.estimate,
        selectivity_low=worst.own_minus.low,
        selectivity_high=worst.own_minus.high,
        mde_spared=worst.margin.detectable(alpha),
    )
    limit = row["spare_limit"]
    broken = [c for c in test.comparisons if c.uncapped >= 1.0]
    row["breaks"] = ", ".join(f"{c.task} ({c.uncapped:.2f} of its gap)" for c in broken)
    row["unspared"] = _first(
        [
            f"{c.task} loses {c.effect:.2f} of its gap (spared: at most {limit:.2f}, p = {c.spared:.2g})"
            for c in test.comparisons
            if c.spared >= alpha
        ]
    )
    failures = [(decisive_a, reason_a)] if p_random >= alpha else []
    failures += [_failure(c, effect, limit, alpha, alpha / len(test.comparisons)) for c in test.comparisons]
    failures = [f for f in failures if f is not None]
    if broken:
        failures.insert(0, (True, f"breaks everything: takes {row['breaks']} to its floor"))
    sure = [why for decisive, why in failures if decisive]
    row["decisive"] = bool(sure)
    row["reason"] = _first(sure or [why for _, why in failures])
    undecided = [c for c in test.comparisons if c.own_minus.p < alpha <= c.spared]
    if undecided and not sure:
        closest = max(undecided, key=lambda c: c.spared)
        row["needs"] = _prompts_needed(closest.margin, cells.base.size, alpha)
    return row


def _failure(
    c: Comparison, effect: float, limit: float, alpha: float, beyond: float
) -> tuple[bool, str] | None:
    """Why the set fails on task ``c.task``, and whether an interval shows it (``beyond``: the
    level of the test that the task loses more than allowed, or more than the own task), or None
    where it passes."""
    if c.own_minus.p < alpha and c.spared < alpha:
        return None
    if c.beyond < beyond:
        return (
            True,
            f"{c.task} not spared ({c.effect:.2f} of its gap vs {effect:.2f}; at most {limit:.2f} allowed)",
        )
    if c.own_minus.p >= alpha:
        if c.own_minus.p_reverse < beyond:
            return True, f"hurts {c.task} more than its own task ({c.effect:.2f} of its gap vs {effect:.2f})"
        return False, (
            f"not shown to lower its task more than {c.task} ({effect:.2f} vs {c.effect:.2f} of the gap, "
            f"p = {c.own_minus.p:.2g})"
        )
    return False, (
        f"too few prompts to tell whether {c.task} is spared "
        f"({c.effect:.2f} [{c.low:.2f}, {c.high:.2f}] of its gap, at most {limit:.2f} allowed)"
    )


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
    A p-value outside [0, 1] is an error.

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
    finite = np.isfinite(p)
    outside = p[finite & ((p < 0) | (p > 1))]
    if outside.size:
        raise TasklensError(
            f"p-values must lie in [0, 1] to be adjusted; got {outside.tolist()[:5]} "
            "(pass p-values, not statistics or log p-values)"
        )
    out = np.full_like(p, np.nan)
    if finite.any():
        out[finite] = multipletests(p[finite], alpha=alpha, method=METHODS[method])[1]
    return Family(out, method, name, int(finite.sum()), alpha)


def verdict_words(
    p_adjusted: float, decisive: bool, reason: str, alpha: float = ALPHA, what: str = "specific"
) -> str:
    """The words for one test that is not a specificity verdict (e.g. "beyond random sets"):
    ``what``, "not <what>: why", "underpowered: why" or "not tested: why" (NaN p). Never "not"
    for a test that lacked the power.

    >>> verdict_words(0.01, False, "", what="beyond random sets")
    'beyond random sets'
    >>> verdict_words(0.3, False, "10 random sets cannot give p < 0.05; draw at least 20")
    'underpowered: 10 random sets cannot give p < 0.05; draw at least 20'
    """
    if not math.isfinite(p_adjusted):
        return f"not tested: {reason.removeprefix('not tested: ')}" if reason else "not tested"
    if p_adjusted < alpha:
        return what
    if decisive:
        return f"not {what}: {reason}"
    return f"underpowered: {reason}" if reason else "underpowered: significant alone, not after correction"


#: the verdict levels, strongest first
LEVELS = ("specific", "preferential", "breaks everything", "not specific", "underpowered", "not tested")


def verdict_level(row: Mapping[str, object], alpha: float = ALPHA) -> tuple[str, str]:
    """A specificity row's level (`LEVELS`) and its words, from its adjusted p-values
    (``p_adjusted`` for specific, ``p_preferential_adjusted``) and the row's reasons.

    >>> verdict_level({"p_adjusted": 0.2, "p_preferential_adjusted": 0.01, "unspared": "u loses 0.6"})
    ('preferential', 'preferential: u loses 0.6')
    """
    text = lambda key: row.get(key) if isinstance(row.get(key), str) else ""  # noqa: E731 (CSV: NaN)
    reason, needs = text("reason"), text("needs")
    p = float(row.get("p_adjusted", math.nan))
    preferential = float(row.get("p_preferential_adjusted", math.nan))
    if not math.isfinite(p):
        return "not tested", f"not tested: {reason}" if reason else "not tested"
    if p < alpha:
        untested = text("not_tested")
        return "specific", "specific" + (f" (not tested: {untested})" if untested else "")
    if preferential < alpha:
        why = text("unspared") or (
            f"specific before the page's correction (p = {float(row.get('p_value', math.nan)):.2g}, "
            f"adjusted {p:.2g})"
        )
        return "preferential", f"preferential: {why}" + (f"; needs {needs}" if needs else "")
    if text("breaks"):
        return "breaks everything", f"breaks everything: takes {text('breaks')} to its floor"
    if bool(row.get("decisive")):
        return "not specific", f"not specific: {reason}"
    words = reason or "significant alone, not after correction"
    return "underpowered", f"underpowered: {words}" + (f"; needs {needs}" if needs else "")


def _without_random_sets(needs: str) -> str:
    """``needs`` without what an earlier page's correction asked of the random sets."""
    return "; ".join(p for p in needs.split("; ") if not re.fullmatch(r"at least \d+ random sets", p))


def apply_family(
    table: pd.DataFrame, method: str = "bh", alpha: float = ALPHA, name: str = ""
) -> tuple[pd.DataFrame, Family]:
    """A table of tests (`EvaluationResult.specificity` or `~EvaluationResult.against_random`,
    or several concatenated: one page's) with ``p_adjusted``, ``family``, ``level`` and
    ``verdict`` recomputed over all its rows together. Specificity rows (with
    ``p_preferential``) get `verdict_level`: "specific" adjusts ``p_value``, "preferential"
    adjusts ``p_preferential`` over the same tests; an underpowered row whose random sets hold
    its p at their floor ``needs`` the random sets that let it pass alone
    (`controls_needed`). Other rows name what their test finds in ``what``."""
    adjusted = family(table["p_value"].to_numpy(dtype=float), method, alpha, name)
    out = table.copy()
    out["p_adjusted"] = adjusted.adjusted
    out["family"] = adjusted.label
    needed = controls_needed(max(adjusted.size, 1), alpha)
    if {"n_null", "p_floor"} <= set(out):
        own = out["p_random"] if "p_random" in out else out["p_value"]
        at_floor = own <= out["p_floor"] * (1 + 1e-9)
        blocked = at_floor & (out["n_null"] < needed) & ~(out["p_adjusted"] < alpha)
    else:
        blocked = pd.Series(False, out.index)
    before = out["needs"] if "needs" in out else pd.Series("", out.index)
    own = [_without_random_sets(n) if isinstance(n, str) else "" for n in before]  # a page adjusted again
    out["needs"] = [
        "; ".join(filter(None, [f"at least {needed} random sets" if b else "", n]))
        for b, n in zip(blocked, own, strict=True)
    ]
    if "p_preferential" in out and out["p_preferential"].notna().any():
        preferential = out["p_preferential"].where(out["p_value"].notna())
        out["p_preferential_adjusted"] = family(preferential.to_numpy(dtype=float), method, alpha).adjusted
        levels = [verdict_level(row, alpha) for row in out.to_dict("records")]
    else:
        what = out["what"].fillna("specific") if "what" in out else pd.Series("specific", out.index)
        levels = []
        for p, d, r, w, n in zip(
            out["p_adjusted"], out["decisive"], out["reason"], what, out["needs"], strict=True
        ):
            words = verdict_words(p, bool(d), r if isinstance(r, str) else "", alpha, str(w))  # CSV: NaN
            underpowered = words.startswith("underpowered")
            levels.append((words.split(":")[0], words + (f"; needs {n}" if n and underpowered else "")))
    out["level"] = [level for level, _ in levels]
    out["verdict"] = [words for _, words in levels]
    return out, adjusted
