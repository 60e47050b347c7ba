"""A task shows itself in one line, and reads from a DataFrame as from a Dataset."""

from __future__ import annotations

import pandas as pd
import pytest

from tasklens.errors import TasklensError
from tasklens.tasks.task import Task


def test_a_task_shows_its_name_size_and_first_prompt_not_its_data():
    task = Task.from_lists("sums", [f"{a}+{a}=" for a in range(300)], [f" {2 * a}" for a in range(300)])
    assert repr(task) == "Task('sums', 300 prompts, split='all', e.g. '0+0=' -> ' 0')"
    long = Task.from_lists("long", ["x" * 200], [" y"])
    assert repr(long).startswith("Task('long', 1 prompt, split='all', e.g. 'xxx") and len(repr(long)) < 130


def test_a_task_reads_from_a_dataframe_by_column():
    frame = pd.DataFrame({"question": ["2+2=", "3+1="], "answer": [" 4", " 4"], "other": [1, 2]})
    task = Task.from_dataset(frame, "sums", prompt_column="question")
    assert task.prompts == ("2+2=", "3+1=") and task.answers == (" 4", " 4")
    with pytest.raises(TasklensError, match=r"row 2, column 'answer' is NaN"):
        Task.from_dataset(pd.DataFrame({"prompt": ["a", "b"], "answer": [" x", None]}), "t")
    with pytest.raises(TasklensError, match=r"has no column 'prompt' \(columns: \['q'\]\)"):
        Task.from_dataset(pd.DataFrame({"q": []}), "t")
