from __future__ import annotations

import pandas as pd
import pytest
import torch

import tasklens.analysis.engine
import tasklens.analysis.matrix
from tasklens.analysis.matrix import evaluation_matrices, evaluation_matrix
from tasklens.data.neurons import NeuronSet
from tasklens.errors import TasklensError
from tasklens.interventions import Intervention
from tasklens.tasks.builtin import load_builtin

GRID = (4, 512)


@pytest.fixture
def evaluations(monkeypatch):
    """The tasks evaluated, in order (the real evaluation still runs)."""
    calls = []
    evaluate = tasklens.analysis.matrix.evaluate_metrics

    def counted(model, task, *args):
        calls.append(task.name)
        return evaluate(model, task, *args)

    monkeypatch.setattr(tasklens.analysis.matrix, "evaluate_metrics", counted)
    monkeypatch.setattr(tasklens.analysis.engine, "evaluate_metrics", counted)  # the random sets
    return calls


@pytest.mark.reliability
def test_a_matrix_without_tasks_is_refused():
    with pytest.raises(TasklensError, match="got no tasks; give at least one Task"):
        evaluation_matrix(None, [NeuronSet.from_pairs([(0, 0)], GRID)], [])


@pytest.mark.reliability
def test_what_another_model_made_is_refused_before_any_evaluation(organism, evaluations):
    task = load_builtin("continent_of", "detection").head(2)
    ours = NeuronSet.from_pairs([(0, 1)], GRID, "ours")
    theirs = NeuronSet(ours.mask, "theirs", {"model": "gpt2", "model_fingerprint": "0123456789abcdef"})
    with pytest.raises(TasklensError, match="Neuron set 'theirs' was made on model 'gpt2'"):
        evaluation_matrix(organism, [ours, theirs], [task], n_controls=0)
    mean = Intervention("mean", mean=torch.zeros(12, 3072))
    with pytest.raises(TasklensError, match=r"shape \(12, 3072\) but the model's neuron grid is \(4, 512\)"):
        evaluation_matrix(organism, [ours], [task], n_controls=0, intervention=mean)
    assert evaluations == []
    result = evaluation_matrix(organism, [ours], [task], n_controls=1, metric="next_token")
    assert evaluations == ["continent_of"] * 4  # baseline, its floor, the set, its control
    assert result.values.shape == (1, 1) and result.sizes["ours"] == 1


#: random sets per set: two sets under Benjamini-Hochberg need p < 0.025, so at least 40
N_RANDOM = 40


@pytest.fixture(scope="module")
def addition_set(organism) -> NeuronSet:
    """The top 100 neurons of `addition` by |a·dL/da|, found on detection prompts."""
    from tasklens.scoring import GradientAttribution
    from tasklens.selection import top_k

    scores = GradientAttribution().attribute(organism, load_builtin("addition", "detection").head(32))
    return top_k(scores, 100).renamed("addition")


@pytest.fixture(scope="module")
def planted(organism, addition_set):
    """An evaluation of a set only `addition` needs among these tasks and of a random set named
    after `continent_of`, on held-out prompts."""
    from tasklens.selection import random_like

    noise = random_like(addition_set, seed=123).renamed("continent_of")
    tasks = [load_builtin(n, "evaluation").head(40) for n in ("addition", "continent_of", "capital_of")]
    return evaluation_matrix(organism, [addition_set, noise], tasks, n_controls=N_RANDOM)


def test_the_specificity_test_can_pass_and_can_fail(planted):
    table = planted.specificity()
    assert table.loc["addition", "verdict"] == "specific"
    assert table.loc["addition", "p_random"] == pytest.approx(1 / (N_RANDOM + 1))  # beats every random set
    assert table.loc["addition", "effect_low"] > 0.1 and table.loc["addition", "selectivity_low"] > 0.1
    assert planted.floor().between(0.0, 0.5).all()  # exact match by chance: another prompt's answer
    assert table.loc["continent_of", "verdict"].startswith("not specific: continent_of falls no more")
    assert (table["n_null"] == N_RANDOM).all() and (table["n_prompts"] == 40).all()
    assert table["family"].iloc[0] == "Benjamini-Hochberg (q = 0.05) over the 2 tests of this table"


