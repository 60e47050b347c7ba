"""What `Task` accepts: lists, pandas DataFrames and HF datasets with named columns; anything else
is refused naming what was given."""

from __future__ import annotations

import warnings

import datasets
import numpy as np
import pandas as pd
import pytest

from tasklens.errors import TasklensError, TasklensWarning
from tasklens.tasks import Task

pytestmark = pytest.mark.reliability
PROMPTS = ["The capital of France is", "The capital of Peru is"]
ANSWERS = [" Paris", " Lima"]


def test_a_pandas_dataframe_builds_a_task_by_its_named_columns():
    """Task.from_dataset(pandas_df) was a raw AttributeError."""
    frame = pd.DataFrame({"q": PROMPTS, "a": ANSWERS, "who": ["France", "Peru"]})
    task = Task.from_dataset(frame, "capitals", prompt_column="q", answer_column="a", subject_column="who")
    assert task.prompts == tuple(PROMPTS) and task.answers == tuple(ANSWERS)
    assert task.subjects == ("France", "Peru")
    assert task.data_hash() == Task.from_lists("x", PROMPTS, ANSWERS).data_hash()
    with pytest.raises(TasklensError, match=r"has no column 'prompt' \(columns: \['q', 'a', 'who'\]\)"):
        Task.from_dataset(frame, "capitals")
    frame.loc[1, "a"] = np.nan
    with pytest.raises(TasklensError, match=r"row 2, column 'a' is NaN \(a missing value\?\), not text"):
        Task.from_dataset(frame, "capitals", prompt_column="q", answer_column="a")


def test_a_hf_dataset_builds_the_same_task():
    ds = datasets.Dataset.from_dict({"prompt": PROMPTS, "answer": ANSWERS})
    assert Task.from_dataset(ds, "capitals").prompts == tuple(PROMPTS)


@pytest.mark.parametrize(
    "value", [[{"prompt": "a", "answer": "b"}], {"prompt": PROMPTS, "answer": ANSWERS}, "data.jsonl", None]
)
def test_anything_else_is_refused_by_from_dataset(value):
    with pytest.raises(TasklensError, match=r"takes a pandas DataFrame or a datasets\.Dataset .* got "):
        Task.from_dataset(value, "capitals")


def test_a_dataframe_as_the_prompts_of_from_lists_is_refused():
    """Task.from_lists("t", df, df) silently built a task whose prompts were the column names."""
    frame = pd.DataFrame({"prompt": PROMPTS, "answer": ANSWERS})
    with pytest.raises(TasklensError, match=r"prompts is a DataFrame .* Task\.from_dataset\(frame"):
        Task.from_lists("t", frame, frame)
    with pytest.raises(TasklensError, match=r"prompts is a dict .*its keys"):
        Task.from_lists("t", {"a": 1, "b": 2}, ANSWERS)
    with pytest.raises(TasklensError, match=r"answers is a set"):
        Task.from_lists("t", PROMPTS, set(ANSWERS))
    # a column is a sequence of strings: fine
    assert Task.from_lists("t", frame["prompt"], frame["answer"]).prompts == tuple(PROMPTS)


def test_duplicated_prompts_are_named_once():
    with pytest.warns(
        TasklensWarning, match=r"Task 't' repeats 1 prompt-answer pair\(s\) .*'The capital of France is'"
    ):
        Task.from_lists("t", [*PROMPTS, PROMPTS[0]], [*ANSWERS, ANSWERS[0]])
    with pytest.warns(
        TasklensWarning, match=r"gives 1 prompt\(s\) different answers .*'The capital of Peru is'"
    ):
        Task.from_lists("u", [*PROMPTS, PROMPTS[1]], [*ANSWERS, " Cusco"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Task.from_lists("v", PROMPTS, ANSWERS)
