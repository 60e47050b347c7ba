"""The tests an EvaluationResult runs, on results made by hand: a drop, a rise and nothing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasklens.analysis.matrix import BASELINE, EvaluationResult

N = 30


def result(shift: dict[str, float], n_controls: int = 150) -> EvaluationResult:
    """One set "a" on tasks a, b, c: its per-prompt log-probabilities move by ``shift[task]``
    (plus noise); its random sets (only their means kept, as older results hold) move each task
    by a little noise only; every task's floor is measured at -10 nats."""
    rng = np.random.default_rng(0)
    tasks = ["a", "b", "c"]
    base = {t: rng.normal(-2.0, 0.5, N) for t in tasks}
    prompts = [
        {"set": name, "task": t, "prompt": i, "value": v}
        for t in tasks
        for name, values in ((BASELINE, base[t]), ("a", base[t] + shift[t] + rng.normal(0, 0.1, N)))
        for i, v in enumerate(values)
    ]
    frame = pd.DataFrame(prompts)
    means = frame.groupby(["set", "task"])["value"].mean().unstack()
    controls = pd.DataFrame(
        [
            {"set": "a", "run": r, "task": t, "value": means.loc[BASELINE, t] + rng.normal(0, 0.02)}
            for r in range(n_controls)
            for t in tasks
        ]
    )
    return EvaluationResult(
        metric="logprob",
        intervention={"kind": "zero"},
        baseline=means.loc[BASELINE],
        values=means.loc[["a"]],
        controls=controls.groupby(["set", "task"])["value"].mean().unstack(),
        controls_std=controls.groupby(["set", "task"])["value"].std(ddof=0).unstack(),
        sizes=pd.Series({"a": 5}),
        n_controls=n_controls,
        prompt_values=frame,
        control_values=controls,
        floor_values=pd.DataFrame(
            {"task": np.repeat(tasks, N), "prompt": np.tile(range(N), 3), "value": -10.0}
        ),
    )


def test_cell_tests_tell_a_drop_from_a_rise_from_nothing():
    cells = result({"a": -1.0, "b": 0.8, "c": 0.0}).cell_tests().set_index("task")
    assert cells.loc["a", "direction"] == "lower" and cells.loc["a", "high"] < 0
    assert cells.loc["b", "direction"] == "higher" and cells.loc["b", "low"] > 0
    assert cells.loc["c", "direction"] == "as random"
    assert cells.loc["b", "change"] == pytest.approx(0.8, abs=0.1)


def test_specificity_and_the_test_against_random_sets_on_made_up_results():
    specific = result({"a": -1.0, "b": 0.0, "c": 0.0})
    assert specific.specificity().loc["a", "verdict"] == "specific"
    assert specific.against_random().loc["a", "verdict"] == "beyond random sets"
    assert specific.specificity().loc["a", "effect"] == pytest.approx(1 / 8, abs=0.03)  # 1 of 8 nats
    everywhere = result({"a": -1.0, "b": -1.0, "c": -1.0})  # hurts everything alike: not specific
    assert everywhere.specificity().loc["a", "verdict"].startswith("not specific: b not spared")
    assert everywhere.against_random().loc["a", "p_adjusted"] < 0.05
    nothing = result({"a": 0.0, "b": 0.0, "c": 0.0})
    assert nothing.against_random().loc["a", "verdict"].startswith("not beyond random sets: a falls no more")
    few = result({"a": -1.0, "b": 0.0, "c": 0.0}, n_controls=10)
    assert few.specificity().loc["a", "verdict"].startswith("underpowered: 10 random sets cannot give")
    assert few.against_random().loc["a", "p_value"] == pytest.approx(1 / 11)


def test_a_result_keeps_how_its_random_sets_were_drawn(tmp_path):
    drawn = result({"a": -1.0, "b": 0.0, "c": 0.0}, n_controls=20)
    drawn.settled, drawn.stop_after = 9, 5
    again = EvaluationResult.load(drawn.save(tmp_path / "result"))
    assert (again.n_controls, again.settled, again.stop_after) == (20, 9, 5)
    other = result({"a": -1.0, "b": 0.0, "c": 0.0}, n_controls=20)
    other.values.index = other.sizes.index = ["b"]
    with pytest.raises(Exception, match="draws of random controls"):
        again + other  # the same most, but every set drew up to 20
