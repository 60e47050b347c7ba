"""The fine-tuning verdicts, calibrated on simulated runs: each test's false-positive rate on
simulated nulls is at most nominal (within a binomial tolerance), each finds planted effects,
no p-value is 0, and a page's verdicts say "underpowered" (naming the flag) where they must."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tasklens.errors import TasklensError
from tasklens.finetune import outcomes as outcomes_module
from tasklens.finetune import verdict as verdict_module
from tasklens.finetune.outcomes import Outcomes, sequence_outcomes
from tasklens.finetune.verdict import (
    against_random,
    against_seqft,
    claims_of,
    draws_needed,
    judge,
    seeds_needed,
    tasks_needed,
    transfer_correlation,
)

ALPHA = 0.05


def tolerance(n: int, rate: float = ALPHA) -> float:
    """The nominal rate plus three binomial standard errors over ``n`` simulations."""
    return rate + 3 * math.sqrt(rate * (1 - rate) / n)


@pytest.mark.parametrize("module", [outcomes_module, verdict_module], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert attempted > 0 and failed == 0


def test_outcomes_read_the_matrix_as_defined():
    # three tasks; rows: tasks, columns: stages
    a = np.array([[0.9, 0.5, 0.6], [0.2, 0.8, 0.3], [0.1, 0.4, 0.7]])
    zero = np.array([0.0, 0.1, 0.2])
    out = sequence_outcomes(a, zero)
    assert out["accuracy"] == pytest.approx(100 * (0.6 + 0.3 + 0.7) / 3)
    # task 1 fell from its best (0.9) to 0.6, task 2 from 0.8 to 0.3
    assert out["forgetting"] == pytest.approx(100 * ((0.9 - 0.6) + (0.8 - 0.3)) / 2)
    # task 2 before its stage: 0.2 (zero-shot 0.1); task 3: 0.4 (zero-shot 0.2)
    assert out["forward_transfer"] == pytest.approx(100 * ((0.2 - 0.1) + (0.4 - 0.2)) / 2)
    batch = sequence_outcomes(np.stack([a, a[::-1, ::-1]]), np.stack([zero, zero]))
    assert batch["accuracy"].shape == (2,) and batch["accuracy"][0] == pytest.approx(out["accuracy"])


# --- simulated runs --------------------------------------------------------------------------------


def simulate_outcomes(
    rng, n_sims: int, n_sets: int, seeds: int, shift: float = 0.0, skewed: bool = False, prompts: int = 30
) -> dict[str, np.ndarray]:
    """Outcomes ``[sim, set, seed]`` of simulated runs over three tasks: each set keeps a share
    ``r`` of what earlier tasks learned (a set-level effect, skewed with ``skewed``) and each seed
    adds noise; the prompts are Bernoulli draws. Set 0 (the task neurons) keeps ``shift`` more."""
    t = 3
    learned = np.array([0.8, 0.7, 0.9])
    if skewed:
        keep = np.clip(rng.lognormal(-1.6, 0.8, size=(n_sims, n_sets, 1)), 0, 1)
    else:
        keep = np.clip(rng.normal(0.3, 0.1, size=(n_sims, n_sets, 1)), 0, 1)
    keep[:, 0] = np.clip(keep[:, 0] + shift, 0, 1)
    keep = np.clip(keep + rng.normal(0, 0.05, size=(n_sims, n_sets, seeds)), 0, 1)
    p = np.zeros((n_sims, n_sets, seeds, t, t))
    zero = np.array([0.05, 0.05, 0.05])
    for j in range(t):
        for i in range(t):
            if i == j:
                p[..., i, j] = learned[i]
            elif i < j:  # learned, then kept in part
                p[..., i, j] = learned[i] * keep ** (j - i)
            else:
                p[..., i, j] = zero[i]
    matrix = rng.binomial(prompts, p) / prompts
    return sequence_outcomes(matrix, np.broadcast_to(zero, (*matrix.shape[:-2], t)))


@pytest.mark.parametrize("skewed", [False, True], ids=["symmetric", "skewed"])
def test_against_random_keeps_its_level_on_nulls_and_finds_planted_effects(skewed):
    """Skewed retention (a long tail of random sets that keep almost everything) is checked for
    its level only: how far a planted set stands out there depends on that tail."""
    rng = np.random.default_rng(1 if skewed else 0)
    n, draws, seeds = 1000, 39, 2
    checks = (("null", 0.0),) if skewed else (("null", 0.0), ("planted", 0.45))  # 4.5 sds of retention
    for check, shift in checks:
        sims = simulate_outcomes(rng, n, 1 + draws, seeds, shift, skewed)
        for outcome, better in (("accuracy", 1), ("forgetting", -1)):
            values = sims[outcome]
            p = np.array([against_random(v[0], v[1:], better)["p_value"] for v in values])
            assert p.min() >= 1 / (draws + 1)  # never 0
            rate = float(np.mean(p < ALPHA))
            if check == "null":
                # the exact rate of p = 1/40 is 1/40; ties between discrete accuracies only lower it
                assert rate <= tolerance(n, 1 / (draws + 1)), (outcome, rate)
            else:
                kind = "skewed" if skewed else "symmetric"
                print(f"power against 39 random draws, {outcome}, {kind}: {rate:.2f}")
                assert rate >= 0.8, (outcome, rate)


def test_fewer_than_twenty_draws_never_pass_and_say_so():
    rng = np.random.default_rng(2)
    sims = simulate_outcomes(rng, 200, 1 + 19, 2, shift=0.6)
    tests = [against_random(v[0], v[1:], 1) for v in sims["accuracy"]]
    assert min(t["p_value"] for t in tests) == pytest.approx(1 / 20)  # beats every draw: still 0.05
    assert all(math.isinf(t["detectable"]) for t in tests)
    page = judge(pd.DataFrame([{**tests[0], "test": "random draws", "n_seeds": 2}]))
    assert page.verdict[0] == "underpowered: 19 random draws cannot give p < 0.05; pass --random-draws 20"


def test_against_seqft_keeps_its_level_and_finds_the_papers_gap():
    rng = np.random.default_rng(3)
    n, seeds = 1000, 6
    seed_effect = rng.normal(0, 5, size=(n, seeds))  # shared by both methods of a seed
    seqft = 45 + seed_effect + rng.normal(0, 6, size=(n, seeds))
    null = 45 + seed_effect + rng.normal(0, 6, size=(n, seeds))
    p_null = np.array([against_seqft(a, b)["p_value"] for a, b in zip(null, seqft, strict=True)])
    assert p_null.min() >= 1 / 2**seeds and np.mean(p_null < ALPHA) <= tolerance(n)
    planted = null + 71.3 - 47.1
    p = np.array([against_seqft(a, b)["p_value"] for a, b in zip(planted, seqft, strict=True)])
    print(f"power of {seeds} seeds against SeqFT at the paper's gap: {np.mean(p < ALPHA):.2f}")
    assert np.mean(p < ALPHA) >= 0.8
    assert against_seqft(np.full(3, 50.0), np.full(3, 50.0))["p_value"] == 1.0


def task_pairs(rng, t: int, beta: float = 0.0) -> pd.DataFrame:
    """Ordered pairs of ``t`` tasks: a symmetric similarity and a transfer, each with task effects
    (pairs that share a task are alike), related by ``beta``."""
    w, u, v = rng.normal(size=t), rng.normal(size=t), rng.normal(size=t)
    noise = rng.normal(0, 0.5, size=(t, t))
    similarity = w[:, None] + w[None, :] + (noise + noise.T) / 2
    transfer = u[:, None] + v[None, :] + rng.normal(0, 0.5, size=(t, t)) + beta * similarity
    rows = [
        (a, b, similarity[a, b], transfer[a, b]) for a in range(t) for b in range(t) if a != b
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["task_a", "task_b", "jaccard", "transfer"])


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho row by row (``a`` and ``b`` ``[..., n]``, broadcast)."""
    ra, rb = stats.rankdata(a, axis=-1), stats.rankdata(b, axis=-1)
    ra, rb = ra - ra.mean(-1, keepdims=True), rb - rb.mean(-1, keepdims=True)
    return (ra * rb).sum(-1) / np.sqrt((ra**2).sum(-1) * (rb**2).sum(-1))


