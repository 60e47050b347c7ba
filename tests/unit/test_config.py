"""RunConfig: values are checked when a run is configured, before any model loads."""

from __future__ import annotations

import pytest

from tasklens.errors import TasklensError
from tasklens.runs.pipeline import RunConfig, locate

pytestmark = pytest.mark.reliability


def test_a_run_config_holding_none_round_trips_through_its_own_toml(tmp_path):
    config = RunConfig.from_dict({"params": {"baseline": "zero"}, "out": str(tmp_path / "r")})
    config.params["nothing"] = None
    path = tmp_path / "config.toml"
    path.write_text(config.to_toml())
    assert RunConfig.from_toml(path).params == {"baseline": "zero"}


@pytest.mark.parametrize(
    "line, problem",
    [
        ('max_prompts = "ten"', "max_prompts"),
        ('value = "2"', "value"),
        ("params = 5", "params"),
        ("out = 42", "out"),
        ('cumulativity = "no"', "cumulativity"),
        ('tasks = "capital_of"', "tasks"),
        ("controls = 1.5", "controls"),
    ],
)
def test_toml_values_of_the_wrong_type_are_refused(tmp_path, line, problem):
    path = tmp_path / "run.toml"
    path.write_text(line + "\n")
    with pytest.raises(TasklensError, match=rf"{problem} = .* is not a valid"):
        RunConfig.from_toml(path)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"intervention": "ablte"}, "Unknown intervention 'ablte'"),
        ({"eval_split": "evaluaton"}, "has no split 'evaluaton'"),
        ({"split": "tarin"}, "has no split 'tarin'"),
        ({"unit": "hook_postt"}, "Unknown neuron unit"),
        ({"metric": "bleu"}, "Unknown metric 'bleu'"),
        ({"method": "saliency"}, "Unknown scorer 'saliency'"),
        ({"select": "top"}, "Unknown selection 'top'"),
        ({"controls": -1}, "controls must be at least 0"),
        (
            {"controls": 10, "at_stake": 5},
            r"at_stake must be 0 \(as many as the verdicts need\) or at least controls \(10\), got 5",
        ),
        ({"random_precision": "float16"}, "Unknown random_precision 'float16'"),
        ({"max_prompts": 0}, "max_prompts must be at least 1"),
        ({"max_prompts": -1}, "max_prompts must be at least 1"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"params": {"foo": 1}}, r"has no parameter\(s\) \['foo'\]"),
        ({"tasks": []}, "at least one task"),
        ({"plugins": ["no_such_module_xyz"]}, "Could not import plug-in module"),
    ],
)
def test_bad_config_values_fail_before_the_model_loads(tmp_path, fields, message):
    with pytest.raises(TasklensError, match=message):
        locate(RunConfig(model="/nonexistent/model/folder", out=str(tmp_path / "r"), **fields))


def test_out_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(TasklensError, match=r"is a file|not writable"):
            RunConfig(out=str(out)).check()


def test_two_task_files_with_the_same_name_are_refused(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "good.jsonl").write_text('{"prompt": "1 + 1 =", "answer": " 2"}\n')
    config = RunConfig(
        tasks=[str(tmp_path / "a/good.jsonl"), str(tmp_path / "b/good.jsonl")], out=str(tmp_path)
    )
    with pytest.raises(TasklensError, match="both named 'good'"):
        config.check()
