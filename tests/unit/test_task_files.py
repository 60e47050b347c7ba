"""Tasks from files and lists without a model: what is read, what is refused and how it is said."""

from __future__ import annotations

import os

import pytest

from tasklens.errors import TasklensError
from tasklens.tasks import Task
from tasklens.tasks.builtin import load_builtin

pytestmark = pytest.mark.reliability


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("null.jsonl", b'{"prompt": "x", "answer": null}\n', "row 1 has no answer"),
        ("missing.jsonl", b'{"prompt": "x", "answer": " y"}\n{"prompt": "z"}\n', "row 2 has no answer"),
        ("cell.csv", b"prompt,answer\nhello, there\nbye,\n", "row 2 has no answer"),
        ("empty.jsonl", b"", "is empty"),
        ("header.csv", b"prompt,answer\n", "has a header .* but no rows"),
        ("broken.jsonl", b'{"prompt": "x", "answer": " y"}\n{"prompt": oops}\n', "line 2: not valid JSON"),
        ("latin.jsonl", '{"prompt": "café", "answer": " y"}\n'.encode("latin-1"), "not UTF-8 .* re-save it"),
        ("nocolumn.jsonl", b'{"question": "x", "answer": " y"}\n', r"nocolumn.jsonl' has no column 'prompt'"),
        ("task.txt", b"x", "use .jsonl, .json or .csv"),
    ],
)
def test_bad_task_files_give_errors_that_name_the_problem(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(TasklensError, match=message):
        Task.from_file(tmp_path / name)


def test_a_rewritten_task_file_is_read_anew(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "a", "answer": " b"}\n')
    stat = path.stat()
    assert Task.from_file(path).answers == (" b",)
    path.write_text('{"prompt": "a", "answer": " c"}\n')  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same mtime
    assert Task.from_file(path).answers == (" c",)


def test_task_sample_is_deterministic_and_refuses_zero():
    task = load_builtin("addition", "detection")
    assert task.sample(10).prompts == task.sample(10).prompts != task.sample(10, seed=1).prompts
    assert len(task.sample(10**6)) == len(task)
    with pytest.raises(TasklensError, match="at least 1"):
        task.sample(0)


def test_csv_answers_that_look_like_numbers_keep_their_leading_space(tmp_path):
    (tmp_path / "sums.csv").write_text('prompt,answer\n2 + 2 =," 4"\n3 + 5 =," 8"\n')
    assert Task.from_file(tmp_path / "sums.csv").answers == (" 4", " 8")


def test_a_string_where_a_task_is_expected():
    from tasklens.tasks.task import check_task

    with pytest.raises(TasklensError, match=r"load_builtin\('capital_of'"):
        check_task("capital_of")