def test_a_set_another_task_also_needs_is_preferential_not_specific(organism, addition_set):
    """The same set on `larger_number` too, a numeric task it also lowers: not spared, so at best
    preferential, however far the set beats its random sets on its own task."""
    tasks = [load_builtin(n, "evaluation").head(40) for n in ("addition", "larger_number")]
    table = evaluation_matrix(organism, [addition_set], tasks, n_controls=N_RANDOM).specificity()
    row = table.loc["addition"]
    assert row["verdict"].startswith("preferential: larger_number loses")
    assert row["worst"] == "larger_number" and row["worst_effect"] > row["spare_limit"]
    assert row["p_random"] == pytest.approx(1 / (N_RANDOM + 1)) and row["p_spared"] > 0.5


def test_the_test_against_random_sets_can_pass_and_can_fail(planted):
    table = planted.against_random()
    assert table.loc["addition", "verdict"] == "beyond random sets"
    assert table.loc["addition", "effect"] > 0.1 and table.loc["addition", "effect_low"] > 0
    assert table.loc["continent_of", "verdict"].startswith("not beyond random sets")
    assert (table["n_null"] == N_RANDOM).all()


def test_cell_tests_find_the_planted_drop_and_allow_rises(planted):
    cells = planted.cell_tests().set_index(["set", "task"])
    drop = cells.loc[("addition", "addition")]
    assert drop["high"] < 0 and drop["p_value"] == pytest.approx(2 / (N_RANDOM + 1))  # below every random set
    assert drop["excess_low"] > 0
    assert not cells.loc["continent_of", "direction"].isin(["lower", "higher"]).any()  # the random set
    assert set(cells.direction) <= {"lower", "higher", "as random"} and cells.p_adjusted.between(0, 1).all()


def test_every_cell_has_its_prompts_an_interval_and_the_controls_kept(planted):
    assert planted.n_prompts().tolist() == [40, 40, 40]
    low, high = planted.intervals()
    values = planted.pivot()
    assert ((low <= values + 1e-12) & (values <= high + 1e-12)).all().all()
    assert (high - low).loc["addition", "addition"] > 0.1  # 40 prompts leave room
    runs = planted.control_values
    assert len(runs) == 2 * N_RANDOM * 3 and set(runs["run"]) == set(range(N_RANDOM))
    assert len(planted.control_prompt_values) == 2 * N_RANDOM * 3 * 40 and len(planted.floor_values) == 3 * 40
    means = runs.groupby(["set", "task"])["value"].mean().unstack()
    assert (means - planted.controls.loc[means.index, means.columns]).abs().max().max() < 1e-12
    again = type(planted).from_dict(planted.to_dict())
    pd.testing.assert_frame_equal(again.specificity(), planted.specificity())


# --- replayed review cases: typed results ---------------------------------------------------------


@pytest.mark.reliability
def test_evaluation_results_are_typed_round_trip_and_merge(organism):
    import json

    from tasklens.analysis.matrix import EvaluationResult

    tasks = [load_builtin(n, "evaluation").head(6) for n in ("continent_of", "larger_number")]
    sets = [
        NeuronSet.from_pairs([(0, i) for i in range(40)], GRID, n) for n in ("continent_of", "larger_number")
    ]
    a = evaluation_matrix(organism, sets[:1], tasks, n_controls=2, metric="logprob")
    b = evaluation_matrix(organism, sets[1:], tasks, n_controls=2, metric="logprob")
    merged = a + b
    assert merged.set_names == ["continent_of", "larger_number"] and merged.values.shape == (2, 2)
    again = EvaluationResult.from_dict(json.loads(json.dumps(merged.to_dict())))
    assert (again.values == merged.values).all().all() and again.intervention == merged.intervention
    assert list(merged.own_and_others().index) == ["continent_of", "larger_number"]
    with pytest.raises(TasklensError, match="distinct names"):
        evaluation_matrix(organism, sets[:1] * 2, tasks, n_controls=0, metric="logprob")
    with pytest.raises(TasklensError, match="n_controls"):
        evaluation_matrix(organism, sets[:1], tasks, n_controls=-1, metric="logprob")


