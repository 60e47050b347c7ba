from __future__ import annotations

from math import comb

import pytest
import torch

from tasklens.analysis.compare import (
    exclusive,
    overlap,
    overlap_matrix,
    parameter_similarity,
    shared,
    sharing_table,
)
from tasklens.data.neurons import NeuronSet


def nset(pairs, name, shape=(2, 10)):
    return NeuronSet.from_pairs(pairs, shape, name)


def test_overlap_counts_jaccard_and_hypergeometric_p():
    a = nset([(0, 0), (0, 1), (0, 2), (1, 5)], "a")
    b = nset([(0, 1), (0, 2), (1, 9)], "b")
    o = overlap(a, b)
    assert (o.a, o.b, o.shared, o.union, o.total) == (4, 3, 2, 5, 20)
    assert o.jaccard == pytest.approx(2 / 5)
    assert o.expected == pytest.approx(4 * 3 / 20)
    # P(X >= 2) for X ~ Hypergeometric(N=20, K=4, n=3), written out by hand
    by_hand = sum(comb(4, x) * comb(16, 3 - x) for x in (2, 3)) / comb(20, 3)
    assert o.p_value == pytest.approx(by_hand, rel=1e-12)


def test_overlap_matrix_and_sharing():
    a = nset([(0, 0), (0, 1), (1, 1)], "a")
    b = nset([(0, 1), (1, 2)], "b")
    c = nset([(0, 1), (1, 1), (1, 3)], "c")
    m = overlap_matrix([a, b, c], "shared")
    assert m.loc["a", "c"] == 2 and m.loc["b", "b"] == 2 and m.loc["a", "b"] == 1
    assert exclusive([a, b, c])["a"].pairs() == [(0, 0)]
    assert shared([a, b, c])["c"].pairs() == [(0, 1), (1, 1)]
    table = sharing_table([a, b, c]).set_index(["task", "layer"])
    assert table.loc[("c", 1), "exclusive"] == 1 and table.loc[("c", 1), "shared"] == 1
    assert table.loc[("a", 0), "shared_by_all"] == 1


def test_parameter_similarity_identical_and_disjoint(organism):
    a = NeuronSet.from_pairs([(1, 3), (1, 4), (2, 7)], (4, 512), "a")
    b = NeuronSet.from_pairs([(1, 5), (2, 7)], (4, 512), "b")
    same = parameter_similarity(organism, a, a)
    assert same[1] == pytest.approx(1.0) and same[2] == pytest.approx(1.0)
    assert torch.isnan(torch.tensor(same[0]))
    sims = parameter_similarity(organism, a, b)
    assert sims[1] == pytest.approx(0.0, abs=1e-6)  # disjoint in layer 1
    assert sims[2] == pytest.approx(1.0)  # the same single neuron in layer 2


def test_similarity_transfer_correlation():
    import pandas as pd
    from scipy.stats import pearsonr

    from tasklens.analysis.compare import similarity_transfer_correlation

    pairs = pd.DataFrame({"sim": [0.1, 0.4, 0.2, 0.9, 0.5], "transfer": [0.0, 0.3, 0.25, 0.7, 0.2]})
    corr = similarity_transfer_correlation(pairs, "sim", "transfer")
    assert corr["pearson"] == pytest.approx(pearsonr(pairs.sim, pairs.transfer).statistic)
    # ranks (1, 3, 2, 5, 4) vs (1, 4, 3, 5, 2): sum d^2 = 6, rho = 1 - 6 * 6 / (5 * 24) = 0.7
    assert corr["spearman"] == pytest.approx(0.7) and corr["n_pairs"] == 5


def test_exclusive_similarity_does_not_move_with_the_overlap(organism):
    from tasklens.analysis.compare import exclusive_parameter_similarity

    a_own, b_own = [(1, i) for i in range(0, 40, 2)], [(1, i) for i in range(1, 40, 2)]
    common = [(1, i) for i in range(100, 160)]
    grid = (4, 512)
    apart = [nset(a_own, "a", grid), nset(b_own, "b", grid)]
    sharing = [nset(a_own + common, "a", grid), nset(b_own + common, "b", grid)]
    # Leng & Xiong's measure rises from 0 with the 60 shared neurons ...
    assert parameter_similarity(organism, *apart)[1] == pytest.approx(0.0, abs=1e-6)
    assert parameter_similarity(organism, *sharing)[1] > 0.5
    # ... the exclusive parts' similarity is the same number either way
    assert exclusive_parameter_similarity(organism, *apart)[1] == pytest.approx(
        exclusive_parameter_similarity(organism, *sharing)[1]
    )
    assert torch.isnan(torch.tensor(exclusive_parameter_similarity(organism, *sharing)[0]))


def test_the_correlation_with_transfer_has_a_permutation_test():
    import numpy as np
    import pandas as pd

    from tasklens.analysis.compare import similarity_transfer_correlation

    rng = np.random.default_rng(0)
    sim = rng.normal(size=30)
    related = pd.DataFrame({"sim": sim, "transfer": sim + rng.normal(0, 0.3, 30)})
    unrelated = pd.DataFrame({"sim": sim, "transfer": rng.normal(size=30)})
    assert similarity_transfer_correlation(related, "sim", "transfer")["p_permutation"] < 0.001
    assert similarity_transfer_correlation(unrelated, "sim", "transfer")["p_permutation"] > 0.05
