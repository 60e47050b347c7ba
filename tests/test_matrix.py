from __future__ import annotations

import pytest
import torch

import tasklens.matrix
from tasklens.errors import TasklensError
from tasklens.interventions import Intervention
from tasklens.matrix import evaluation_matrix
from tasklens.neurons import NeuronSet
from tasklens.tasks.builtin import load_builtin

GRID = (4, 512)


@pytest.fixture
def evaluations(monkeypatch):
    """The tasks evaluated, in order (the real evaluation still runs)."""
    calls = []
    evaluate = tasklens.matrix.evaluate

    def counted(model, task, *args):
        calls.append(task.name)
        return evaluate(model, task, *args)

    monkeypatch.setattr(tasklens.matrix, "evaluate", counted)
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
    assert evaluations == ["continent_of"] * 3  # baseline, the set, its control
    assert result.values.shape == (1, 1) and result.sizes["ours"] == 1
