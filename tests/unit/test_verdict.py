"""Calibration of the specificity verdict on simulated per-prompt data, through `EvaluationResult`.

Each simulated result holds the unmodified model, one set (named after the first task), its
random sets of the same size and each task's no-information floor, per prompt, as
`evaluation_matrices` records them. Null sets are drawn exactly like the random sets (the null
the Monte Carlo test assumes), with symmetric and with skewed effects; planted sets remove part
of their own task's gap and nothing else; the issue's three reproductions must not pass.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tasklens.analysis.matrix import BASELINE, EvaluationResult
from tasklens.analysis.stats import specificity_test
from tasklens.analysis.verdict import (
    apply_family,
    at_stake,
    check_alpha,
    family,
    monte_carlo_p,
    sequential_draws,
    sequential_monte_carlo_p,
    sign_test_lower,
    specificity_verdict,
)
from tasklens.errors import TasklensError

ALPHA = 0.05
N_NULL = 500


def _run_effect(rng, skewed: bool) -> float:
    """One random set's mean effect on a task (nats): small, and right-skewed in drop if asked."""
    return -float(rng.gamma(0.6, 0.25)) if skewed else float(rng.normal(0.0, 0.1))


def simulate(
    rng,
    set_values,
    base_means=(-2.0, -2.0, -2.0),
    floors=(-10.0, -10.0, -10.0),
    n_prompts: int = 30,
    n_random: int = 39,
    skewed: bool = False,
    n_sets: int = 1,
) -> EvaluationResult:
    """A logprob result on tasks a, b, c of ``n_sets`` sets, named after the first tasks.

    ``set_values(own, task, base, random_run)`` gives a set's per-prompt values on ``task`` (an
    index; ``own`` its own task's) from the unmodified ones; ``random_run(base)`` draws a random
    set's per-prompt values the way the random sets are drawn (so a null set may call it).
    """
    tasks = ["a", "b", "c"][: len(base_means)]

    def random_run(base):
        return base + _run_effect(rng, skewed) + rng.normal(0.0, 0.05, base.size)

    bases = [rng.normal(mean, 0.5, n_prompts) for mean in base_means]
    prompt_parts, control_parts = [], []
    for k, task in enumerate(tasks):
        prompt_parts.append((BASELINE, task, bases[k]))
        for own in range(n_sets):
            prompt_parts.append((tasks[own], task, set_values(own, k, bases[k], random_run)))
            runs = np.stack([random_run(bases[k]) for _ in range(n_random)])
            control_parts.append((tasks[own], task, runs))
    index = np.arange(n_prompts)

    def column(parts, size):
        return np.concatenate([np.repeat(p, size) for p in parts])

    frame = pd.DataFrame(
        {
            "set": column([p[0] for p in prompt_parts], n_prompts),
            "task": column([p[1] for p in prompt_parts], n_prompts),
            "prompt": np.tile(index, len(prompt_parts)),
            "value": np.concatenate([p[2] for p in prompt_parts]),
        }
    )
    per_prompt = pd.DataFrame(
        {
            "set": column([p[0] for p in control_parts], n_prompts * n_random),
            "task": column([p[1] for p in control_parts], n_prompts * n_random),
            "run": np.tile(np.repeat(np.arange(n_random), n_prompts), len(control_parts)),
            "prompt": np.tile(index, n_random * len(control_parts)),
            "value": np.concatenate([p[2].ravel() for p in control_parts]),
        }
    )
    floor = pd.DataFrame(
        {
            "task": np.repeat(tasks, n_prompts),
            "prompt": np.tile(index, len(tasks)),
            "value": np.concatenate([rng.normal(f, 1.0, n_prompts) for f in floors]),
        }
    )
    means = frame.groupby(["set", "task"])["value"].mean().unstack()
    runs = per_prompt.groupby(["set", "run", "task"])["value"].mean().reset_index()
    names = tasks[:n_sets]
    return EvaluationResult(
        metric="logprob",
        intervention={"kind": "zero"},
        baseline=means.loc[BASELINE],
        values=means.loc[names],
        controls=runs.groupby(["set", "task"])["value"].mean().unstack().loc[names],
        controls_std=runs.groupby(["set", "task"])["value"].std(ddof=0).unstack().loc[names],
        sizes=pd.Series(50, index=names),
        n_controls=n_random,
        prompt_values=frame,
        control_values=runs,
        control_prompt_values=per_prompt,
        floor_values=floor,
    )