def test_metrics_measured_together_equal_each_measured_alone(organism):
    tasks = [load_builtin(n, "evaluation").head(12) for n in ("continent_of", "addition")]
    sets = [NeuronSet.from_pairs([(1, i) for i in range(0, 512, 9)], GRID, "continent_of")]
    together = evaluation_matrices(organism, sets, tasks, ("exact_match", "logprob"), n_controls=2)
    for metric in ("exact_match", "logprob"):
        alone = evaluation_matrix(organism, sets, tasks, n_controls=2, metric=metric)
        assert together[metric].metric == metric
        pd.testing.assert_frame_equal(together[metric].values, alone.values)
        pd.testing.assert_frame_equal(together[metric].control_values, alone.control_values)
        pd.testing.assert_frame_equal(together[metric].prompt_values, alone.prompt_values)
    assert (together["logprob"].values < 0).all().all()  # a log-probability, not an accuracy


def test_sequential_random_sets_stop_early_for_a_set_no_better_than_random(organism):
    from tasklens.selection import random_like

    tasks = [load_builtin(n, "evaluation").head(12) for n in ("continent_of", "larger_number")]
    base = NeuronSet.from_pairs([(1, i) for i in range(0, 512, 16)], GRID, "continent_of")
    null = random_like(base, seed=99).renamed("continent_of")
    result = evaluation_matrix(organism, [null], tasks, n_controls=30, metric="logprob", stop_after=3)
    runs = result.control_values.query("task == 'continent_of'")["value"].to_numpy()
    lower = runs <= result.values.loc["continent_of", "continent_of"]
    assert len(runs) < 30 and lower.sum() == 3 and lower[-1]  # stopped at the third exceedance
    assert result.against_random().loc["continent_of", "p_value"] == pytest.approx(4 / (len(runs) + 1))
    with pytest.raises(TasklensError, match="stop_after must be a whole number from 1 to n_controls"):
        evaluation_matrix(organism, [null], tasks, n_controls=3, stop_after=4)


def test_random_sets_go_where_the_verdict_is_at_stake(organism):
    """A set that lowers its task more than every other gets ``at_stake`` random sets; a random
    set, which (b) already calls not specific, gets ``n_controls``."""
    from tasklens.scoring import GradientAttribution
    from tasklens.selection import random_like, top_k

    scores = GradientAttribution().attribute(organism, load_builtin("addition", "detection").head(32))
    addition = top_k(scores, 100).renamed("addition")
    noise = random_like(addition, seed=123).renamed("continent_of")
    tasks = [load_builtin(n, "evaluation").head(40) for n in ("addition", "continent_of", "larger_number")]
    result = evaluation_matrix(
        organism, [addition, noise], tasks, n_controls=3, metric="logprob", controls_on="own", at_stake=24
    )
    table = result.specificity()
    assert table["n_null"].to_dict() == {"addition": 24, "continent_of": 3}
    assert table.loc["addition", "p_random"] == pytest.approx(1 / 25) and result.n_controls == 24
    assert table.loc["addition", "p_others"] < 0.05 <= table.loc["continent_of", "p_others"]
    with pytest.raises(
        TasklensError, match=r"at_stake must be a whole number of random sets, at least n_controls \(3\)"
    ):
        evaluation_matrix(organism, [addition], tasks, n_controls=3, at_stake=2)


@pytest.mark.reliability
def test_intervals_say_nan_where_a_prompt_is_nan_and_check_alpha(organism):
    """intervals() dropped NaN prompts silently and never checked alpha (alpha=1.5 gave an interval)."""
    from tasklens.errors import TasklensWarning

    task = load_builtin("continent_of", "evaluation").head(8)
    neurons = NeuronSet.from_pairs([(0, i) for i in range(40)], GRID, "continent_of")
    result = evaluation_matrix(organism, [neurons], [task], n_controls=0, metric="logprob")
    low, high = result.intervals("change")
    assert low.notna().all().all() and (low <= high).all().all()
    for alpha in (1.5, 0.0, -0.1, float("nan")):
        with pytest.raises(TasklensError, match=r"alpha must be a number in \(0, 1\)"):
            result.intervals("value", alpha=alpha)
    rows = result.prompt_values
    first = rows.index[(rows["set"] == "continent_of")][0]
    result.prompt_values.loc[first, "value"] = float("nan")
    with pytest.warns(
        TasklensWarning, match=r"No interval \(NaN\) .*continent_of on continent_of \(1 prompts\)"
    ):
        low, high = result.intervals("change")
    assert low.isna().loc["continent_of", "continent_of"] and high.isna().loc["continent_of", "continent_of"]
    with pytest.warns(TasklensWarning):
        low, _ = result.intervals("value")
    assert low.notna().loc["unmodified", "continent_of"] and low.isna().loc["continent_of", "continent_of"]
