"""`locate`: every task scored by one scorer, then each task's set selected; and the one way to read a
scorer's parameters (`get_params`), which the scores' provenance records."""

from __future__ import annotations

import dataclasses
import doctest
from typing import ClassVar

import pytest
import torch

import tasklens
from tasklens.analysis import locate as locate_module
from tasklens.analysis.locate import locate
from tasklens.errors import TasklensError
from tasklens.finetune import task_neurons
from tasklens.runs.demo import run_demo
from tasklens.scoring import SCORERS, ActivationStats, GradientAttribution, get_scorer
from tasklens.scoring.base import make_scores
from tasklens.selection import contrast, select, top_k, top_percent
from tasklens.tasks.builtin import load_builtin

NAMES = ("continent_of", "addition", "larger_number")


@pytest.fixture(scope="module")
def tasks():
    return {name: load_builtin(name, "detection").sample(4) for name in NAMES}


class Counting(ActivationStats):
    """Activation statistics that count the tasks they score."""

    name: ClassVar[str] = "counting_locate"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.calls: list[str] = []

    def attribute(self, model, task, **kw):
        self.calls.append(task.name)
        return super().attribute(model, task, **kw)


def test_each_set_is_its_tasks_scores_selected(organism, tasks):
    scorer = GradientAttribution()
    sets = locate(organism, tasks, scorer, "top_k", 7)
    assert list(sets) == list(NAMES)
    for name, neurons in sets.items():
        expected = top_k(scorer.attribute(organism, tasks[name]), 7)
        assert neurons.name == name and len(neurons) == 7
        assert torch.equal(neurons.mask, expected.mask)


def test_a_sequence_of_tasks_is_named_by_the_tasks_and_a_scorer_by_its_name(organism, tasks):
    sets = locate(organism, list(tasks.values()), "activation_stats", "top_percent", 2.0)
    reference = ActivationStats()
    for name, task in tasks.items():
        assert torch.equal(sets[name].mask, top_percent(reference.attribute(organism, task), 2.0).mask)
    twice = [tasks["addition"], tasks["addition"]]
    with pytest.raises(TasklensError, match="Two tasks are named 'addition'"):
        locate(organism, twice, "activation_stats")


def test_given_scores_are_reused_and_new_ones_reported_as_they_come(organism, tasks):
    scorer = Counting()
    earlier = {"addition": scorer.attribute(organism, tasks["addition"])}
    scorer.calls.clear()
    reported = []
    locate(organism, tasks, scorer, "top_k", 3, scores=earlier, on_scores=lambda n, s: reported.append(n))
    assert scorer.calls == ["continent_of", "larger_number"]
    assert reported == ["continent_of", "larger_number"]
    assert set(earlier) == set(NAMES)  # the new scores were written in
    assert earlier["continent_of"].task == "continent_of"


def test_contrast_selects_on_task_specific_scores(organism, tasks):
    scorer = ActivationStats(statistic="mean_abs")
    raw = {name: scorer.attribute(organism, task) for name, task in tasks.items()}
    specific = contrast(raw)
    within = locate(organism, tasks, scorer, "top_k", 5, contrast=True)
    only_two = {n: tasks[n] for n in ("continent_of", "addition")}
    against_all = locate(organism, only_two, scorer, "top_k", 5, contrast=tasks)
    for name in NAMES:
        assert torch.equal(within[name].mask, top_k(specific[name], 5).mask)
    assert list(against_all) == ["continent_of", "addition"]  # contrasted-with tasks get no set
    for name in only_two:
        assert torch.equal(against_all[name].mask, within[name].mask)
    assert not torch.equal(within["addition"].mask, top_k(raw["addition"], 5).mask)
    with pytest.raises(TasklensError, match="contrast needs at least two tasks"):
        locate(organism, {"addition": tasks["addition"]}, scorer, contrast=True)