def test_the_transfer_correlation_keeps_its_level_where_permuting_pairs_does_not():
    rng = np.random.default_rng(4)
    n, t = 600, 6
    mantel, pairs_p = [], []
    for _ in range(n):
        frame = task_pairs(rng, t)
        mantel.append(transfer_correlation(frame, "jaccard", n_boot=0)["p_value"])
        x, y = frame.jaccard.to_numpy(), frame.transfer.to_numpy()
        naive = stats.permutation_test(
            (x, y), lambda a, b, axis=-1: rank_correlation(a, b),
            permutation_type="pairings", alternative="greater", n_resamples=199, vectorized=True, rng=0,
        )  # fmt: skip
        pairs_p.append(naive.pvalue)
    mantel, pairs_p = np.array(mantel), np.array(pairs_p)
    assert mantel.min() >= 1 / math.factorial(t)
    rates = np.mean(mantel < ALPHA), np.mean(pairs_p < ALPHA)
    print(f"false positives, relabelling tasks {rates[0]:.3f}, permuting pairs {rates[1]:.3f}")
    assert np.mean(mantel < ALPHA) <= tolerance(n)
    assert np.mean(pairs_p < ALPHA) > tolerance(n)  # pairs sharing a task are not exchangeable


def test_the_transfer_correlation_finds_a_planted_correlation():
    rng = np.random.default_rng(5)
    p = np.array(
        [
            transfer_correlation(task_pairs(rng, 6, beta=2.0), "jaccard", n_boot=0)["p_value"]
            for _ in range(300)
        ]
    )
    print(f"power of the relabelling test, 6 tasks, planted beta 2: {np.mean(p < ALPHA):.2f}")
    assert np.mean(p < ALPHA) >= 0.8


