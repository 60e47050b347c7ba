"""Two selections per set: disjoint halves of the detection prompts, and a verdict stable across
selections only when both halves' sets pass."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from tasklens.tasks.task import Task

ANALYSES = Path(__file__).resolve().parents[2] / "analyses"


@pytest.fixture
def common(monkeypatch):
    monkeypatch.syspath_prepend(str(ANALYSES))
    import common

    yield common
    sys.modules.pop("common", None)


def test_the_halves_are_disjoint_cover_the_prompts_and_do_not_depend_on_order(common):
    task = Task.from_lists("t", [f"p{i}" for i in range(11)], [f"a{i}" for i in range(11)], split="detection")
    parts = common.halves({"t": task})
    first, second = (parts[h]["t"] for h in common.HALVES)
    assert set(first.prompts).isdisjoint(second.prompts)
    assert sorted(first.prompts + second.prompts) == sorted(task.prompts)
    assert abs(len(first) - len(second)) <= 1
    assert list(first.prompts) != [f"p{i}" for i in range(0, 11, 2)]  # a random split, not every other
    assert common.halves({"t": task})["half 1"]["t"].prompts == first.prompts  # reproducible


def test_a_verdict_is_stable_only_when_both_selections_pass(common):
    rows = [
        ("a", "half 1", "specific"), ("a", "half 2", "specific"),
        ("b", "half 1", "specific"), ("b", "half 2", "underpowered: too few prompts"),
        ("c", "half 1", "not specific: hurts b as much"),
    ]  # fmt: skip
    table = pd.DataFrame(rows, columns=["set", "half", "verdict"]).assign(metric="logprob")
    confirmed = common.stable(table, ["metric", "set"]).set_index(["set", "half"])["stable"]
    assert confirmed[("a", "half 1")] == confirmed[("a", "half 2")] == "yes"
    assert confirmed[("b", "half 1")] == confirmed[("b", "half 2")] == "no"
    assert confirmed[("c", "half 1")] == ""  # selected once: nothing to confirm
    against = table.assign(what="beyond random sets", verdict="beyond random sets")
    assert set(common.stable(against, ["metric", "set"]).stable) == {"yes", ""}
