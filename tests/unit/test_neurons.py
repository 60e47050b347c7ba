from __future__ import annotations

import numpy as np
import pytest
import torch

from tasklens.data.neurons import NeuronScores, NeuronSet
from tasklens.errors import TasklensError
from tasklens.selection import fraction_of_max, per_layer_top_k, random_like, threshold, top_k, top_percent


def scores(values) -> NeuronScores:
    return NeuronScores(values=torch.tensor(values, dtype=torch.float32), model="m", task="t", method="x")


def test_set_algebra_on_hand_built_sets():
    a = NeuronSet.from_pairs([(0, 0), (0, 1), (1, 2)], (2, 3), "a")
    b = NeuronSet.from_pairs([(0, 1), (1, 0)], (2, 3), "b")
    assert (a | b).pairs() == [(0, 0), (0, 1), (1, 0), (1, 2)]
    assert (a & b).pairs() == [(0, 1)]
    assert (a - b).pairs() == [(0, 0), (1, 2)]
    assert a.counts_per_layer() == [2, 1] and len(a) == 3 and (1, 2) in a
    with pytest.raises(TasklensError, match="different models"):
        a | NeuronSet.from_pairs([(0, 0)], (3, 3))


def test_selections():
    s = scores([[0.1, 0.9, 0.3], [0.8, 0.2, 0.5]])
    assert top_k(s, 2).pairs() == [(0, 1), (1, 0)]
    assert top_percent(s, 50).pairs() == [(0, 1), (1, 0), (1, 2)]
    assert per_layer_top_k(s, 1).pairs() == [(0, 1), (1, 0)]
    assert threshold(s, 0.5).pairs() == [(0, 1), (1, 0), (1, 2)]
    assert fraction_of_max(s, 0.5).pairs() == [(0, 1), (1, 0), (1, 2)]
    with pytest.raises(TasklensError, match="the model has 6"):
        top_k(s, 7)


def test_random_control_keeps_per_layer_counts():
    a = NeuronSet.from_pairs([(0, 0), (0, 1), (1, 2)], (2, 50), "a")
    controls = [random_like(a, seed) for seed in range(5)]
    assert all(c.counts_per_layer() == [2, 1] for c in controls)
    assert len({tuple(c.pairs()) for c in controls}) > 1
    assert random_like(a, 3).pairs() == random_like(a, 3).pairs()


def test_save_load_round_trip_and_shape_check(tmp_path):
    s = scores([[0.1, 0.9, 0.3], [0.8, 0.2, 0.5]])
    s.save(tmp_path / "scores")
    loaded = NeuronScores.load(tmp_path / "scores.safetensors", shape=(2, 3))
    torch.testing.assert_close(loaded.values, s.values)
    assert loaded.task == "t" and loaded.version == s.version
    with pytest.raises(TasklensError, match="made for another model"):
        NeuronScores.load(tmp_path / "scores", shape=(4, 512))
    n = top_k(s, 2)
    n.save(tmp_path / "set")
    assert NeuronSet.load(tmp_path / "set").pairs() == n.pairs()
    with pytest.raises(TasklensError, match="not a NeuronSet"):
        NeuronSet.load(tmp_path / "scores")


def test_nan_scores_name_the_layer():
    with pytest.raises(TasklensError, match=r"layer\(s\) \[1\]"):
        scores([[0.0, 1.0], [float("nan"), 0.0]])


@pytest.mark.reliability
@pytest.mark.parametrize(
    ("rule", "value"),
    [
        (top_percent, True),
        (top_percent, float("nan")),
        (threshold, False),
        (fraction_of_max, True),
    ],
)
def test_selection_rules_refuse_bools_and_non_finite_values(rule, value):
    s = scores([[0.1, 0.9, 0.3], [0.8, 0.2, 0.5]])
    with pytest.raises(TasklensError, match=f"must be a finite number.*got {value!r}"):
        rule(s, value)
    assert top_percent(s, np.float64(50.0)).pairs() == top_percent(s, 50).pairs()  # numpy numbers still do
