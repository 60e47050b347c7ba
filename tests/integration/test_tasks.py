from __future__ import annotations

import json
import random

import datasets
import pytest

from tasklens.errors import TasklensError
from tasklens.evaluation.evaluate import evaluate_prompts
from tasklens.evaluation.known import known_by, load_for_model
from tasklens.tasks import Task
from tasklens.tasks.builtin import load_builtin
from tasklens.tasks.tokenize import TokenizedTask

PROMPTS = ["The capital of France is", "The capital of Peru is"]
ANSWERS = [" Paris", " Lima"]


def test_from_lists_keeps_data_and_hash_is_stable():
    task = Task.from_lists("capitals", PROMPTS, ANSWERS)
    assert task.prompts == tuple(PROMPTS) and task.answers == tuple(ANSWERS)
    assert len(task) == 2
    assert task.data_hash() == Task.from_lists("other_name", PROMPTS, ANSWERS).data_hash()
    assert task.data_hash() != Task.from_lists("capitals", PROMPTS, [" Paris", " Cusco"]).data_hash()


def test_from_dataset_with_column_mapping():
    ds = datasets.Dataset.from_dict({"q": PROMPTS, "a": ANSWERS, "bad": ["x", "y"]})
    task = Task.from_dataset(ds, "capitals", prompt_column="q", answer_column="a", corrupted_column="bad")
    assert task.prompts == tuple(PROMPTS) and task.corrupted_prompts == ("x", "y")
    with pytest.raises(TasklensError, match="no column 'prompt'"):
        Task.from_dataset(ds, "capitals")


def test_from_jsonl_and_csv(tmp_path):
    jsonl = tmp_path / "caps.jsonl"
    rows = zip(PROMPTS, ANSWERS, strict=True)
    jsonl.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in rows))
    csv = tmp_path / "caps.csv"
    csv.write_text("prompt,answer\n" + "".join(f"{p},{a}\n" for p, a in zip(PROMPTS, ANSWERS, strict=False)))
    from_jsonl = Task.from_file(jsonl)
    from_csv = Task.from_file(csv, name="caps_csv")
    assert from_jsonl.name == "caps" and from_csv.name == "caps_csv"
    assert from_jsonl.prompts == from_csv.prompts == tuple(PROMPTS)
    assert from_jsonl.answers == tuple(ANSWERS)
    # csv readers keep the leading space of the answer
    assert from_csv.answers == tuple(ANSWERS)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompts": [], "answers": []}, "no prompts"),
        ({"prompts": PROMPTS, "answers": ANSWERS[:1]}, "2 prompts but 1 answers"),
        ({"prompts": PROMPTS, "answers": [" Paris", "  "]}, "answer 1 is empty"),
        ({"prompts": "one prompt", "answers": [" x"]}, "not one string"),
        ({"prompts": PROMPTS, "answers": ANSWERS, "subjects": ["FR"]}, "2 prompts but 1 subjects"),
    ],
)
def test_bad_tasks_give_clear_errors(kwargs, message):
    with pytest.raises(TasklensError, match=message):
        Task(name="bad", **kwargs)


def test_bad_files(tmp_path):
    with pytest.raises(TasklensError, match="does not exist"):
        Task.from_file(tmp_path / "missing.jsonl")
    bad = tmp_path / "data.txt"
    bad.write_text("x")
    with pytest.raises(TasklensError, match=r"use \.jsonl, \.json or \.csv"):
        Task.from_file(bad)


def test_unknown_builtin_suggests_the_right_name():
    with pytest.raises(TasklensError, match="capital_of"):
        load_builtin("capitol_of")


def test_tokenisation_positions(organism):
    task = Task.from_lists("caps", PROMPTS, ANSWERS)
    tok = TokenizedTask.for_model(task, organism)
    bos = organism.tokenizer.bos_token_id
    assert all(ids[0] == bos for ids in tok.prompt_ids)
    batch = next(tok.batches(8))
    for row in range(2):
        p, a = tok.prompt_ids[row], tok.answer_ids[row]
        assert batch.tokens[row, : len(p) + len(a)].tolist() == p + a
        assert int(batch.last_prompt[row]) == len(p) - 1
        assert batch.position_mask("answer")[row].nonzero().flatten().tolist() == list(
            range(len(p), len(p) + len(a))
        )
        assert int(batch.position_mask("prompt")[row].sum()) == len(p)
        assert int(batch.position_mask("last_prompt")[row].sum()) == 1
        # the answer is decoded back exactly
        assert organism.tokenizer.decode(a) == ANSWERS[row]
    # the target positions predict exactly the answer tokens
    targets = batch.tokens[:, 1:][batch.target_mask()[:, :-1]]
    assert targets.tolist() == tok.answer_ids[0] + tok.answer_ids[1]


def test_known_filter_stops_once_it_has_enough(organism):
    task = load_for_model(organism, "capital_of", "detection", known=False)
    every = known_by(organism, task)
    some = known_by(organism, task, batch_size=8, need=5)
    assert len(some) == 5 and some.meta["n_known"] == 5
    # asked: the prompts up to the 5th known one in the random order, so known / asked is a fair share
    correct = (evaluate_prompts(organism, task, "next_token") > 0.5).tolist()
    order = list(range(len(task)))
    random.Random(0).shuffle(order)
    fifth = [i for i in order if correct[i]][4]
    assert some.meta["n_asked"] == order.index(fifth) + 1 < len(task)
    assert set(some.prompts) <= set(every.prompts)
    assert some.prompts != every.prompts[:5]  # asked in a random order, not the task's first ones
    with pytest.raises(TasklensError, match="need must be at least 1"):
        known_by(organism, task, need=0)


