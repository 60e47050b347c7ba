"""The first end-to-end run: activation statistics + zero ablation on the organism."""

from __future__ import annotations

import pytest

from tasklens.runs.demo import DEMO_TASKS, run_demo


@pytest.fixture(scope="module")
def demo(organism):
    return run_demo(model=organism, n_controls=20, progress=False)


def test_sets_are_top_one_percent(demo):
    assert [s.name for s in demo.sets] == list(DEMO_TASKS)
    assert all(len(s) == round(0.01 * 2048) for s in demo.sets)


def test_ablating_a_task_set_hurts_that_task_more_than_random(demo):
    table = demo.table()
    summary = demo.result.own_and_others()
    for task in DEMO_TASKS:
        own = summary.loc[task, "own_change"]
        control = summary.loc[task, "control_own_change"]
        # a real drop (at least 5 of its 100 prompts), and more than the same number of random neurons
        assert own <= -0.05, f"{task}: ablating its neurons changed accuracy by {own:.3f}\n{table}"
        assert own < control - 0.04, f"{task}: own {own:.3f} vs random {control:.3f}\n{table}"


def test_unablated_row_is_the_baseline(demo):
    table = demo.table()
    assert all(demo.result.baseline[task] >= 0.9 for task in DEMO_TASKS)
    assert (table.iloc[0] == demo.result.baseline).all()


def test_the_demo_shows_each_set_beside_its_random_controls(demo):
    controls = demo.controls()
    assert list(controls.index) == list(DEMO_TASKS)
    assert (controls["prompts"] == 100).all() and (controls["neurons"] == 20).all()
    own = demo.result.own_and_others()
    for task in DEMO_TASKS:
        assert controls.loc[task, "set off"] == pytest.approx(demo.result.values.loc[task, task])
        runs = demo.result.control_values.query("set == @task and task == @task")["value"]
        # 20 random sets, up to 60 where the verdict is at stake (the fewest whose p can pass
        # Benjamini-Hochberg over the 3 sets), fewer where enough of them lower the task as much
        assert len(runs) == controls.loc[task, "random sets"] <= 60
        assert controls.loc[task, "random"] == pytest.approx(runs.mean())
        assert controls.loc[task, "random"] == pytest.approx(
            own.loc[task, "baseline"] + own.loc[task, "control_own_change"]
        )
    # the random sets the verdicts need are drawn: none is underpowered for want of them
    assert set(controls["verdict"]) <= {"specific", "preferential", "not specific", "breaks everything"}
    assert (controls["p"] >= 1 / 61).all() and (controls["p (BH)"] >= controls["p"]).all()
    assert controls["own effect"].between(0.05, 1.5).all()  # each set removes part of its task's gap
    assert demo.to_dict()["controls"]["continent_of"]["verdict"] == controls.loc["continent_of", "verdict"]


def test_the_demo_prints_within_100_columns_and_each_verdict_whole(demo):
    lines = demo.printout().splitlines()
    assert max(len(line) for line in lines) <= 100, max(lines, key=len)
    text = " ".join(" ".join(lines).split())
    for task in DEMO_TASKS:
        words = " ".join(str(demo.verdicts().loc[task, "verdict"]).split())
        assert f"{task}: {words}" in text
    assert "error control: Benjamini-Hochberg (q = 0.05) over the 3 tests of this table" in text
