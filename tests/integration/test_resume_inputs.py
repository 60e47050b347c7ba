"""A resumed run keeps a saved result only when every input that changes it is the same, and
results on other prompts never add up (the selectivity issue's resume cases, on the organism)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tasklens import load_builtin
from tasklens.analysis.matrix import evaluation_inputs, evaluation_matrices
from tasklens.errors import TasklensError
from tasklens.interventions import Intervention
from tasklens.selection import random_like
from tasklens.tasks.text import general_text

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
from test_script_arguments import script

pytestmark = pytest.mark.reliability


def _tasks(eval_prompts: int = 12, text_prompts: int = 4):
    relation = load_builtin("continent_of", "evaluation").head(eval_prompts)
    return [relation, general_text(text_prompts)]


def test_resume_keeps_only_results_of_exactly_the_same_inputs(organism, tmp_path):
    saved = script("specificity").saved
    tasks = _tasks()
    neurons = random_like(load_builtin_set(organism), seed=7).renamed("continent_of")
    zero = Intervention("zero")
    draw = dict(controls_on="own", stop_after=2, at_stake=4)
    by_metric = evaluation_matrices(organism, [neurons], tasks, ["logprob"], 3, intervention=zero, **draw)
    by_metric["logprob"].save(tmp_path / "result_A_logprob")

    def expected(tasks=tasks, n_controls=3, intervention=zero, seed=0, **changes):
        options = {**draw, **changes}
        return {
            "logprob": evaluation_inputs(
                organism, tasks, "logprob", intervention, n_controls, seed, **options
            )
        }

    assert saved(tmp_path, "A", [neurons], expected()) is not None
    changed = {
        "--eval-prompts": expected(tasks=_tasks(eval_prompts=8)),
        "--text-prompts": expected(tasks=_tasks(text_prompts=2)),
        "tasks": expected(tasks=tasks[:1]),
        "--settled": expected(n_controls=2),
        "--controls": expected(at_stake=5),
        "--stop-after": expected(stop_after=1),
        "seed": expected(seed=1),
        "intervention": expected(intervention=Intervention("amplify", factor=2.0)),
        "controls_on": expected(controls_on="all"),
    }
    for what, inputs in changed.items():
        assert saved(tmp_path, "A", [neurons], inputs) is None, what
    assert saved(tmp_path, "A", [neurons.renamed("other")], expected()) is None  # other sets


def load_builtin_set(model):
    from tasklens.data.neurons import NeuronSet

    return NeuronSet.from_pairs([(0, 1), (1, 5), (2, 9), (3, 40)], (model.cfg.n_layers, model.cfg.d_mlp))


def test_results_on_other_prompts_never_add_up(organism):
    neurons = load_builtin_set(organism).renamed("continent_of")
    other = load_builtin_set(organism).renamed("general_text")
    eight = evaluation_matrices(organism, [neurons], _tasks(eval_prompts=8), ["logprob"], 0)["logprob"]
    twelve = evaluation_matrices(organism, [other], _tasks(eval_prompts=12), ["logprob"], 0)["logprob"]
    with pytest.raises(TasklensError, match="same prompts; task 'continent_of' has 8 prompts in one and 12"):
        eight + twelve
    again = evaluation_matrices(organism, [other], _tasks(eval_prompts=8), ["logprob"], 0)["logprob"]
    assert (eight + again).set_names == ["continent_of", "general_text"]
    reseeded = evaluation_matrices(organism, [other], _tasks(eval_prompts=8), ["logprob"], 0, seed=3)[
        "logprob"
    ]
    with pytest.raises(TasklensError, match="seed"):
        eight + reseeded
