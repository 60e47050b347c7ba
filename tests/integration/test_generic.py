"""Generic units: the organism's neurons that fire on the shared first token far more than elsewhere."""

from __future__ import annotations

from tasklens.analysis.generic import generic_units, position_zero_profile
from tasklens.data.neurons import NeuronSet
from tasklens.tasks.builtin import load_builtin


def test_position_zero_units_are_found_and_can_be_excluded(organism):
    task = load_builtin("continent_of", "detection").head(16)
    profile = position_zero_profile(organism, task)
    assert len(profile) == 4 * 512 and profile["ratio"].is_monotonic_decreasing
    top = profile.iloc[0]
    # one late neuron carries the BOS state: tens of times its activation anywhere else
    assert top["ratio"] > 50 and top["position_0"] > 10 * profile["position_0"].median()
    assert profile["ratio"].median() < 1  # most neurons are quieter at position 0
    generic = generic_units(organism, task, ratio=10.0)
    assert len(generic) == int((profile["ratio"] >= 10).sum()) > 0
    assert (int(top["layer"]), int(top["neuron"])) in generic.pairs()
    chosen = NeuronSet.from_pairs([(int(top["layer"]), int(top["neuron"])), (0, 1)], generic.shape, "set")
    assert (chosen - generic).pairs() == [(0, 1)]
    core = position_zero_profile(organism, task, neurons=chosen)
    assert len(core) == 2 and core["ratio"].iloc[0] == top["ratio"]


def test_locate_can_exclude_generic_units_and_keeps_each_sets_size(organism):
    from tasklens.analysis.locate import locate

    tasks = [load_builtin(n, "detection").head(8) for n in ("continent_of", "addition")]
    generic = generic_units(organism, tasks[0], ratio=10.0)
    with_them = locate(organism, tasks, "activation_stats", "top_k", 40)
    without = locate(organism, tasks, "activation_stats", "top_k", 40, exclude=generic)
    for name, neurons in without.items():
        assert len(neurons) == 40 and not (neurons.mask & generic.mask).any()
        kept = with_them[name] - generic  # the neurons that were not generic stay chosen
        assert (kept.mask & ~neurons.mask).sum() == 0
    assert any((s.mask & generic.mask).any() for s in with_them.values())  # there was something to exclude
