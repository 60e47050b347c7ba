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


RECORDS = [{"prompt": "The capital of France is", "answer": " Paris"}, {"prompt": "2 + 2 =", "answer": " 4"}]


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085"])
def test_jsonl_strings_may_hold_any_line_break_but_a_newline(tmp_path, separator):
    """json.dumps(..., ensure_ascii=False) writes these raw in strings; str.splitlines() splits at them."""
    import json

    rows = [{"prompt": f"line one{separator}line two:", "answer": f" a{separator}b"}, RECORDS[1]]
    path = tmp_path / "breaks.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    task = Task.from_file(path)
    assert task.prompts == (f"line one{separator}line two:", "2 + 2 =")
    assert task.answers == (f" a{separator}b", " 4")


def test_jsonl_with_windows_and_old_mac_line_ends_is_read(tmp_path):
    import json

    for end in ("\r\n", "\r"):
        (tmp_path / "ends.jsonl").write_bytes("".join(json.dumps(r) + end for r in RECORDS).encode())
        assert Task.from_file(tmp_path / "ends.jsonl").answers == (" Paris", " 4")
        rows = "".join(f'"{r["prompt"]}","{r["answer"]}"{end}' for r in RECORDS)
        (tmp_path / "ends.csv").write_bytes(f"prompt,answer{end}{rows}".encode())
        assert Task.from_file(tmp_path / "ends.csv").answers == (" Paris", " 4")
    (tmp_path / "quoted.csv").write_bytes('prompt,answer\r\n"two\r\nlines"," x\u2028y"\r\n'.encode())
    task = Task.from_file(tmp_path / "quoted.csv")
    assert task.prompts == ("two\r\nlines",) and task.answers == (" x\u2028y",)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-8-sig"])
@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_unicode_files_with_a_byte_order_mark_are_read_as_written(tmp_path, encoding, suffix):
    """What Windows editors save as "Unicode" text; 'é' and 'ß' would be garbled by a latin-1 guess."""
    import json

    prompts, answers = (
        ["La capitale de la Côte d'Ivoire est", "Die Straße heißt"],
        [" Yamoussoukro", " Hauptstraße"],
    )
    if suffix == ".csv":
        text = "prompt,answer\n" + "".join(f'"{p}","{a}"\n' for p, a in zip(prompts, answers, strict=True))
    else:
        text = "".join(
            json.dumps({"prompt": p, "answer": a}, ensure_ascii=False) + "\n"
            for p, a in zip(prompts, answers, strict=True)
        )
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data  # the BOM a big-endian editor writes
    (tmp_path / f"task{suffix}").write_bytes(data)
    task = Task.from_file(tmp_path / f"task{suffix}")
    assert task.prompts == tuple(prompts) and task.answers == tuple(answers)


def test_utf16_without_a_byte_order_mark_is_refused_clearly(tmp_path):
    (tmp_path / "task.jsonl").write_bytes('{"prompt": "a", "answer": " b"}\n'.encode("utf-16-le"))
    with pytest.raises(
        TasklensError, match=r"holds NUL bytes \(UTF-16 or UTF-32 text without a byte-order mark"
    ):
        Task.from_file(tmp_path / "task.jsonl")
    (tmp_path / "cut.jsonl").write_bytes('{"prompt": "a", "answer": " b"}'.encode("utf-16") + b"\x00")
    with pytest.raises(TasklensError, match=r"is not valid UTF-16-LE .*cut short.*re-save it as UTF-8"):
        Task.from_file(tmp_path / "cut.jsonl")


def test_a_csv_field_longer_than_the_csv_module_allows_is_read(tmp_path):
    import csv

    long = "word " * 40_000  # 200,000 characters: csv's default limit is 131,072
    (tmp_path / "long.csv").write_text(f'prompt,answer\n"{long}", x\nshort, y\n')
    limit = csv.field_size_limit()
    assert Task.from_file(tmp_path / "long.csv").prompts == (long, "short")
    assert csv.field_size_limit() == limit  # the process-wide limit is left as it was


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_deeply_nested_unused_column_is_a_clear_error(tmp_path, suffix):
    nested = "[" * 100_000 + "]" * 100_000
    row = '{"prompt": "a", "answer": " b", "notes": ' + nested + "}"
    (tmp_path / f"deep{suffix}").write_text(row + "\n" if suffix == ".jsonl" else f"[{row}]")
    with pytest.raises(
        TasklensError, match=r"nested too deeply to read.*remove or flatten the nested column"
    ):
        Task.from_file(tmp_path / f"deep{suffix}")
