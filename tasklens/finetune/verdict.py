"""The fine-tuning verdicts: does fine-tuning only a task's neurons limit forgetting, and does
the similarity of two tasks' neurons predict transfer between them?

Three tests, each exact under its null hypothesis and never giving p = 0:

- **against random neurons** (`against_random`): a condition's outcome on the task neurons (its
  mean over the seeds) against the same outcome of each of ``r`` random-neuron draws (each a
  mean over the same seeds): the Monte Carlo p-value ``(b + 1) / (r + 1)``
  (`tasklens.analysis.stats.monte_carlo_p`), never below ``1 / (r + 1)``;
- **against SeqFT** (`against_seqft`): NCFT or W-NCFT minus SeqFT, paired by seed, by an exact
  sign-flip permutation test over the seeds (`scipy.stats.permutation_test`), never below
  ``1 / 2^S`` with S seeds;
- **similarity predicts transfer** (`transfer_correlation`): Spearman's rho between a similarity
  of two tasks' neurons and the transfer from one to the other over the ordered task pairs,
  tested by relabelling the tasks of the transfer matrix (a Mantel test, through
  `scipy.stats.permutation_test`), never below ``1 / T!`` with T tasks. Permuting the pairs
  instead would treat the pairs as independent, which they are not (pairs that share a task
  share its effects): its false-positive rate exceeds the nominal one (tests/unit).

`judge` puts a page's claims under one error control (`tasklens.analysis.verdict.family`) and
words each verdict (`verdict_words`): "supported", "not supported: why" only when the test had
the power, else "underpowered: why", naming the flag that would give it the power.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from tasklens.analysis.stats import ALPHA, monte_carlo_p
from tasklens.analysis.verdict import check_alpha, family, verdict_words
from tasklens.errors import TasklensError

#: the power the detectable effects are computed for
POWER = 0.8
#: what a claim that passes is called
WHAT = "supported"
#: the paper's gap between NCFT and SeqFT (Llama-2-7B, standard benchmark: 71.3 vs 47.1 CL)
PAPER_GAP = 71.3 - 47.1
#: the fewest tasks the interval of a transfer correlation resamples (with fewer, most resamples
#: repeat a task and leave too few distinct pairs to rank)
MIN_BOOTSTRAP_TASKS = 5
#: resamples of the relabelling test when T! is larger, and of the bootstrap over tasks
N_RESAMPLES = 9999


def _z() -> float:
    return float(stats.norm.isf(ALPHA) + stats.norm.ppf(POWER))


def detectable_value(null: np.ndarray, alpha: float = ALPHA) -> float:
    """The value an observation must exceed for a Monte Carlo p below ``alpha`` against ``null``
    (inf when ``1 / (r + 1)`` cannot go below it).

    >>> detectable_value(np.arange(39.0))  # 1 of 39 may be as large: (1 + 1) / 40 = 0.05, not below
    38.0
    >>> detectable_value(np.arange(19.0))
    inf
    """
    null = np.sort(np.asarray(null, dtype=float)[np.isfinite(null)])[::-1]
    allowed = math.ceil(alpha * (null.size + 1) - 1) - 1  # draws at least as large that keep p < alpha
    if allowed < 0:
        return math.inf
    return float(null[allowed]) if allowed < null.size else -math.inf


def against_random(task: np.ndarray, random: np.ndarray, better: int = 1, alpha: float = ALPHA) -> dict:
    """The task neurons' outcome against random-neuron draws.

    Args:
        task: the task neurons' outcome per seed ``[seed]``.
        random: each draw's outcome per seed ``[draw, seed]`` (the same seeds).
        better: +1 when a larger outcome is better, -1 when a smaller one is.

    Returns:
        ``value`` (mean over seeds), ``reference`` (the draws' mean), ``p_value`` (one-sided, the
        task neurons better), ``n_null`` (draws), ``exceedances`` (draws at least as good),
        ``p_floor`` (``1 / (r + 1)``) and ``detectable``: the value the task neurons must beat for
        p < ``alpha`` (inf with fewer than 20 draws at 0.05).

    >>> rng = np.random.default_rng(0)
    >>> drawn = rng.normal(50, 2, size=(39, 2))
    >>> round(against_random(np.array([70.0, 72.0]), drawn)["p_value"], 3)  # better than all 39 draws
    0.025
    >>> against_random(np.array([50.0, 49.0]), drawn)["p_value"] > 0.05
    True
    """
    task, random = np.asarray(task, dtype=float), np.asarray(random, dtype=float)
    if random.ndim != 2 or random.shape[1] != task.size:
        raise TasklensError(f"random draws must be [draw, seed] with {task.size} seeds, got {random.shape}")
    value, null = float(task.mean()), random.mean(axis=1)
    signed = better * null
    return {
        "value": value,
        "reference": float(null.mean()) if null.size else math.nan,
        "p_value": monte_carlo_p(better * value, signed),
        "n_null": int(null.size),
        "exceedances": int(np.sum(signed >= better * value)),
        "p_floor": 1 / (null.size + 1),
        "detectable": better * detectable_value(signed, alpha),
    }


def against_seqft(neurons: np.ndarray, seqft: np.ndarray, better: int = 1, alpha: float = ALPHA) -> dict:
    """A neuron method against SeqFT, paired by seed: an exact sign-flip test of the mean
    difference (over all ``2^S`` flips when there are at most `N_RESAMPLES`).

    Returns:
        ``value`` (the neuron method's mean), ``reference`` (SeqFT's), ``p_value`` (one-sided),
        ``n_null`` (sign flips), ``p_floor`` and ``detectable``: the mean difference the test
        detects with 80 % power (normal approximation; NaN with one seed).

    >>> round(against_seqft(np.array([60.0, 62, 61, 63, 64]), np.array([40.0, 41, 39, 42, 40]))["p_value"], 4)
    0.0312
    """
    neurons, seqft = np.asarray(neurons, dtype=float), np.asarray(seqft, dtype=float)
    if neurons.shape != seqft.shape or neurons.ndim != 1:
        raise TasklensError(f"Both methods need one outcome per seed, got {neurons.shape} and {seqft.shape}")
    diff = better * (neurons - seqft)
    if np.ptp(diff) == 0 and diff.size and diff[0] == 0:
        p, flips = 1.0, 2**diff.size
    elif diff.size == 1:  # two flips: the observed sign and its opposite
        p, flips = (0.5 if diff[0] > 0 else 1.0), 2
    else:
        test = stats.permutation_test(
            (better * neurons, better * seqft),
            lambda a, b, axis=-1: (a - b).mean(axis=axis),
            permutation_type="samples",
            alternative="greater",
            vectorized=True,
            n_resamples=N_RESAMPLES,
            rng=0,
        )
        p, flips = float(test.pvalue), int(test.null_distribution.size)
    sd = float(diff.std(ddof=1)) if diff.size > 1 else math.nan
    return {
        "value": float(neurons.mean()),
        "reference": float(seqft.mean()),
        "p_value": p,
        "n_null": flips,
        "exceedances": math.nan,
        "p_floor": 1 / flips if flips == 2**diff.size else 1 / (flips + 1),
        "detectable": float(stats.norm.isf(alpha) + stats.norm.ppf(POWER)) * sd / math.sqrt(diff.size),
    }


def _spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of ``x`` with each row of ``y`` (``[..., n]``)."""
    rx = stats.rankdata(x)
    ry = stats.rankdata(y, axis=-1)
    rx, ry = rx - rx.mean(), ry - ry.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(-1) / np.sqrt((rx**2).sum() * (ry**2).sum(-1))