def test_too_few_tasks_are_underpowered_and_name_the_flag():
    rng = np.random.default_rng(6)
    test = transfer_correlation(task_pairs(rng, 3, beta=3.0), "jaccard")
    assert test["n_null"] == 6 and test["p_floor"] == pytest.approx(1 / 6) and test["p_value"] >= 1 / 6
    page = judge(pd.DataFrame([{**test, "test": "task relabelling"}]))
    assert page.verdict[0].startswith("underpowered: 3 tasks allow 6 relabellings")
    assert "--transfer-tasks with 4 tasks" in page.verdict[0]


def test_a_transfer_that_never_varies_is_not_tested_rather_than_p_zero():
    rng = np.random.default_rng(6)
    frame = task_pairs(rng, 4).assign(transfer=0.0)
    with pytest.raises(TasklensError, match="transfer is the same for every pair"):
        transfer_correlation(frame, "jaccard")
    cells, zero = simulated_cells(rng, draws=19, seeds=2, shift=0.3)
    claims = claims_of(Outcomes(cells, zero, n_resamples=50), frame, ["jaccard"])
    page = judge(claims, name="p")
    row = page[page.test == "task relabelling"].iloc[0]
    assert math.isnan(row.p_value) and math.isnan(row.p_adjusted)
    assert row.verdict.startswith("not tested: The transfer correlation of 'jaccard' is undefined")
    assert page.family[0].endswith(f"over the {len(page) - 1} tests of p")


# --- a page of claims -------------------------------------------------------------------------------


def test_a_page_of_nulls_keeps_its_error_rate_and_a_planted_page_passes():
    """Pages of eight claims against 199 random draws, under Benjamini-Hochberg: null pages call
    something "supported" at most at the nominal rate; planted claims are found."""
    rng = np.random.default_rng(7)
    n_pages, claims, draws = 200, 8, 199

    def page(shift: float) -> pd.DataFrame:
        sims = simulate_outcomes(rng, claims, 1 + draws, 2, shift)
        rows = [
            {**against_random(v[0], v[1:], 1), "test": "random draws", "n_seeds": 2} for v in sims["accuracy"]
        ]
        return judge(pd.DataFrame(rows), name="a simulated page")

    wrong = [bool((page(0.0).verdict == "supported").any()) for _ in range(n_pages)]
    assert np.mean(wrong) <= tolerance(n_pages)
    planted = page(0.4)
    assert (planted.verdict == "supported").mean() >= 0.8
    assert planted.family[0] == "Benjamini-Hochberg (q = 0.05) over the 8 tests of a simulated page"