def null_set(own, k, base, random_run):
    return random_run(base)


def upper_tolerance(n: int, rate: float = ALPHA) -> int:
    """The most false positives ``n`` tests at ``rate`` give with 99.9 % probability."""
    return int(stats.binom.ppf(0.999, n, rate))


def many(rng, set_values, n_tests: int, **options) -> pd.DataFrame:
    """``n_tests`` specificity rows: simulated results of three sets each, one per task."""
    results = [simulate(rng, set_values, n_sets=3, **options) for _ in range(math.ceil(n_tests / 3))]
    return pd.concat([r.specificity() for r in results]).iloc[:n_tests]


def test_null_sets_give_false_positives_at_most_at_the_nominal_rate():
    """>= 500 null sets drawn like the random sets, half with symmetric effects, half skewed."""
    rng = np.random.default_rng(1)
    start = time.time()
    table = pd.concat([many(rng, null_set, N_NULL // 2, skewed=skewed) for skewed in (False, True)])
    alarms = int((table["p_value"] < ALPHA).sum())  # before any correction: the per-test rate
    random_part = int((table["p_random"] < ALPHA).sum())
    print(
        f"\nnull sets: {alarms}/{len(table)} with p < {ALPHA}, {random_part}/{len(table)} beyond random sets "
        f"at {ALPHA} (nominal: at most {ALPHA * len(table):.0f}); {time.time() - start:.1f} s"
    )
    assert len(table) >= N_NULL and alarms <= upper_tolerance(len(table))
    # the Monte Carlo part is exact: 1 in 40 draws beats all 39 random sets (p = 1/40, the only p < 0.05)
    assert stats.binom.ppf(0.001, len(table), 1 / 40) <= random_part <= upper_tolerance(len(table), 1 / 40)
    assert (table["p_value"] >= 1 / 40).all()


def test_a_set_hurting_a_sibling_alike_is_at_most_nominally_often_specific():
    """The boundary of (b): the set removes the same share of its own task's gap and of the next
    task's (and nothing of the third), so the verdict rests on one comparison at its null."""
    rng = np.random.default_rng(3)

    def alike(own, k, base, random_run):
        share = 0.4 if k in (own, (own + 1) % 3) else 0.0
        return base - share * (base.mean() + 10.0) + rng.normal(0.0, 0.3, base.size)

    table = many(rng, alike, 150)
    alarms = int((table["p_value"] < ALPHA).sum())
    nominal = ALPHA * len(table)
    print(f"\nhurts a sibling alike: {alarms}/{len(table)} with p < {ALPHA} (nominal: at most {nominal:.0f})")
    assert (table["p_random"] < ALPHA).all()  # (a) holds: the verdict rests on (b)
    assert alarms <= upper_tolerance(len(table))


def test_planted_specific_sets_are_found():
    rng = np.random.default_rng(4)
    share = 0.3  # the set removes 30 % of its own task's gap and leaves the others alone

    def planted(own, k, base, random_run):
        gap = base.mean() + 10.0
        return random_run(base) - (share * gap if k == own else 0.0) + rng.normal(0.0, 0.5, base.size)

    table = many(rng, planted, 60, n_prompts=16)
    power = float((table["verdict"] == "specific").mean())
    print(f"\nplanted (30 % of the gap, 16 prompts, 39 random sets): power {power:.2f}")
    assert power >= 0.8
    assert table["effect"].median() == pytest.approx(share, abs=0.05)
    assert (table["mde_spared"] < share).all() and (table["mde_random"] < share).all()


def test_a_set_that_sends_every_task_to_the_same_floor_is_not_specific():
    """Reproduction 1: baselines -1, -4, -4 nats, every prompt of every task sent to about -18."""
    rng = np.random.default_rng(5)
    result = simulate(
        rng,
        lambda own, k, base, run: rng.normal(-18.0, 0.3, base.size),
        base_means=(-1.0, -4.0, -4.0),
        n_random=10,
    )
    row = result.specificity().loc["a"]
    assert row["level"] == "breaks everything" and row["p_value"] > 0.5 and row["effect"] == 1.0
    assert row["verdict"].startswith("breaks everything: takes b (")
    assert row["p_random"] == pytest.approx(1 / 11)  # it beats every random set, yet is not specific


def test_a_set_hurting_a_sibling_task_more_than_its_own_is_not_specific():
    """Reproduction 2: own -14.04 nats, the siblings -15.49 and -14.35 (base -2, floor -10): all
    past their floors, so it breaks everything. Above the floor, a sibling hurt more: not spared."""
    rng = np.random.default_rng(6)
    shifts = (-14.04, -15.49, -14.35)
    result = simulate(rng, lambda own, k, base, run: base + shifts[k] + rng.normal(0.0, 1.0, base.size))
    row = result.specificity().loc["a"]
    assert row["p_random"] == pytest.approx(1 / 40) and row["level"] == "breaks everything"
    assert row["effect"] == row["worst_effect"] == 1.0 and row["selectivity"] == pytest.approx(0.0)
    shares = (0.4, 0.6, 0.1)
    result = simulate(rng, lambda own, k, base, run: base - shares[k] * 8.0 + rng.normal(0.0, 0.3, base.size))
    row = result.specificity().loc["a"]
    assert row["worst"] == "b" and row["verdict"].startswith("not specific: b not spared (0.6")
    assert row["selectivity_high"] < 0


def test_a_set_that_only_improves_the_others_is_not_specific():
    """Reproduction 3: its own task moves like a random set's; the other tasks improve."""
    rng = np.random.default_rng(7)
    result = simulate(rng, lambda own, k, base, run: run(base) if k == 0 else base + 1.0, n_random=10)
    row = result.specificity().loc["a"]
    assert row["p_others"] < ALPHA  # (b) alone would pass
    assert row["verdict"].startswith("not specific: a falls no more than random sets")


def test_too_few_random_sets_make_a_verdict_underpowered_not_negative():
    rng = np.random.default_rng(8)

    def strong(own, k, base, random_run):
        return base - (6.0 if k == 0 else 0.0)

    row = simulate(rng, strong, n_random=10).specificity().loc["a"]
    assert row["p_value"] == pytest.approx(1 / 11) and math.isinf(row["mde_random"])
    assert row["verdict"] == (
        "underpowered: 10 random sets cannot give p < 0.05; needs at least 20 random sets"
    )
    assert simulate(rng, strong, n_random=39).specificity().loc["a", "verdict"] == "specific"


def test_missing_values_are_not_tested_and_alpha_is_checked():
    rng = np.random.default_rng(9)
    result = simulate(rng, null_set, n_random=20)
    result.floor_values = result.floor_values[result.floor_values["task"] != "a"]  # logprob: no floor
    row = result.specificity().loc["a"]
    assert row["verdict"].startswith("not tested: no gap") and math.isnan(row["p_adjusted"])
    holed = simulate(rng, null_set, n_random=20)
    last = holed.prompt_values.index[-1]  # set a's last prompt on task c
    holed.prompt_values.loc[last, "value"] = float("nan")
    row = holed.specificity().loc["a"]
    assert row["verdict"] == "not tested: missing values (NaN) on c" and math.isnan(row["p_value"])
    assert holed.cell_tests().set_index("task").loc["c", "direction"] == "not tested"
    for bad in (0.0, 1.0, 1.5, float("nan"), -0.1):
        with pytest.raises(TasklensError, match="alpha must be a number between 0 and 1"):
            result.specificity(alpha=bad)
    with pytest.raises(TasklensError, match="alpha must be"):
        check_alpha(float("inf"))


def test_cells_show_the_normalised_effect_with_an_interval():
    rng = np.random.default_rng(10)
    result = simulate(rng, lambda own, k, base, run: run(base) - (0.5 * 8.0 if k == 0 else 0.0), n_random=150)
    cells = result.cell_tests().set_index("task")
    a = cells.loc["a"]
    assert a["effect_low"] < a["effect"] < a["effect_high"] and a["excess"] == pytest.approx(0.5, abs=0.03)
    assert a["excess_low"] < a["excess"] < a["excess_high"] and a["excess_low"] > 0.4
    assert a["direction"] == "lower" and a["p_value"] == pytest.approx(2 / 151)
    assert (cells.loc[["b", "c"], "direction"] == "as random").all()
    few = simulate(rng, null_set, n_random=10).cell_tests()
    assert (few["direction"] == "underpowered").all()  # 2 / 11 cannot reach 0.05: never painted


def test_saved_results_keep_the_floor_and_the_random_sets_per_prompt(tmp_path):
    rng = np.random.default_rng(11)
    result = simulate(rng, lambda own, k, base, run: base - (4.0 if k == 0 else 0.0), n_random=20)
    again = EvaluationResult.load(result.save(tmp_path / "r"))
    pd.testing.assert_frame_equal(again.specificity(), result.specificity())
    old = result.to_dict()
    del old["control_prompt_values"], old["floor_values"]  # as saved before they were kept
    legacy = EvaluationResult.from_dict(old)
    assert legacy.control_prompt_values.empty and legacy.floor().isna().all()
    assert legacy.specificity().loc["a", "verdict"].startswith("not tested")


def test_monte_carlo_p_values_are_never_zero():
    assert specificity_test([-1.0, -1.0], [[0.0, 0.0]], [0.0, 0.0]).p_value == pytest.approx(1 / 3)
    assert monte_carlo_p(100.0, np.zeros(99)) == pytest.approx(0.01)
    assert monte_carlo_p(-1.0, np.zeros(9)) == 1.0
    assert math.isnan(monte_carlo_p(1.0, []))
    assert sign_test_lower(np.zeros(8), np.ones(8)) == pytest.approx(2.0**-8)


def test_sequential_monte_carlo_stops_early_for_null_sets_and_is_calibrated():
    rng = np.random.default_rng(12)
    ps, draws = [], []
    for _ in range(N_NULL):
        result = sequential_monte_carlo_p(rng.normal(), lambda: rng.normal(), h=5, n_max=199)
        ps.append(result.p)
        draws.append(result.n)
    ps = np.array(ps)
    print(
        f"sequential null: {(ps < ALPHA).sum()}/{N_NULL} below {ALPHA}, median {np.median(draws):.0f} draws"
    )
    assert (ps < ALPHA).sum() <= upper_tolerance(N_NULL) and ps.min() >= 1 / 200
    assert np.median(draws) < 20  # clearly null sets stop after about h / p draws
    hit = sequential_monte_carlo_p(5.0, lambda: rng.normal(), h=5, n_max=199)
    assert hit.p == pytest.approx(1 / 200) and not hit.stopped_early
    with pytest.raises(TasklensError, match="h <= n_max"):
        sequential_monte_carlo_p(0.0, lambda: 0.0, h=0)


def test_sequential_draws_over_several_metrics_keep_each_metric_calibrated():
    """The random sets of `evaluation_matrices` stop once every metric has ``h`` exceedances; each
    metric's Monte Carlo p over the draws made must keep its level, null sets (correlated and
    skewed statistics, as exact match and log-probability are) must stop early, and a set extreme
    on one metric only must get every draw."""
    rng = np.random.default_rng(21)

    def pair():
        drop = rng.gamma(0.6, 0.25)
        return np.array([drop + rng.normal(0, 0.05), 2 * drop + rng.normal(0, 0.2)])

    ps, sizes = [], []
    for _ in range(N_NULL):
        observed = pair()  # a null set: drawn like its random sets
        draws = sequential_draws(observed, lambda i: pair(), h=5, n_max=39)
        ps.append([monte_carlo_p(observed[k], draws[:, k]) for k in range(2)])
        sizes.append(len(draws))
    ps = np.array(ps)
    false = (ps < ALPHA).sum(axis=0)
    print(f"sequential, two metrics: {false.tolist()}/{N_NULL} null sets below {ALPHA}; "
          f"median {np.median(sizes):.0f} of 39 draws")  # fmt: skip
    assert (false <= upper_tolerance(N_NULL)).all() and ps.min() >= 1 / 40
    assert np.median(sizes) < 39  # clearly null sets stop early
    planted = sequential_draws([0.0, 50.0], lambda i: pair(), h=5, n_max=39)
    assert len(planted) == 39 and monte_carlo_p(50.0, planted[:, 1]) == pytest.approx(1 / 40)
    with pytest.raises(TasklensError, match="h <= n_max"):
        sequential_draws([0.0], lambda i: [0.0], h=3, n_max=2)


def test_one_family_per_page_names_its_control():
    p = [0.001, 0.01, 0.02, 0.045, 0.2, float("nan")]
    bh, holm = family(p, name="the README"), family(p, "holm")
    assert bh.size == 5 and bh.label == "Benjamini-Hochberg (q = 0.05) over the 5 tests of the README"
    assert (bh.adjusted[:5] < 0.05).sum() == 3 and (holm.adjusted[:5] < 0.05).sum() == 2
    assert math.isnan(bh.adjusted[5]) and holm.label.startswith("Holm (alpha = 0.05) over the 5 tests")
    with pytest.raises(TasklensError, match="choose 'bh'"):
        family(p, "bonferroni")
    rng = np.random.default_rng(13)
    strong = [
        simulate(rng, lambda own, k, b, r: b - (5.0 if k == 0 else 0.0), n_random=n) for n in (20, 20, 40)
    ]
    tables = pd.concat([r.specificity() for r in strong])
    assert tables["p_random"].tolist() == pytest.approx(
        [1 / 21, 1 / 21, 1 / 41]
    )  # each beats all its random sets
    page, adjusted = apply_family(tables, "holm", name="a page")
    assert adjusted.size == 3 and (page["family"] == adjusted.label).all()
    assert (
        page["verdict"] == "underpowered: significant alone, not after correction; "
        "needs at least 60 random sets"
    ).all()  # 1 / 61 clears Holm's 0.05 / 3 alone
    assert (apply_family(tables, "bh")[0]["verdict"] == "specific").all()


def exact_match(rng, lost: int, n_prompts: int = 16, n_random: int = 39) -> EvaluationResult:
    """An exact-match result of one set on tasks a, b, c whose every prompt the model knows: the
    set loses ``lost`` of its own task's prompts and nothing else; each random set loses each
    prompt with probability 0.02; the floor (another prompt's answer) is right 20 % of the time."""
    tasks, index = ["a", "b", "c"], np.arange(n_prompts)
    rows = []
    for k, task in enumerate(tasks):
        own = np.ones(n_prompts)
        own[rng.choice(n_prompts, lost, replace=False) if k == 0 else []] = 0.0
        rows += [(BASELINE, task, np.ones(n_prompts)), ("a", task, own)]
    frame = pd.DataFrame(
        {
            "set": np.repeat([r[0] for r in rows], n_prompts),
            "task": np.repeat([r[1] for r in rows], n_prompts),
            "prompt": np.tile(index, len(rows)),
            "value": np.concatenate([r[2] for r in rows]),
        }
    )
    kept = (rng.random((len(tasks), n_random, n_prompts)) > 0.02).astype(float)
    per_prompt = pd.DataFrame(
        {
            "set": "a",
            "task": np.repeat(tasks, n_random * n_prompts),
            "run": np.tile(np.repeat(np.arange(n_random), n_prompts), len(tasks)),
            "prompt": np.tile(index, n_random * len(tasks)),
            "value": kept.ravel(),
        }
    )
    means = frame.groupby(["set", "task"])["value"].mean().unstack()
    runs = per_prompt.groupby(["set", "run", "task"])["value"].mean().reset_index()
    floor = pd.DataFrame(
        {
            "task": np.repeat(tasks, n_prompts),
            "prompt": np.tile(index, len(tasks)),
            "value": (rng.random(len(tasks) * n_prompts) < 0.2).astype(float),
        }
    )
    return EvaluationResult(
        metric="exact_match",
        intervention={"kind": "zero"},
        baseline=means.loc[BASELINE],
        values=means.loc[["a"]],
        controls=runs.groupby(["set", "task"])["value"].mean().unstack(),
        controls_std=runs.groupby(["set", "task"])["value"].std(ddof=0).unstack(),
        sizes=pd.Series({"a": 50}),
        n_controls=n_random,
        prompt_values=frame,
        control_values=runs,
        control_prompt_values=per_prompt,
        floor_values=floor,
    )


def test_exact_match_at_16_prompts_states_its_power():
    """The issue's case: a perfectly specific set loses 5 of 16 known facts, the others none. It
    is never "not specific"; at 16 prompts sparing is shown in about two draws of three (the
    studentized test pays for its validity under unequal variances), at 48 prompts always."""
    rng = np.random.default_rng(14)
    rows = pd.concat([exact_match(rng, lost=5).specificity() for _ in range(60)])
    power = float((rows["level"] == "specific").mean())
    at_48 = pd.concat([exact_match(rng, lost=15, n_prompts=48).specificity() for _ in range(20)])
    print(
        f"\nexact match, 5 of 16 lost: specific {power:.2f}, detectable margin "
        f"{rows['mde_spared'].median():.2f}; 15 of 48 lost: specific "
        f"{(at_48['level'] == 'specific').mean():.2f}"
    )
    # never "not specific"; "not tested" where chance hit the floor often (gap too uncertain)
    assert power >= 0.5 and set(rows["level"]) <= {"specific", "preferential", "not tested"}
    assert (rows["level"] == "not tested").mean() <= 0.1
    assert (at_48["level"] == "specific").mean() >= 0.9
    assert (rows["p_value"].dropna() >= 1 / 40).all()
    # 3 of 16 lost: 3 of the 32 prompts' losses all on one side happen by chance 11 % of the
    # time, and the test cannot detect a margin that small: underpowered, not "not specific"
    weak = exact_match(rng, lost=3).specificity().iloc[0]
    assert weak["level"] == "underpowered" and not weak["decisive"] and weak["needs"]
    strong = exact_match(rng, lost=16).specificity().iloc[0]  # every fact lost: found
    assert strong["verdict"] == "specific" and strong["effect_uncapped"] > 1.0  # below the 20 % floor
    assert strong["effect"] == 1.0  # capped: a task loses at most its whole gap


def test_a_set_beyond_random_sets_that_a_pages_correction_undoes_is_underpowered_not_as_random():
    """39 random sets give p >= 1 / 40; a page of many tests can undo that, which is a lack of
    power, never evidence that the set does no more than random sets."""
    rng = np.random.default_rng(5)
    result = simulate(rng, lambda own, k, base, random_run: base - 5.0 if k == own else random_run(base))
    alone = result.against_random()
    assert (
        alone.loc["a", "p_value"] == pytest.approx(1 / 40)
        and alone.loc["a", "verdict"] == "beyond random sets"
    )
    nulls = alone.iloc[[0] * 9].assign(p_value=1.0, decisive=True, reason="falls no more than random sets")
    page, _ = apply_family(pd.concat([alone, nulls]), "bh", ALPHA, "a page")
    assert page["p_adjusted"].iloc[0] > ALPHA
    assert page["verdict"].iloc[0] == (
        "underpowered: significant alone, not after correction; needs at least 200 random sets"
    )  # 1 / 201 clears 0.05 / 10 alone


def verdicts(result: EvaluationResult, draws) -> pd.DataFrame:
    """``result``'s verdicts, each set using the first ``draws(name, cells)`` of its random sets."""
    rows = []
    for name, cells in result._cells().items():
        kept = replace(cells[name], random=cells[name].random[: draws(name, cells)])
        rows.append({"set": name, **specificity_verdict(name, {**cells, name: kept}), "what": "specific"})
    return pd.DataFrame(rows)


def at_stake_draws(name, cells) -> int:
    """As `evaluation_matrices` with ``n_controls=19, at_stake=159``: (b) decides, before any draw."""
    return 159 if at_stake(name, cells) else 19


def test_random_sets_where_the_verdict_is_at_stake_keep_the_level_and_add_power():
    """A set that fails (b) gets 19 random sets, one that passes 159. The gate sees the own task's
    effect, so the null sets that pass it are the ones that fall most: the per-test rate must
    still hold. Null sets here move their own task like a random set and, half of them, improve
    the other tasks (the reproduction that passes (b) alone). A page's Benjamini-Hochberg
    rejections must be those of every set drawing 159, and planted sets must gain power."""
    rng = np.random.default_rng(22)

    def improves_others(own, k, base, random_run):
        return random_run(base) if k == own else base + 1.0

    nulls = [
        simulate(rng, fn, n_sets=3, n_random=159) for fn in (null_set, improves_others) for _ in range(84)
    ]
    table = pd.concat([verdicts(r, at_stake_draws) for r in nulls])
    alarms, drew_all = int((table["p_value"] < ALPHA).sum()), int((table["n_null"] == 159).sum())
    print(f"\nat stake: {alarms}/{len(table)} null sets with p < {ALPHA}; {drew_all} drew 159 random sets")
    assert len(table) >= N_NULL and alarms <= upper_tolerance(len(table)) and drew_all >= len(table) // 3
    assert set(table["n_null"]) == {19, 159} and (table["p_value"] >= 1 / 160).all()

    def planted(own, k, base, random_run):
        return random_run(base) - (0.3 * (base.mean() + 10.0) if k == own else 0.0)

    page = [simulate(rng, planted, n_sets=3, n_random=159) for _ in range(3)]
    page += [simulate(rng, null_set, n_sets=3, n_random=159) for _ in range(13)]  # 48 tests, 9 planted
    found = {}
    for name, draws in (
        ("39 each", lambda n, c: 39),
        ("at stake", at_stake_draws),
        ("159 each", lambda n, c: 159),
    ):
        adjusted, _ = apply_family(pd.concat([verdicts(r, draws) for r in page]), "bh", ALPHA, "a page")
        found[name] = (adjusted["verdict"] == "specific").to_numpy()
    print("planted (30 % of the gap), 9 in a page of 48 tests under BH: found "
          + ", ".join(f"{k} {v[:9].sum()}" for k, v in found.items()))  # fmt: skip
    assert (found["at stake"] == found["159 each"]).all()
    assert found["39 each"].sum() == 0 and found["at stake"][:9].sum() >= 8


def test_a_page_read_back_from_csv_words_its_verdicts_without_nan(tmp_path):
    from tasklens.analysis.verdict import apply_family

    table = pd.DataFrame(
        dict(p_value=[0.01, 0.04, 0.5], decisive=[False, False, True], reason=["", "", "too small"])
    )
    table.to_csv(tmp_path / "tests.csv", index=False)
    again, _ = apply_family(pd.read_csv(tmp_path / "tests.csv"), "bh", 0.05, "page")
    assert again.verdict.tolist() == [  # adjusted 0.03, 0.06, 0.5
        "specific",
        "underpowered: significant alone, not after correction",
        "not specific: too small",
    ]
