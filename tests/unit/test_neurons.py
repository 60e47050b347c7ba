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


# --- replayed review cases: ties, masks, sidecars and damaged files --------------------------------
GRID = (4, 512)


def scores_of(values: torch.Tensor, **kw) -> NeuronScores:
    return NeuronScores(values=values, model="organism", task=kw.pop("task", "t"), method="m", **kw)


@pytest.mark.reliability
def test_top_k_breaks_ties_by_index():
    values = torch.zeros(GRID)
    values[2, 7] = values[0, 9] = values[3, 1] = 1.0  # three tied maxima, then all zeros tied
    chosen = top_k(scores_of(values), 5)
    assert chosen.pairs() == [(0, 0), (0, 1), (0, 9), (2, 7), (3, 1)]


@pytest.mark.reliability
def test_top_k_and_cumulativity_bands_agree_on_ties():
    from tasklens.analysis.experiments import _ranked

    values = torch.randint(0, 3, GRID).float()  # many ties
    scores = scores_of(values)
    for k in (1, 7, 100, 513):
        assert torch.equal(top_k(scores, k).mask, _ranked(scores, 0, k).mask)


@pytest.mark.reliability
def test_per_layer_top_k_breaks_ties_by_index():
    chosen = per_layer_top_k(scores_of(torch.zeros(GRID)), 2)
    assert chosen.pairs() == [(layer, i) for layer in range(4) for i in (0, 1)]


@pytest.mark.reliability
@pytest.mark.parametrize("k", [2.7, float("nan"), float("inf"), 1e-3])
def test_top_k_refuses_a_non_whole_k(k):
    with pytest.raises(TasklensError, match="whole number"):
        top_k(scores_of(torch.rand(GRID)), k)


@pytest.mark.reliability
def test_top_k_accepts_a_whole_float():
    assert len(top_k(scores_of(torch.rand(GRID)), 2.0)) == 2


@pytest.mark.reliability
def test_nan_written_after_construction_is_refused_not_selected_first():
    scores = scores_of(torch.rand(GRID))
    scores.values[1, 5] = float("nan")
    with pytest.raises(TasklensError, match="NaN"):
        top_k(scores, 3)
    with pytest.raises(TasklensError, match="NaN"):
        scores.top(3)


@pytest.mark.reliability
@pytest.mark.parametrize("pair", [(-1, -1), (-1, 0), (0, -1), (4, 0), (0, 512)])
def test_membership_outside_the_grid_is_false(pair):
    everything = NeuronSet(torch.ones(GRID, dtype=torch.bool))
    assert pair not in everything


@pytest.mark.reliability
def test_a_mask_that_is_not_zero_one_is_refused():
    with pytest.raises(TasklensError, match="0/1"):
        NeuronSet(torch.rand(GRID))


@pytest.mark.reliability
def test_a_scores_tensor_copied_over_a_set_file_is_refused(tmp_path):
    import json
    import shutil

    neurons = NeuronSet.from_pairs([(0, 1)], GRID, "s")
    neurons.save(tmp_path / "s")
    scores_of(torch.rand(GRID)).save(tmp_path / "scores")
    shutil.copy(tmp_path / "scores.safetensors", tmp_path / "s.safetensors")
    meta = json.loads((tmp_path / "s.json").read_text())
    meta.pop("sha256")  # even without the pair's hash binding, the values give it away
    (tmp_path / "s.json").write_text(json.dumps(meta))
    with pytest.raises(TasklensError, match="not a 0/1"):
        NeuronSet.load(tmp_path / "s")


@pytest.mark.reliability
def test_a_set_file_whose_sidecar_claims_another_size_is_refused(tmp_path):
    import json

    NeuronSet.from_pairs([(0, 1), (1, 2)], GRID, "s").save(tmp_path / "s")
    meta = json.loads((tmp_path / "s.json").read_text())
    meta["size"] = 5
    meta.pop("sha256")
    (tmp_path / "s.json").write_text(json.dumps(meta))
    with pytest.raises(TasklensError, match="size 5"):
        NeuronSet.load(tmp_path / "s")


@pytest.mark.reliability
def test_a_tensor_from_another_run_is_not_accepted_with_this_sidecar(tmp_path):
    import shutil

    scores_of(torch.rand(GRID)).save(tmp_path / "a")
    scores_of(torch.rand(GRID)).save(tmp_path / "b")
    shutil.copy(tmp_path / "b.safetensors", tmp_path / "a.safetensors")  # a kill between two renames
    with pytest.raises(TasklensError, match="two different runs or a write was interrupted"):
        NeuronScores.load(tmp_path / "a")


@pytest.mark.reliability
@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage", "truncate"])
def test_a_damaged_safetensors_file_is_a_clear_error(tmp_path, content):
    import json

    scores_of(torch.rand(GRID)).save(tmp_path / "a")
    tensor = tmp_path / "a.safetensors"
    data = tensor.read_bytes()[:100] if content == "truncate" else content
    tensor.write_bytes(data)
    meta = json.loads((tmp_path / "a.json").read_text())
    meta.pop("sha256")
    (tmp_path / "a.json").write_text(json.dumps(meta))
    with pytest.raises(TasklensError, match="not a readable safetensors file"):
        NeuronScores.load(tmp_path / "a")


@pytest.mark.reliability
def test_an_invalid_sidecar_is_a_clear_error_and_an_extended_one_still_loads(tmp_path):
    import json

    scores_of(torch.rand(GRID)).save(tmp_path / "a")
    meta = json.loads((tmp_path / "a.json").read_text())
    (tmp_path / "a.json").write_text(json.dumps({**meta, "added_in_a_later_version": {"x": 1}}))
    assert NeuronScores.load(tmp_path / "a").method == "m"
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(TasklensError, match="not valid JSON"):
        NeuronScores.load(tmp_path / "a")


@pytest.mark.reliability
def test_loading_never_unpickles(tmp_path):
    import json
    import os
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    scores_of(torch.rand(GRID)).save(tmp_path / "a")
    (tmp_path / "a.safetensors").write_bytes(pickle.dumps(Payload()))
    meta = json.loads((tmp_path / "a.json").read_text())
    meta.pop("sha256")
    (tmp_path / "a.json").write_text(json.dumps(meta))
    with pytest.raises(TasklensError):
        NeuronScores.load(tmp_path / "a")
    assert not marker.exists()


@pytest.mark.reliability
def test_scores_add_up_by_their_reduction():
    a = scores_of(torch.ones(GRID), n_prompts=2, n_tokens=10)
    b = scores_of(torch.full(GRID, 3.0), n_prompts=1, n_tokens=30)
    assert float((a + b).values[0, 0]) == 4.0 and (a + b).n_prompts == 3
    assert float(sum([a, b]).values[0, 0]) == 4.0
    means = scores_of(torch.ones(GRID), n_tokens=10, reduction="mean") + scores_of(
        torch.full(GRID, 3.0), n_tokens=30, reduction="mean"
    )
    assert float(means.values[0, 0]) == pytest.approx(2.5)
    with pytest.raises(TasklensError, match="do not add up"):
        scores_of(torch.ones(GRID), reduction="none") + scores_of(torch.ones(GRID), reduction="none")
    other = NeuronScores(values=torch.ones(GRID), model="organism", task="t", method="other")
    with pytest.raises(TasklensError, match="different method"):
        a + other
