"""Random sets matched on activation size within each layer, generic units apart."""

from __future__ import annotations

import pytest
import torch

from tasklens.data.neurons import NeuronScores, NeuronSet
from tasklens.errors import TasklensError
from tasklens.selection import Strata, random_like, top_k


def _scores(layers=3, width=200, seed=0) -> NeuronScores:
    values = torch.rand(layers, width, generator=torch.Generator().manual_seed(seed)) ** 4
    return NeuronScores(values, model="demo", task="t", method="mean_abs")


def test_matched_random_sets_keep_the_counts_per_layer_and_stratum():
    scores = _scores()
    strata = Strata.by_size(scores, bins=5)
    found = top_k(scores, 30)  # the largest neurons: all in the top bin of their layer
    for seed in range(20):
        control = random_like(found, seed, strata)
        assert control.counts_per_layer() == found.counts_per_layer()
        for layer in range(3):
            for label in range(5):
                in_stratum = strata.labels[layer] == label
                assert int((control.mask[layer] & in_stratum).sum()) == int(
                    (found.mask[layer] & in_stratum).sum()
                )
    plain = [random_like(found, s) for s in range(20)]
    matched = [random_like(found, s, strata) for s in range(20)]
    size = lambda sets: torch.stack([scores.values[s.mask].mean() for s in sets]).mean()  # noqa: E731
    assert size(matched) > 3 * size(plain)  # as large as the set's neurons, unlike plain draws
    assert random_like(found, 3, strata).pairs() == random_like(found, 3, strata).pairs()
    assert random_like(found, 3).pairs() == random_like(found, 3, None).pairs()  # unmatched: unchanged


def test_generic_units_form_their_own_stratum():
    scores = _scores(layers=2, width=100)
    generic = NeuronSet.from_pairs([(1, 3), (1, 4), (1, 5)], (2, 100), name="generic")
    strata = Strata.by_size(scores, bins=4, generic=generic)
    found = NeuronSet.from_pairs([(1, 3), (0, 7), (1, 50)], (2, 100), name="t")
    for seed in range(10):
        drawn = random_like(found, seed, strata)
        assert int((drawn.mask & generic.mask).sum()) == 1  # as many generic units as the set
    assert "3 generic units apart" in strata.description and strata.to_dict()["sha256"]


def test_strata_refuse_what_does_not_fit():
    scores = _scores(layers=2, width=10)
    with pytest.raises(TasklensError, match="bins must be a whole number from 1 to 10"):
        Strata.by_size(scores, bins=0)
    other = NeuronSet.from_pairs([(0, 1)], (2, 20), name="x")
    with pytest.raises(TasklensError, match=r"strata are on a \(2, 10\) grid"):
        random_like(other, 0, Strata.by_size(scores, bins=2))
