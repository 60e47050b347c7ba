from __future__ import annotations

import torch

from tasklens.data.neurons import NeuronSet
from tasklens.selection import knowledge_neurons, lape, shared_by


def test_lape_keeps_low_entropy_neurons_and_assigns_them_to_their_tasks():
    # 1 layer x 100 neurons, two tasks; neurons 0-2 fire almost only for task a, 3 only for b
    a = torch.full((1, 100), 0.1)
    b = torch.full((1, 100), 0.1)
    a[0, :3], b[0, 3] = 0.9, 0.8
    b[0, :3] = 0.01
    a[0, 3] = 0.0
    a[0, 4], b[0, 4] = 0.9, 0.9  # fires for both: high entropy, never kept
    sets = lape({"a": a, "b": b}, filter_quantile=0.95, keep_fraction=0.04, bar_quantile=0.95)
    assert sets["a"].pairs() == [(0, 0), (0, 1), (0, 2)]
    assert sets["b"].pairs() == [(0, 3)]


def test_knowledge_neuron_refinement():
    scores = torch.zeros(4, 2, 5)
    scores[:, 0, 1] = 1.0  # the top neuron in every prompt
    scores[:3, 1, 2] = 0.5  # above 0.2 x max in 3 of 4 prompts
    scores[:2, 1, 4] = 0.9  # in only 2 of 4
    scores[:, 0, 3] = 0.1  # below 0.2 x max everywhere
    kept = knowledge_neurons(scores, fraction=0.2, min_share=0.7)
    assert kept.pairs() == [(0, 1), (1, 2)]


def test_shared_by_a_share_of_sets():
    sets = [NeuronSet.from_pairs(p, (1, 4)) for p in ([(0, 0), (0, 1)], [(0, 0)], [(0, 0), (0, 2)], [(0, 3)])]
    assert shared_by(sets, 0.5).pairs() == [(0, 0)]
    assert shared_by(sets, 0.25).pairs() == [(0, 0), (0, 1), (0, 2), (0, 3)]