def test_verdict_words_say_why():
    base = {"test": "random draws", "n_seeds": 2, "value": 40.0}
    rows = pd.DataFrame(
        [
            {**base, "p_value": 0.2, "p_floor": 0.2, "n_null": 4, "exceedances": 0},  # too few draws
            {**base, "p_value": 31 / 40, "p_floor": 1 / 40, "n_null": 39, "exceedances": 30},  # clearly not
            {**base, "p_value": 1 / 200, "p_floor": 1 / 200, "n_null": 199, "exceedances": 0},
            {
                **base,
                "p_value": math.nan,
                "p_floor": math.nan,
                "n_null": 0,
                "exceedances": 0,
                "reason": "no runs",
            },
        ]
    )
    page = judge(rows, name="p")
    assert (
        page.verdict[0]
        == f"underpowered: 4 random draws cannot give p < 0.05; pass --random-draws {draws_needed(3)}"
    )
    assert page.verdict[1].startswith("not supported: no better than random neurons (30 of 39 draws")
    assert page.verdict[2] == "supported"
    assert page.verdict[3] == "not tested: no runs" and page.family[0].endswith("over the 3 tests of p")
    assert (draws_needed(3), seeds_needed(3), tasks_needed(3)) == (60, 6, 5)


# --- from cells -------------------------------------------------------------------------------------


def simulated_cells(
    rng, draws: int, seeds: int, shift: float, prompts: int = 20
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cells as `ControlledContinual` writes them, for NCFT on task and random neurons and SeqFT."""
    tasks = ["a", "b", "c"]
    zero = pd.DataFrame(
        [{"task": t, "n_prompts": prompts, "mean": 0.0, "values": " ".join(["0"] * prompts)} for t in tasks]
    )
    rows = []
    runs = [("NCFT", "task", 0, shift), ("SeqFT", "full", 0, -0.2)] + [
        ("NCFT", "random", d, 0.0) for d in range(draws)
    ]
    for method, neurons, draw, extra in runs:
        keep = np.clip(rng.normal(0.3, 0.1) + extra, 0, 1)
        for seed in range(seeds):
            for stage in range(1, 4):
                for i, task in enumerate(tasks, start=1):
                    p = 0.0 if i > stage else 0.9 * np.clip(keep + rng.normal(0, 0.05), 0, 1) ** (stage - i)
                    values = rng.binomial(1, p, prompts)
                    rows.append({"method": method, "neurons": neurons, "draw": draw, "seed": seed, "lr": 1e-3,
                                 "order": "a > b > c", "stage": stage, "trained": tasks[stage - 1],
                                 "task": task, "n_prompts": prompts, "mean": values.mean(),
                                 "values": " ".join(str(v) for v in values)})  # fmt: skip
    return pd.DataFrame(rows), zero


def test_outcomes_from_cells_match_the_matrix_and_their_intervals_cover_them():
    rng = np.random.default_rng(8)
    cells, zero = simulated_cells(rng, draws=5, seeds=2, shift=0.3)
    outcomes = Outcomes(cells, zero, n_resamples=500)
    one = cells[(cells.neurons == "task") & (cells.seed == 1)]
    matrix = one.pivot(index="task", columns="stage", values="mean").to_numpy()
    expected = sequence_outcomes(matrix, np.zeros(3))
    per_run = outcomes.per_run("NCFT", "task")
    for name, value in expected.items():
        assert per_run[name][0, 1] == pytest.approx(value)
    table = outcomes.summary()
    assert set(zip(table.method, table.neurons, strict=True)) == {
        ("NCFT", "task"),
        ("SeqFT", "full"),
        ("NCFT", "random"),
    }
    assert ((table.low <= table.value + 1e-9) & (table.value <= table.high + 1e-9)).all()
    assert (table[table.neurons == "random"].n_draws == 5).all() and (table.n_seeds == 2).all()
    value, low, high = outcomes.difference(("NCFT", "task"), ("NCFT", "random"), "accuracy")
    assert low <= value <= high
    assert value == pytest.approx(
        per_run["accuracy"].mean() - outcomes.per_run("NCFT", "random")["accuracy"].mean()
    )


def test_the_pipeline_from_cells_finds_a_planted_set_and_passes_no_null_one():
    from tasklens.finetune.verdict import claims_of

    rng = np.random.default_rng(9)
    verdicts = {}
    for shift in (0.0, 0.6):
        cells, zero = simulated_cells(rng, draws=39, seeds=2, shift=shift)
        claims = claims_of(Outcomes(cells, zero, n_resamples=200), None, [])
        page = judge(claims[claims.test == "random draws"], name="x")
        verdicts[shift] = dict(zip(page.outcome, page.p_value, strict=True))
    assert verdicts[0.6]["accuracy"] == pytest.approx(1 / 40) and verdicts[0.6][
        "forgetting"
    ] == pytest.approx(1 / 40)
    assert verdicts[0.0]["accuracy"] > 1 / 40 or verdicts[0.0]["forgetting"] > 1 / 40
