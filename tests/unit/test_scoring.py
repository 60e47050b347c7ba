"""Scoring rules that need no model: average precision, which metrics a gradient can use, registries."""

from __future__ import annotations

import pytest
import torch

import tasklens
from tasklens.errors import TasklensError
from tasklens.scoring import AttributionPatching, get_scorer

pytestmark = pytest.mark.reliability


@pytest.mark.parametrize("kind", ["continuous", "ties", "constant", "relu"])
def test_average_precision_equals_sklearn(kind):
    from sklearn.metrics import average_precision_score

    from tasklens.scoring.expertise import average_precision

    generator = torch.Generator().manual_seed(hash(kind) % 1000)
    for _ in range(25):
        n = int(torch.randint(6, 50, (1,), generator=generator))
        labels = torch.rand(n, generator=generator) < 0.3
        labels[:2] = torch.tensor([True, False])
        if kind == "continuous":
            scores = torch.rand(n, 7, generator=generator)
        elif kind == "ties":
            scores = torch.randint(0, 3, (n, 7), generator=generator).float()
        elif kind == "constant":
            scores = torch.zeros(n, 7)
        else:
            scores = torch.relu(torch.randn(n, 7, generator=generator))
        ours = average_precision(scores, labels)
        reference = [average_precision_score(labels.numpy(), scores[:, j].numpy()) for j in range(7)]
        torch.testing.assert_close(ours, torch.tensor(reference, dtype=torch.float64), rtol=0, atol=1e-12)


def test_a_dead_neuron_is_not_a_perfect_expert():
    from tasklens.scoring.expertise import average_precision

    assert float(average_precision(torch.zeros(5, 1), torch.tensor([1, 0, 0, 0, 0]).bool())[0]) == 0.2


def test_a_generative_metric_cannot_be_differentiated():
    with pytest.raises(TasklensError, match="read off generated text"):
        AttributionPatching(metric="greedy_match")


def test_registries_name_what_they_know_and_refuse_duplicates():
    with pytest.raises(TasklensError, match=r"choose one of \[.*'attribution_patching'"):
        get_scorer("attribution_patchng")
    with pytest.raises(TasklensError, match="already registered"):
        tasklens.register_metric("logprob", lambda logits, batch: logits.sum())
