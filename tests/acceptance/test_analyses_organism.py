"""The specificity and ladder analyses run end to end on the organism and write tested findings."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tasklens.analysis.verdict import LEVELS
from tasklens.io import LOCK

ROOT = Path(__file__).resolve().parents[2]


def run(script: str, *args: str) -> str:
    command = [sys.executable, str(ROOT / "analyses" / script), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT / "analyses")
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_specificity_writes_a_test_for_every_set_and_findings_from_them(tmp_path):
    out = tmp_path / "specificity"
    run(
        "specificity.py", "--out", str(out), "--eval-prompts", "12", "--detection-prompts", "12",
        "--controls", "5", "--settled", "3", "--stop-after", "2", "--percents", "1", "--text-prompts", "8",
        "--experiments", "A", "B", "C", "D", "--against", "mean", "max",
    )  # fmt: skip
    table = pd.read_csv(out / "specificity.csv")
    assert set(table.experiment) == {"A", "B", "C", "D"}
    assert set(table.intervention) == {"zero", "position_mean", "zero_spare_bos"}
    assert set(table.half) == {"half 1", "half 2"}  # two independent selections
    twice = table[table.selection.isin(["full", "own-mean"]) & (table.intervention == "zero")]
    assert set(twice.stable) <= {"yes", "no"} and twice.half.value_counts().nunique() == 1
    assert table[~table.index.isin(twice.index)].stable.isna().all()  # one selection: nothing to compare
    tested = table.dropna(subset=["p_value"])
    assert ((tested.effect_low <= tested.effect + 1e-9) & (tested.effect <= tested.effect_high + 1e-9)).all()
    assert tested.p_adjusted.between(0, 1).all() and table.n_null.between(2, 5).all()  # sequential stops
    # (b) passed on some metric before any random set was drawn: up to 5 random sets, else 3
    runs = ["experiment", "selection", "intervention", "half", "set"]
    at_stake = tested.groupby(runs, dropna=False).agg(b=("p_others", "min"), n=("n_null", "max"))
    assert (at_stake.n[at_stake.b >= 0.05] <= 3).all() and (at_stake.n <= 5).all()
    assert (tested.p_value >= 1 / 6).all()  # 5 random sets: no p below 1/6, so no verdict "specific"
    assert not (table.verdict == "specific").any()
    findings = (out / "findings.md").read_text()
    verdicts = [line for line in findings.splitlines() if "own task loses" in line]
    assert len(verdicts) == len(table)
    assert all(re.search(r": (not specific|underpowered|not tested)", line) for line in verdicts)
    assert (
        f"error control: Benjamini-Hochberg (q = 0.05) over the {len(tested)} tests of findings.md"
        in findings
    )
    assert (out / "specificity.png").stat().st_size > 1000
    n_core = int(re.search(r"(\d+) neurons are in every task's set", findings).group(1))
    assert (out / "core_neurons.csv").is_file() == (n_core > 0)  # the all-task core's identities, if any
    if n_core:
        core = pd.read_csv(out / "core_neurons.csv")
        assert len(core) == n_core == json.loads((out / "core.json").read_text())["size"]
    run("specificity.py", "--out", str(out), "--retest")  # the verdicts again, from the saved results alone
    again = pd.read_csv(out / "specificity.csv")
    pd.testing.assert_series_equal(again.p_adjusted, table.p_adjusted)
    assert "verdicts recomputed from the saved results" in (out / "findings.md").read_text()
    matrix = pd.read_csv(out / "matrix_A_full_half1_logprob.csv", index_col=0)
    assert "general_text" in matrix.columns  # every set is also measured on plain text
    assert (matrix["general_text"] < 0).all()


def test_a_ladder_stage_is_written_once_and_kept(tmp_path):
    out = tmp_path / "organism"
    args = ("--model", "organism", "--out", str(out), "--controls", "2", "--stages", "known", "gradient_1pct")
    run("ladder.py", *args)
    tests = pd.read_csv(out / "gradient_1pct" / "tests.csv")
    assert set(tests.test) == {"against_random", "specificity"}
    assert set(tests.metric) == {"exact_match", "logprob"}
    assert len(tests) == 2 * 2 * 4 * 2  # two tests x two metrics x four sets x two selections
    assert set(tests.half) == {"half 1", "half 2"} and set(tests.stable) <= {"yes", "no"}
    spec = tests[tests.test == "specificity"]
    family = (
        f"over the {spec.p_value.notna().sum()} tests of stage gradient_1pct: the per-set specificity tests"
    )
    assert spec.family.str.endswith(family).all()  # the tests against random sets alone: not in it
    assert set(spec.level) <= set(LEVELS) and spec.selectivity.notna().any()
    assert "kept from an earlier run" in run("ladder.py", *args)
    run("ladder.py", *args, "--retest")  # the tests again, from the saved results alone
    again = pd.read_csv(out / "gradient_1pct" / "tests.csv")
    pd.testing.assert_series_equal(again.p_value, tests.p_value)
    findings = (out / "gradient_1pct" / "findings.md").read_text()
    assert "tests recomputed from its saved results" in findings
    assert findings.count("detectable with 80 % power: own effect") == len(tests)  # every verdict's power
    assert (out / "gradient_1pct" / "timings.csv").is_file()  # the evaluation's time is kept
    # no half-written stage left: the folder's lock file (kept, naming its last holder) aside
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != LOCK]
    summary = run("ladder.py", "--summary", "--root", str(tmp_path), "--models", "organism")
    assert "top 1 % gradient-attribution neurons carry their task" in summary
    readme = (tmp_path / "summary" / "readme_table.md").read_text()  # the README's table, condensed
    every = pd.read_csv(out / "gradient_1pct" / "tests.csv")
    first = every[(every.half == "half 1") & (every.metric == "logprob") & (every.test == "specificity")]
    primary = pd.read_csv(tmp_path / "summary" / "primary.csv")
    assert len(primary) == 1 and primary.p_value.iloc[0] == pytest.approx(first.p_value.max())
    row = next(line for line in readme.splitlines() if "carry their task" in line)
    assert f"**{primary.level.iloc[0]}**" in row and "sets: " in row
    assert "Error control: Benjamini-Hochberg (q = 0.05) over the 1 tests of the primary family" in readme
    cost = pd.read_csv(tmp_path / "summary" / "costs.csv").set_index("stage").loc["gradient_1pct"]
    assert cost.sets == 8 and cost.random_sets == every.groupby(["half", "set"]).n_null.max().sum()
    assert cost.seconds_per_random_set == pytest.approx(cost.seconds / cost.random_sets, abs=0.01)
