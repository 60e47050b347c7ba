"""Public entry points check their arguments (types, ranges, seeds, grids) and say what they got
and what they need, before any work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasklens import NeuronSet
from tasklens.errors import TasklensError, check_seed
from tasklens.interventions import Intervention
from tasklens.selection import random_like
from tasklens.tasks import Task

pytestmark = pytest.mark.reliability
GRID = (4, 512)


@pytest.mark.parametrize(
    ("pairs", "needle"),
    [
        ([(-1, 0)], r"Neuron \(-1, 0\) is outside the grid \(4, 512\).*do not count from the end"),
        ([(0, 512)], r"Neuron \(0, 512\) is outside the grid"),
        ([(1.5, 0)], r"a \(layer, index\) pair of whole numbers, got \(1\.5, 0\)"),
        ([(True, 0)], r"a \(layer, index\) pair of whole numbers, got \(True, 0\)"),
        ([(1, 2, 3)], r"got \(1, 2, 3\)"),
        ([5], r"got 5"),
    ],
)
def test_from_pairs_refuses_what_is_not_a_neuron_of_the_grid(pairs, needle):
    """A bool indexed a whole layer (512 neurons for (True, 0)); a float was a raw IndexError."""
    with pytest.raises(TasklensError, match=needle):
        NeuronSet.from_pairs(pairs, GRID)


def test_from_pairs_takes_numpy_and_torch_integers_and_checks_the_grid():
    neurons = NeuronSet.from_pairs([(np.int64(1), np.int32(2)), torch.tensor([3, 4])], GRID)
    assert neurons.pairs() == [(1, 2), (3, 4)]
    for grid in ((-4, 512), (4, 0)):  # (4,), (4, 512.0), "4x512" also (beartype refuses them in tests)
        with pytest.raises(TasklensError, match=r"A neuron grid is \(n_layers, d_mlp\)"):
            NeuronSet.from_pairs([(0, 0)], grid)


@pytest.mark.parametrize("seed", [-1, 1.5, 2**63, True, "0"])
def test_seeds_are_whole_numbers_numpy_and_torch_take(seed):
    with pytest.raises(TasklensError, match=r"seed must be a whole number from 0 to 2\*\*63 - 1"):
        check_seed(seed)


def test_random_like_and_sample_check_their_seed():
    """random_like(s, 1.5) was a raw RuntimeError; evaluation_matrix(seed=-1) a raw ValueError."""
    neurons = NeuronSet.from_pairs([(1, 3)], GRID)
    with pytest.raises(TasklensError, match="seed must be a whole number"):
        random_like(neurons, -1)
    task = Task.from_lists("t", ["a b", "c d", "e f"], [" x", " y", " z"])
    with pytest.raises(TasklensError, match="seed must be a whole number"):
        task.sample(2, seed=-3)
    with pytest.raises(TasklensError, match=r"Cannot sample 0 prompts"):
        task.sample(0)


@pytest.mark.parametrize("positions", [[]])  # ["0"], [1.0] are refused by beartype in tests
def test_positions_are_a_non_empty_list_of_whole_numbers(positions):
    with pytest.raises(TasklensError, match=r"positions must be a non-empty list of whole numbers"):
        Intervention("zero", NeuronSet.from_pairs([(1, 3)], GRID), positions=positions)