def test_a_bad_rule_or_value_fails_before_anything_is_scored(organism, tasks):
    scorer = Counting()
    with pytest.raises(TasklensError, match="Cannot select 0 neurons"):
        locate(organism, tasks, scorer, "top_k", 0)
    with pytest.raises(TasklensError, match="Unknown selection 'top_kk'"):
        locate(organism, tasks, scorer, "top_kk", 3)
    assert scorer.calls == []


def test_the_docstring_example_runs():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(locate_module.locate, "locate", globs={}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0


def test_finetune_task_neurons_are_located_on_a_sample(organism, tasks):
    sets = task_neurons(organism, tasks, scorer="activation_stats", rule="top_k", value=4, n_prompts=3)
    reference = ActivationStats()
    for name, task in tasks.items():
        expected = top_k(reference.attribute(organism, task.sample(3)), 4)
        assert sets[name].name == name and torch.equal(sets[name].mask, expected.mask)


def test_the_demo_locates_on_contrast_with_every_built_in_task(organism, monkeypatch):
    seen = {}

    def spy(model, tasks, scorer, rule, value, **options):
        seen.update(tasks=list(tasks), rule=rule, value=value, pool=sorted(options["contrast"]))
        return locate(model, tasks, scorer, rule, value, **options)

    monkeypatch.setattr("tasklens.runs.demo.locate", spy)
    demo = run_demo(model=organism, tasks=("continent_of", "addition"), percent=0.5, n_controls=2,
                    max_prompts=4, progress=False)  # fmt: skip
    assert seen["tasks"] == ["continent_of", "addition"] and seen["rule"] == "top_percent"
    assert seen["value"] == 0.5 and len(seen["pool"]) > 2 and "capital_of" in seen["pool"]
    assert [s.name for s in demo.sets] == ["continent_of", "addition"]


# --- get_params: one reader of a scorer's parameters ----------------------------------------------
@pytest.mark.parametrize("name", SCORERS.names())
def test_every_scorer_reports_its_parameters(name):
    scorer = get_scorer(name)
    params = scorer.get_params()
    fields = [f.name for f in dataclasses.fields(scorer) if f.metadata.get("record", True)]
    assert list(params) == fields
    assert "means" not in params  # a cache, not a parameter


def test_get_params_are_plain_data_and_what_scores_record(organism, tasks):
    negatives = [tasks["addition"]]
    scorer = get_scorer("average_precision", negatives=negatives, negative_ratio=2)
    params = scorer.get_params()
    assert params["negative_ratio"] == 2 and params["seed"] == 0
    assert params["negatives"] == [tasks["addition"].provenance()]
    stats = ActivationStats(statistic="std")
    scores = stats.attribute(organism, tasks["continent_of"])
    assert scores.params == stats.get_params() == {"statistic": "std", "positions": "prompt"}


def test_a_registered_plain_dataclass_scorer_gets_get_params(organism, tasks, monkeypatch):
    monkeypatch.setattr(SCORERS, "_items", dict(SCORERS._items))

    @tasklens.register_scorer
    @dataclasses.dataclass
    class Plain:
        """A plug-in scorer that knows nothing of ScorerParams."""

        scale: float = 2.0
        name: ClassVar[str] = "plain_for_get_params"

        def attribute(self, model, task, *, unit="hook_post", batch_size=32):
            values = torch.full(tasklens.ModelInfo.of(model).shape, self.scale)
            return make_scores(self, model, task, values, unit, len(task), 0, reduction="none")

    scorer = get_scorer("plain_for_get_params", scale=3.0)
    assert scorer.get_params() == {"scale": 3.0}
    assert scorer.attribute(organism, tasks["addition"]).params == {"scale": 3.0}
    with pytest.raises(
        TasklensError, match=r"has no parameter\(s\) \['size'\]; its parameters are \['scale'\]"
    ):
        get_scorer("plain_for_get_params", size=1)
    assert select(scorer.attribute(organism, tasks["addition"]), "top_k", 2).name == "addition"