def test_batches_sorted_by_length_give_each_prompt_its_own_value(organism):
    task = load_for_model(organism, "capital_of", "detection", known=False).sample(24)
    lengths = [len(p) for p in TokenizedTask.for_model(task, organism).prompt_ids]
    assert len(set(lengths)) > 1  # batches sorted by length really reorder the prompts
    one_by_one = evaluate_prompts(organism, task, "logprob", batch_size=1)
    assert evaluate_prompts(organism, task, "logprob", batch_size=8).sub(one_by_one).abs().max() < 1e-4


def test_prompt_longer_than_context_is_a_clear_error(organism):
    long = Task.from_lists("long", ["word " * 500], [" x"])
    with pytest.raises(TasklensError, match="more than the model's context of 64; shorten the prompt"):
        TokenizedTask.for_model(long, organism)


@pytest.mark.reliability
def test_an_answer_longer_than_the_context_is_called_the_answer(organism):
    """An answer of a few hundred kilobytes (a whole document pasted in the wrong column)."""
    long = Task.from_lists("long_answer", ["The capital of France is"], [" Paris" * 40_000])
    message = r"\(prompt 7, answer 40000\), more than the model's context of 64; shorten the answer \(' Paris"
    with pytest.raises(TasklensError, match=message):
        TokenizedTask.for_model(long, organism)


def test_parts_of_one_task_add_up_and_other_tasks_do_not():
    detection, evaluation = (load_builtin("capital_of", split) for split in ("detection", "evaluation"))
    both = detection + evaluation
    assert len(both) == len(detection) + len(evaluation)
    assert both.prompts[-1] == evaluation.prompts[-1] and both.split == "detection+evaluation"
    assert len(both.corrupted_prompts) == len(both)
    with pytest.raises(TasklensError, match="Only parts of one task"):
        detection + load_builtin("continent_of", "detection")


@pytest.mark.reliability
def test_task_files_are_read_as_written_not_as_inferred_types(tmp_path):
    path = tmp_path / "sums.jsonl"
    rows = [
        '{"prompt": "2 + 2 =", "answer": 4, "note": 1}',
        '{"prompt": "9 / 2 =", "answer": 4.50, "note": "half"}',  # the unused column changes type
        '{"prompt": "1 + 1 =", "answer": " 2", "note": {"k": [1]}}',  # int and string answers mixed
    ]
    path.write_text("\n".join(rows) + "\n")
    assert Task.from_file(path).answers == ("4", "4.50", " 2")  # not 4.0 / 4.5


BOOL = '{"prompt": "a", "answer": true}\n'
LIST = '{"prompt": "a", "answer": [" Paris", " Lyon"]}\n'
NAN = '{"prompt": "a", "answer": " b"}\n{"prompt": "c", "answer": NaN}\n'


@pytest.mark.reliability
@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bool.jsonl", BOOL, r'row 1, column .answer. holds bool true, .*e\.g\. "true"'),
        ("list.jsonl", LIST, r"row 1, column .answer. holds a list \(\[' Paris', ' Lyon'\]\)"),
        ("nan.jsonl", NAN, r"row 2, column 'answer' is NaN .*fill in the answer"),
        ("extra.csv", "prompt,answer\na, b\nc, Paris, France\n", r"line 3: 3 fields but the header has 2"),
    ],
)
def test_task_values_that_are_not_text_are_refused_naming_row_and_column(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(TasklensError, match=message):
        Task.from_file(tmp_path / name)


@pytest.mark.reliability
def test_pretty_printed_json_is_read_and_pretty_printed_jsonl_is_explained(tmp_path):
    records = [{"prompt": p, "answer": a} for p, a in zip(PROMPTS, ANSWERS, strict=True)]
    (tmp_path / "array.json").write_text(json.dumps(records, indent=2))
    (tmp_path / "object.json").write_text(json.dumps({"name": "capitals", "examples": records}, indent=2))
    for name in ("array.json", "object.json"):
        task = Task.from_file(tmp_path / name)
        assert task.prompts == tuple(PROMPTS) and task.answers == tuple(ANSWERS)
    (tmp_path / "pretty.jsonl").write_text(json.dumps(records, indent=2))
    with pytest.raises(TasklensError, match=r"pretty-printed JSON.*one object per line; save it as \.json"):
        Task.from_file(tmp_path / "pretty.jsonl")


@pytest.mark.reliability
def test_a_folder_given_as_task_file_is_called_a_folder(tmp_path):
    from typer.testing import CliRunner

    from tasklens.cli import app

    (tmp_path / "tasks.jsonl").mkdir()
    with pytest.raises(TasklensError, match="is a folder, not a file"):
        Task.from_file(tmp_path / "tasks.jsonl")
    for folder in (tmp_path / "tasks.jsonl", tmp_path):
        result = CliRunner().invoke(app, ["locate", "--task", str(folder), "--out", str(tmp_path / "run")])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert result.output.strip().count("\n") == 0 and "is a folder, not a file" in result.output


# --- replayed review cases: answers glued to their prompt -------------------------------------------


@pytest.mark.reliability
def test_answers_without_their_leading_space_warn_once(organism):
    import warnings

    from tasklens.errors import TasklensWarning
    from tasklens.tasks.tokenize import TokenizedTask

    task = Task.from_lists(
        "glued",
        ["Q: AND or OR? A:", "Q: yes or no? A:", "2 + 2 =", "The capital of France is "],
        ["AND", "yes", " 4", " Paris"],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TokenizedTask.for_model(task, organism)
    messages = [str(w.message) for w in caught if issubclass(w.category, TasklensWarning)]
    assert len(messages) == 1 and "3 of 4 answers" in messages[0] and "leading space" in messages[0]