def pair_matrices(
    pairs: pd.DataFrame, measure: str, transfer: str = "transfer"
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The tasks and the ``[T, T]`` matrices of ``measure`` and ``transfer`` (NaN on the diagonal)
    from one row per ordered pair (``task_a`` trained, ``task_b`` evaluated)."""
    tasks = sorted(set(pairs.task_a) | set(pairs.task_b))
    index = {t: i for i, t in enumerate(tasks)}
    x, y = np.full((len(tasks),) * 2, np.nan), np.full((len(tasks),) * 2, np.nan)
    for a, b, s, t in zip(pairs.task_a, pairs.task_b, pairs[measure], pairs[transfer], strict=True):
        x[index[a], index[b]], y[index[a], index[b]] = s, t
    return tasks, x, y


def transfer_correlation(
    pairs: pd.DataFrame,
    measure: str,
    transfer: str = "transfer",
    alpha: float = ALPHA,
    seed: int = 0,
    n_boot: int = 2000,
) -> dict:
    """Does ``measure`` (the overlap or parameter similarity of two tasks' neurons) predict the
    ``transfer`` from one task to the other? Spearman's rho over the ordered pairs, a one-sided
    relabelling (Mantel) p-value and a bootstrap interval over tasks.

    Every ordered pair of the tasks must have both values.

    Returns:
        ``value`` (rho), ``low`` / ``high`` (percentile bootstrap resampling the tasks; NaN with
        fewer than `MIN_BOOTSTRAP_TASKS` tasks), ``p_value``,
        ``n_null`` (relabellings), ``p_floor``, ``n_tasks``, ``n_pairs`` and ``detectable``: the rho
        the test detects with 80 % power (normal approximation to the relabelling null).
        ``n_boot=0`` skips the interval (NaN).

    >>> tasks = list("abcdef")
    >>> rows = [(a, b, i + j, i + j) for i, a in enumerate(tasks) for j, b in enumerate(tasks) if a != b]
    >>> frame = pd.DataFrame(rows, columns=["task_a", "task_b", "jaccard", "transfer"])
    >>> test = transfer_correlation(frame, "jaccard")
    >>> test["value"], round(test["p_value"], 4), test["n_null"]  # only 1 of the 720 relabellings: 1/720
    (1.0, 0.0014, 720)
    """
    tasks, x, y = pair_matrices(pairs, measure, transfer)
    t = len(tasks)
    off = ~np.eye(t, dtype=bool)
    if t < 3 or not (np.isfinite(x[off]).all() and np.isfinite(y[off]).all()):
        raise TasklensError(
            f"The transfer correlation needs every ordered pair of at least 3 tasks with {measure!r} and "
            f"{transfer!r}; got {len(pairs)} pairs over {t} tasks"
        )
    xs = x[off]
    if np.ptp(xs) == 0 or np.ptp(y[off]) == 0:  # Spearman's rho undefined: no p-value either
        raise TasklensError(
            f"The transfer correlation of {measure!r} is undefined: "
            f"{measure if np.ptp(xs) == 0 else transfer} is the same for every pair of tasks; "
            "train longer (--steps) or on other tasks"
        )

    def statistic(labels, axis=-1):
        labels = np.asarray(labels)
        flat = labels.reshape(-1, t)
        permuted = y[flat[:, :, None], flat[:, None, :]][:, off]
        return _spearman(xs, permuted).reshape(labels.shape[:-1])

    test = stats.permutation_test(
        (np.arange(t),),
        statistic,
        permutation_type="pairings",
        alternative="greater",
        vectorized=True,
        n_resamples=N_RESAMPLES,
        rng=seed,
    )
    exact = math.factorial(t) <= N_RESAMPLES
    null = test.null_distribution
    rho = float(statistic(np.arange(t)))
    rng = np.random.default_rng(seed)
    drawn = []
    for _ in range(n_boot if t >= MIN_BOOTSTRAP_TASKS else 0):
        pick = rng.integers(0, t, t)
        keep = pick[:, None] != pick[None, :]
        bx, by = x[pick[:, None], pick[None, :]][keep], y[pick[:, None], pick[None, :]][keep]
        if bx.size >= 3:
            drawn.append(float(_spearman(bx, by[None])[0]))
    drawn = np.array(drawn)
    drawn = drawn[np.isfinite(drawn)]
    low, high = (
        np.percentile(drawn, [100 * alpha / 2, 100 * (1 - alpha / 2)]) if drawn.size else (math.nan,) * 2
    )
    return {
        "value": rho,
        "low": float(low),
        "high": float(high),
        "p_value": float(test.pvalue),
        "n_null": int(null.size),
        "exceedances": math.nan,
        "p_floor": 1 / null.size if exact else 1 / (null.size + 1),
        "n_tasks": t,
        "n_pairs": int(off.sum()),
        "detectable": float(stats.norm.isf(alpha) + stats.norm.ppf(POWER)) * float(np.std(null)),
    }


# --- a page of claims --------------------------------------------------------------------------


def draws_needed(tests: int, alpha: float = ALPHA) -> int:
    """The fewest random draws whose smallest p, ``1 / (r + 1)``, is below ``alpha / tests`` (the
    threshold the smallest p of a page of ``tests`` faces under Benjamini-Hochberg or Holm).

    >>> draws_needed(1), draws_needed(12)
    (20, 240)
    """
    return math.floor(round(tests / alpha, 9)) if tests >= 1 else 0


def seeds_needed(tests: int, alpha: float = ALPHA) -> int:
    """The fewest seeds whose sign-flip floor ``1 / 2^S`` is below ``alpha / tests``.

    >>> seeds_needed(1), seeds_needed(20)
    (5, 9)
    """
    return math.floor(math.log2(tests / alpha)) + 1


def tasks_needed(tests: int, alpha: float = ALPHA) -> int:
    """The fewest tasks whose relabelling floor ``1 / T!`` is below ``alpha / tests``.

    >>> tasks_needed(1), tasks_needed(20)
    (4, 6)
    """
    t = 2
    while 1 / math.factorial(t) >= alpha / tests:
        t += 1
    return t


def _power(row: pd.Series, tests: int, alpha: float) -> tuple[bool, str]:
    """``(decisive, why)`` for a claim that is not significant alone, or ``(False, "")`` for one
    that is (a page's correction that undoes it then reads "underpowered: significant alone, not
    after correction")."""
    p, floor = float(row.p_value), float(row.p_floor)
    if p < alpha:
        return False, ""
    test = row.test
    if test == "random draws":
        r, b = int(row.n_null), int(row.exceedances)
        flag = f"--random-draws {draws_needed(tests, alpha)}"
        if floor >= alpha:
            return False, f"{r} random draws cannot give p < {alpha:g}; pass {flag}"
        if proportion_confint(b, r, alpha=2 * alpha, method="beta")[0] > alpha:
            return True, f"no better than random neurons ({b} of {r} draws as good, p = {p:.2g})"
        return False, f"{r} random draws leave it open (p = {p:.2g}); pass {flag}"
    if test == "seeds":
        seeds = int(row.n_seeds)
        flag = f"--seeds {seeds_needed(tests, alpha)}"
        if floor >= alpha:
            return False, f"{seeds} seeds cannot give p < {alpha:g} (a sign flip per seed); pass {flag}"
        if row.detectable <= PAPER_GAP:
            return (
                True,
                f"no higher than SeqFT (p = {p:.2g}; the paper's gap, {PAPER_GAP:.1f} points, "
                "was detectable)",
            )
        return (
            False,
            f"the seeds detect only gaps above {row.detectable:.0f} points (p = {p:.2g}); pass {flag}",
        )
    if test == "task relabelling":
        t = int(row.n_tasks)
        flag = f"--transfer-tasks with {tasks_needed(tests, alpha)} tasks"
        if floor >= alpha:
            return False, f"{t} tasks allow {int(row.n_null)} relabellings, so p >= {floor:.2g}; pass {flag}"
        if row.detectable <= 1:
            return True, f"transfer does not rise with it (Spearman {row.value:.2f}, p = {p:.2g})"
        return False, f"{t} tasks detect no correlation below 1 (p = {p:.2g}); pass {flag}"
    raise TasklensError(f"Unknown test {test!r}")


def judge(claims: pd.DataFrame, method: str = "bh", alpha: float = ALPHA, name: str = "") -> pd.DataFrame:
    """A page's claims (one row per test: ``test``, ``p_value``, ``p_floor``, ``n_null`` and the
    test's other columns) with ``p_adjusted`` and ``family`` (`family`: every claim together),
    ``decisive``, ``reason`` and ``verdict`` (`verdict_words`, with "supported" for a claim that
    passes)."""
    alpha = check_alpha(alpha)
    adjusted = family(claims["p_value"].to_numpy(dtype=float), method, alpha, name)
    out = claims.copy()
    out["p_adjusted"] = adjusted.adjusted
    out["family"] = adjusted.label
    judged = [
        _power(row, adjusted.size, alpha)
        if math.isfinite(row.p_value)
        else (False, str(row.get("reason", "")))
        for _, row in out.iterrows()
    ]
    out["decisive"] = [d for d, _ in judged]
    out["reason"] = [r for _, r in judged]
    out["verdict"] = [
        verdict_words(p, d, r, alpha, WHAT)
        for p, d, r in zip(out.p_adjusted, out.decisive, out.reason, strict=True)
    ]
    return out


def _intervals(outcomes, condition, reference, outcome) -> dict[str, float]:
    low, high = outcomes.interval(*condition, outcome)
    reference_low, reference_high = outcomes.interval(*reference, outcome)
    return {"low": low, "high": high, "reference_low": reference_low, "reference_high": reference_high}


def claims_of(
    outcomes, pairs: pd.DataFrame | None, measures: Sequence[str], alpha: float = ALPHA
) -> pd.DataFrame:
    """Every claim the fine-tuning page tests, from `tasklens.finetune.outcomes.Outcomes` and the
    transfer pairs: for NCFT and W-NCFT, each outcome on the task neurons against random neurons
    and the final accuracy against SeqFT; and whether each of ``measures`` predicts transfer."""
    from tasklens.finetune.outcomes import OUTCOMES

    rows = []
    conditions = set(outcomes.conditions())
    for method in ("NCFT", "W-NCFT"):
        if (method, "task") not in conditions:
            continue
        task = outcomes.per_run(method, "task")
        for outcome, better in OUTCOMES.items():
            if (method, "random") in conditions:
                random = outcomes.per_run(method, "random")
                test = against_random(task[outcome][0], random[outcome], better, alpha)
                diff = outcomes.difference((method, "task"), (method, "random"), outcome)
                rows.append(
                    {"claim": f"{method} on task neurons beats random neurons", "outcome": outcome,
                     "test": "random draws", "compared": f"{method} on random neurons", **test,
                     **_intervals(outcomes, (method, "task"), (method, "random"), outcome),
                     "difference": diff[0], "difference_low": diff[1], "difference_high": diff[2],
                     "n_seeds": task[outcome].shape[1]}
                )  # fmt: skip
        if ("SeqFT", "full") in conditions:
            seqft = outcomes.per_run("SeqFT", "full")["accuracy"][0]
            test = against_seqft(task["accuracy"][0], seqft, 1, alpha)
            diff = outcomes.difference((method, "task"), ("SeqFT", "full"), "accuracy")
            rows.append(
                {"claim": f"{method} on task neurons beats SeqFT", "outcome": "accuracy", "test": "seeds",
                 "compared": "SeqFT", **test,
                 **_intervals(outcomes, (method, "task"), ("SeqFT", "full"), "accuracy"),
                 "difference": diff[0], "difference_low": diff[1], "difference_high": diff[2],
                 "n_seeds": seqft.size}
            )  # fmt: skip
    if pairs is not None and len(pairs):
        for measure in measures:
            try:
                test = transfer_correlation(pairs, measure, alpha=alpha)
            except TasklensError as error:  # e.g. a similarity undefined for some pair
                test = {"p_value": math.nan, "reason": str(error).split(";")[0]}
            rows.append(
                {"claim": f"{measure} of two tasks' neurons predicts transfer", "outcome": "transfer",
                 "test": "task relabelling", "compared": "relabelled tasks", **test}
            )  # fmt: skip
    return pd.DataFrame(rows)
