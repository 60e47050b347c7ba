"""The random-set engine gives the results of the one-at-a-time loop (`tests/reference_matrix.py`):
every field of every `EvaluationResult`, the sequential stop and the ``at_stake`` gate included,
with several random sets per forward pass, a shared prompt prefix, other interventions and a
journal that an interrupted run resumes from; bfloat16 keeps the organism's verdicts."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
import torch
from reference_matrix import one_at_a_time

import tasklens.analysis.engine
from tasklens.analysis.matrix import evaluation_matrices
from tasklens.data.neurons import NeuronSet
from tasklens.errors import TasklensError
from tasklens.interventions import Intervention
from tasklens.selection import random_like
from tasklens.tasks import Task
from tasklens.tasks.builtin import load_builtin

GRID = (4, 512)
NAMES = ("addition", "continent_of", "larger_number")


@pytest.fixture(scope="module")
def tasks():
    return [load_builtin(n, "evaluation").head(24) for n in NAMES]


@pytest.fixture(scope="module")
def sets(organism):
    """A set that lowers addition more than random sets do (its top neurons by |a*dL/da|) and
    random sets named after the other tasks (no better than their own random sets)."""
    from tasklens.scoring import GradientAttribution
    from tasklens.selection import top_k

    scores = GradientAttribution().attribute(organism, load_builtin("addition", "detection").head(32))
    addition = top_k(scores, 100).renamed("addition")
    noise = random_like(addition, seed=123).renamed("continent_of")
    return [addition, noise]


def assert_same(ours: dict, theirs: dict, exact: bool = True) -> None:
    """Every field of the results by metric, to the bit (``exact``) or to 1e-6 relative."""
    assert list(ours) == list(theirs)
    tolerance = {} if exact else {"check_exact": False, "rtol": 1e-6, "atol": 1e-9}
    for metric in ours:
        a, b = ours[metric], theirs[metric]
        assert (a.metric, a.intervention, a.n_controls, a.seed, a.settled, a.stop_after, a.sets) == (
            b.metric,
            b.intervention,
            b.n_controls,
            b.seed,
            b.settled,
            b.stop_after,
            b.sets,
        )
        pd.testing.assert_series_equal(a.baseline, b.baseline, **tolerance)
        pd.testing.assert_series_equal(a.sizes, b.sizes)
        for name in ("values", "controls", "controls_std"):
            pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), **tolerance)
        for name in ("prompt_values", "control_values", "control_prompt_values", "floor_values"):
            pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), **tolerance)


SETTINGS = {
    "every task": dict(n_controls=3),
    "own task, sequential, at stake": dict(n_controls=4, controls_on="own", stop_after=2, at_stake=12),
    "sequential, 4 per forward": dict(
        n_controls=4, controls_on="own", stop_after=3, at_stake=12, sets_per_forward=4
    ),
    "every task, 3 per forward": dict(n_controls=5, sets_per_forward=3),
}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_the_engine_gives_the_one_at_a_time_results(organism, sets, tasks, setting):
    kwargs = SETTINGS[setting]
    reference = {k: v for k, v in kwargs.items() if k != "sets_per_forward"}
    ours = evaluation_matrices(organism, sets, tasks, ("exact_match", "logprob"), **kwargs)
    theirs = one_at_a_time(organism, sets, tasks, ("exact_match", "logprob"), **reference)
    assert_same(ours, theirs)
    if "at_stake" in kwargs:  # the gate and the stop did their work: counts differ by set
        drawn = ours["logprob"].control_values.query("task == set").groupby("set")["run"].nunique()
        assert drawn["continent_of"] <= kwargs["n_controls"] < drawn["addition"]


@pytest.mark.parametrize("kind", ["mean", "position_mean", "amplify"])
def test_several_random_sets_per_forward_under_other_interventions(organism, sets, tasks, kind):
    source = load_builtin("capital_of", "detection").head(8)
    spec = Intervention(kind, source=source) if kind != "amplify" else Intervention("amplify", factor=3.0)
    kwargs = dict(n_controls=3, intervention=spec, measure_floor=False)
    ours = evaluation_matrices(organism, sets[:1], tasks[:2], ("logprob",), sets_per_forward=3, **kwargs)
    assert_same(ours, one_at_a_time(organism, sets[:1], tasks[:2], ("logprob",), **kwargs), exact=False)


def test_a_shared_prefix_runs_once_per_random_set(organism, sets):
    """Prompts that begin alike (a chat template's system turn) run that prefix once per random
    set of a forward pass, and the values are those of the whole sequences."""
    base = load_builtin("continent_of", "evaluation").head(12)
    preamble = "Answer with one word, as briefly as you can, please. "
    task = Task.from_lists("continent_of", [preamble + p for p in base.prompts], list(base.answers))
    calls = []
    with organism.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda act, hook: calls.append(act.shape))]):
        ours = evaluation_matrices(organism, sets[1:], [task], ("logprob",), n_controls=3, sets_per_forward=3)
    assert any(shape[0] == 3 for shape in calls)  # the prefix, once per random set
    assert_same(ours, one_at_a_time(organism, sets[1:], [task], ("logprob",), n_controls=3), exact=False)


def test_an_interrupted_evaluation_resumes_from_its_journal(organism, sets, tasks, tmp_path, monkeypatch):
    kwargs = dict(n_controls=3, controls_on="own", stop_after=2, at_stake=9, journal=tmp_path / "journal")
    complete = one_at_a_time(
        organism, sets, tasks, ("logprob",), **{k: v for k, v in kwargs.items() if k != "journal"}
    )
    total = len(complete["logprob"].control_values)
    evaluate = tasklens.analysis.engine.evaluate_metrics
    calls = []

    def interrupted(*args, **kw):
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(1)
        return evaluate(*args, **kw)

    monkeypatch.setattr(tasklens.analysis.engine, "evaluate_metrics", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluation_matrices(organism, sets, tasks, ("logprob",), **kwargs)
    entries = sorted((tmp_path / "journal").glob("*/run_*.safetensors"))
    assert len(entries) == 4  # every random set finished before the interruption, none after

    calls.clear()
    monkeypatch.setattr(
        tasklens.analysis.engine, "evaluate_metrics", lambda *a, **k: calls.append(1) or evaluate(*a, **k)
    )
    resumed = evaluation_matrices(organism, sets, tasks, ("logprob",), **kwargs)
    assert len(calls) == total - 4  # only what was not finished
    assert_same(resumed, complete)

    calls.clear()
    other = evaluation_matrices(organism, sets, tasks, ("logprob", "exact_match"), **kwargs)
    assert len(calls) == total  # other metrics: nothing of the journal applies
    assert_same({"logprob": other["logprob"]}, complete)


def test_a_journal_entry_that_is_not_one_is_a_clear_error(organism, sets, tasks, tmp_path):
    journal = tmp_path / "journal"
    evaluation_matrices(organism, sets[1:], tasks[:1], ("logprob",), n_controls=2, journal=journal)
    entry = sorted(journal.glob("*/run_*.safetensors"))[0]
    entry.write_bytes(b"not a tensor file")
    with pytest.raises(TasklensError, match=r"journal entry .* cannot be read .* move it away"):
        evaluation_matrices(organism, sets[1:], tasks[:1], ("logprob",), n_controls=2, journal=journal)
    (tmp_path / "file").write_text("mine")
    with pytest.raises(TasklensError, match=r"journal .* is a file; give a folder"):
        evaluation_matrices(organism, sets[1:], tasks[:1], n_controls=2, journal=tmp_path / "file")


def test_bad_engine_settings_are_refused_before_any_work(organism, sets, tasks):
    with pytest.raises(TasklensError, match="precision"):
        evaluation_matrices(organism, sets, tasks, n_controls=1, precision="float16")
    with pytest.raises(TasklensError, match="sets_per_forward must be a whole number >= 1"):
        evaluation_matrices(organism, sets, tasks, n_controls=1, sets_per_forward=0)


def test_the_sampler_draws_the_random_sets(organism, sets, tasks):
    shifted = functools.partial(lambda neurons, seed: random_like(neurons, seed + 1000))
    ours = evaluation_matrices(organism, sets[:1], tasks[:1], ("logprob",), n_controls=2, sampler=shifted)
    theirs = one_at_a_time(organism, sets[:1], tasks[:1], ("logprob",), n_controls=2, seed=1000)
    pd.testing.assert_frame_equal(
        ours["logprob"].control_prompt_values.drop(columns="run"),
        theirs["logprob"].control_prompt_values.drop(columns="run"),
    )

    def fewer(neurons, seed):
        return NeuronSet.from_pairs([(0, 1)], GRID)

    with pytest.raises(TasklensError, match="not a NeuronSet with its per-layer counts"):
        evaluation_matrices(organism, sets[:1], tasks[:1], n_controls=1, sampler=fewer)


def test_bfloat16_random_sets_keep_the_verdicts(organism, sets, tasks):
    """bfloat16 products for the random sets: each per-prompt value within the stated tolerance of
    float32, and every verdict of both tests the same (the sets themselves stay float32)."""
    from tasklens.models.precision import TOLERANCE

    kwargs = dict(n_controls=40, controls_on="own")  # two sets under BH: p < 0.025
    full = evaluation_matrices(organism, sets, tasks, ("exact_match", "logprob"), **kwargs)
    reduced = evaluation_matrices(
        organism, sets, tasks, ("exact_match", "logprob"), precision="bfloat16", **kwargs
    )
    for metric in full:
        pd.testing.assert_frame_equal(reduced[metric].prompt_values, full[metric].prompt_values)
        a = full[metric].control_prompt_values["value"].to_numpy()
        b = reduced[metric].control_prompt_values["value"].to_numpy()
        if metric == "logprob":
            assert np.abs(a - b).max() <= TOLERANCE["logprob"]
            assert np.abs(a - b).max() > 0  # bfloat16 did run
        else:
            assert (a != b).mean() <= TOLERANCE["exact_match_flips"]
        for test in ("specificity", "against_random"):
            ours, theirs = getattr(reduced[metric], test)(), getattr(full[metric], test)()
            assert ours["verdict"].tolist() == theirs["verdict"].tolist(), (metric, test)
    assert full["logprob"].against_random().loc["addition", "verdict"] == "beyond random sets"


def test_reduced_precision_leaves_the_model_as_it_was(organism):
    from tasklens.models.precision import reduced_precision

    tokens = torch.tensor([[1, 5, 7, 9, 11]])
    with torch.no_grad():
        before = organism(tokens)
        with reduced_precision(organism, "bfloat16"):
            inside = organism(tokens)
        after = organism(tokens)
    assert torch.equal(before, after) and inside.dtype == torch.float32
    assert 0 < float((inside - before).abs().max()) < 0.5
    assert all(p.dtype == torch.float32 for p in organism.parameters())


def test_a_set_named_after_no_task_draws_nothing_on_its_own_task(organism, sets, tasks, tmp_path):
    other = sets[0].renamed("other")
    kwargs = dict(n_controls=2, controls_on="own")
    ours = evaluation_matrices(organism, [other], tasks[:1], ("logprob",), journal=tmp_path, **kwargs)
    assert_same(ours, one_at_a_time(organism, [other], tasks[:1], ("logprob",), **kwargs))
    assert ours["logprob"].controls.isna().all().all()
