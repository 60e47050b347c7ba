"""Tests of the built-in task suite: splits, facts, templates and errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tasklens.errors import TasklensError
from tasklens.tasks.builtin import (
    builtin_task_info,
    builtin_task_names,
    load_builtin,
    training_tasks,
)
from tasklens.tasks.builtin.algorithmic import ALGORITHMS
from tasklens.tasks.builtin.assemble import ALGORITHMIC_TRAIN_CAP, SPLIT_CAP
from tasklens.tasks.builtin.relations import RELATIONS
from tasklens.tasks.builtin.splits import fact_split, heldout_keys
from tasklens.tasks.task import Task

NAMES = builtin_task_names()
FACT_TASKS = [*RELATIONS, "sentiment"]
EXPECTED = {
    "addition",
    "capital_of",
    "capital_of_de",
    "capital_of_es",
    "capital_of_fr",
    "continent_of",
    "copy_list",
    "currency_of",
    "element_symbol",
    "larger_number",
    "reverse_list",
    "sentiment",
    "state_capital",
}


INFO = {row["name"]: row for row in builtin_task_info()}
ALL_SPLITS = [(name, split) for name in NAMES for split in INFO[name]["splits"]]


def _pairs(task: Task) -> dict[str, str]:
    return dict(zip(task.prompts, task.answers, strict=True))


def test_names_are_the_documented_ones_sorted() -> None:
    assert NAMES == sorted(EXPECTED)


def test_info_rows_describe_each_task() -> None:
    rows = list(INFO.values())
    assert [row["name"] for row in rows] == NAMES
    kinds = {row["name"]: row["kind"] for row in rows}
    assert kinds["capital_of_fr"] == "relation"
    assert kinds["addition"] == "algorithmic"
    assert kinds["sentiment"] == "classification"
    for row in rows:
        assert row["n_facts"] > 0
        assert {"train", "detection", "evaluation"} <= set(row["splits"])
        assert all(size > 0 for size in row["splits"].values())


@pytest.mark.parametrize(("name", "split"), ALL_SPLITS)
def test_every_split_loads_well_formed(name: str, split: str) -> None:
    task = load_builtin(name, split)
    assert task.name == name and task.split == split
    assert len(task) > 0
    assert len(set(task.prompts)) == len(task.prompts), "duplicate prompts"
    for prompt, answer in zip(task.prompts, task.answers, strict=True):
        assert prompt == prompt.strip(), f"prompt has outer whitespace: {prompt!r}"
        assert answer.startswith(" ") and not answer.startswith("  ") and answer.strip()
    assert task.subjects is not None and task.templates is not None
    assert task.corrupted_prompts is not None
    assert task.meta["kind"] in {"relation", "algorithmic", "classification"}
    assert set(task.templates) == set(task.meta["template_ids"])
    cap = ALGORITHMIC_TRAIN_CAP if split == "train" else SPLIT_CAP
    if split != "train" or task.meta["kind"] == "algorithmic":
        assert len(task) <= cap


@pytest.mark.parametrize(("name", "split"), ALL_SPLITS)
def test_markers_occur_in_every_prompt(name: str, split: str) -> None:
    task = load_builtin(name, split)
    for marker in task.markers:
        assert any(marker in prompt for prompt in task.prompts), marker
    if task.markers:
        for prompt in task.prompts:
            assert any(marker in prompt for marker in task.markers), prompt


def test_marker_free_templates_leave_markers_empty_and_formats_set_them() -> None:
    assert load_builtin("capital_of", "detection").markers == ()
    assert load_builtin("currency_of", "heldout_template").markers == ("Q:", "A:")
    assert {"Q:", "A:", "->"} <= set(load_builtin("addition", "train").markers)


@pytest.mark.parametrize("name", NAMES)
def test_detection_and_evaluation_share_no_subject(name: str) -> None:
    detection = set(load_builtin(name, "detection").subjects or ())
    evaluation = set(load_builtin(name, "evaluation").subjects or ())
    assert detection and evaluation
    assert not detection & evaluation


def test_fact_split_is_about_three_quarters_detection() -> None:
    keys = [fact.key for fact in RELATIONS["capital_of"].facts()]
    detection = [key for key in keys if fact_split(key) == "detection"]
    assert 0.65 < len(detection) / len(keys) < 0.85
    evaluation = load_builtin("capital_of", "evaluation")
    assert all(fact_split(key) == "evaluation" for key in evaluation.subjects or ())


def test_a_country_is_in_the_same_split_in_every_language() -> None:
    names = ["capital_of", "capital_of_fr", "capital_of_de", "capital_of_es"]
    detection = set().union(*(load_builtin(n, "detection").subjects or () for n in names))
    evaluation = set().union(*(load_builtin(n, "evaluation").subjects or () for n in names))
    assert not detection & evaluation


@pytest.mark.parametrize("name", FACT_TASKS)
def test_heldout_template_never_in_train(name: str) -> None:
    heldout = load_builtin(name, "heldout_template")
    train = load_builtin(name, "train")
    heldout_ids = set(heldout.templates or ())
    assert len(heldout_ids) == 1
    assert not heldout_ids & set(train.templates or ())
    for split in ("detection", "evaluation"):
        assert not heldout_ids & set(load_builtin(name, split).templates or ())
    assert not set(heldout.prompts) & set(train.prompts)
    # every fact is asked with the held-out template
    assert set(heldout.subjects or ()) == set(train.subjects or ())


@pytest.mark.parametrize("name", list(RELATIONS))
def test_relation_templates_compose_frames_seen_in_training(name: str) -> None:
    train = load_builtin(name, "train")
    assert len(train.meta["template_ids"]) >= 8
    heldout_frame = RELATIONS[name].heldout_frame
    assert heldout_frame not in train.meta["template_frames"]
    others = [n for n in RELATIONS if n != name]
    used_by = [n for n in others if heldout_frame in load_builtin(n, "train").meta["template_frames"]]
    assert used_by, f"{name} holds out {heldout_frame!r}, which no other relation trains on"


def test_english_relations_hold_out_different_frames() -> None:
    english = [r.heldout_frame for r in RELATIONS.values() if r.language == "en"]
    assert len(set(english)) == len(english)


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_algorithmic_heldout_instances_never_in_train(name: str) -> None:
    heldout = load_builtin(name, "heldout_instance")
    train = load_builtin(name, "train")
    assert len(train.meta["template_ids"]) >= 4
    assert not set(heldout.prompts) & set(train.prompts)
    assert not set(heldout.subjects or ()) & set(train.subjects or ())
    algorithm = ALGORITHMS[name]
    keys = [fact.key for fact in algorithm.instances()]
    held = heldout_keys(keys, algorithm.heldout_seed)
    assert 0.08 < len(held) / len(keys) < 0.12
    assert set(heldout.subjects or ()) <= held
    for split in ("train", "detection", "evaluation"):
        assert not set(load_builtin(name, split).subjects or ()) & held


def test_list_tasks_hold_out_the_same_lists() -> None:
    held = set(load_builtin("copy_list", "heldout_instance").subjects or ())
    for name in ("copy_list", "reverse_list"):
        assert not held & set(load_builtin(name, "train").subjects or ())


def test_relation_and_sentiment_templates_are_enough() -> None:
    assert len(load_builtin("sentiment", "train").meta["template_ids"]) >= 4


@pytest.mark.parametrize(
    ("name", "subject", "answer"),
    [
        ("capital_of", "FR", " Paris"),
        ("capital_of", "JP", " Tokyo"),
        ("continent_of", "FR", " Europe"),
        ("continent_of", "BR", " South America"),
        ("currency_of", "JP", " Yen"),
        ("element_symbol", "Iron", " Fe"),
        ("element_symbol", "Oganesson", " Og"),
        ("state_capital", "California", " Sacramento"),
        ("capital_of_de", "DE", " Berlin"),
        ("capital_of_fr", "DE", " Berlin"),
        ("capital_of_es", "FR", " Paris"),
        ("sentiment", "awful", " negative"),
        ("sentiment", "glad", " positive"),
    ],
)
def test_facts_are_real(name: str, subject: str, answer: str) -> None:
    task = load_builtin(name, "train")
    answers = {a for s, a in zip(task.subjects or (), task.answers, strict=True) if s == subject}
    assert answers == {answer}


@pytest.mark.parametrize(
    ("name", "text", "answer"),
    [
        ("capital_of", "France", " Paris"),
        ("capital_of_de", "Deutschland", " Berlin"),
        ("capital_of_fr", "Allemagne", " Berlin"),
        ("capital_of_es", "Alemania", " Berlin"),
        ("element_symbol", "Iron", " Fe"),
    ],
)
def test_subject_names_appear_in_prompts(name: str, text: str, answer: str) -> None:
    task = load_builtin(name, "train")
    matching = [a for p, a in zip(task.prompts, task.answers, strict=True) if text in p]
    assert matching and set(matching) == {answer}


def test_relation_sizes_cover_the_data() -> None:
    assert len(RELATIONS["element_symbol"].facts()) == 118
    assert len(RELATIONS["state_capital"].facts()) == 50
    assert len(RELATIONS["capital_of"].facts()) > 200
    sentiment = load_builtin("sentiment", "train")
    assert sentiment.answers.count(" positive") == sentiment.answers.count(" negative")


def _numbers(prompt: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", prompt)]


@pytest.mark.parametrize("split", ["train", "detection", "evaluation", "heldout_instance"])
def test_addition_and_larger_number_answers_are_correct(split: str) -> None:
    addition = load_builtin("addition", split)
    for prompt, answer in zip(addition.prompts, addition.answers, strict=True):
        a, b = _numbers(prompt)
        assert 0 <= a <= 99 and 0 <= b <= 99
        assert answer == f" {a + b}", prompt
    larger = load_builtin("larger_number", split)
    for prompt, answer in zip(larger.prompts, larger.answers, strict=True):
        a, b = _numbers(prompt)
        assert a != b
        assert answer == f" {max(a, b)}", prompt


def _items(prompt: str) -> list[str]:
    return re.findall(r"(?<![A-Za-z])[a-z](?![A-Za-z])", prompt)


@pytest.mark.parametrize("split", ["train", "detection", "evaluation", "heldout_instance"])
def test_list_answers_copy_and_reverse_the_items(split: str) -> None:
    for name, transform in (("copy_list", list), ("reverse_list", lambda x: x[::-1])):
        task = load_builtin(name, split)
        for prompt, answer in zip(task.prompts, task.answers, strict=True):
            items = _items(prompt)
            assert 3 <= len(items) <= 5, prompt
            assert answer == " " + " ".join(transform(items)), prompt


def test_copy_example_format() -> None:
    task = load_builtin("copy_list", "train")
    arrow = [(p, a) for p, a in zip(task.prompts, task.answers, strict=True) if p.startswith("copy: ")]
    assert arrow
    prompt, answer = arrow[0]
    assert prompt.endswith(" ->") and prompt[len("copy:") : -len(" ->")] == answer


@pytest.mark.parametrize("name", FACT_TASKS)
def test_corrupted_prompts_swap_in_another_fact(name: str) -> None:
    known = _pairs(load_builtin(name, "train"))
    for split in ("detection", "evaluation"):
        task = load_builtin(name, split)
        for prompt, corrupted, answer in zip(
            task.prompts, task.corrupted_prompts or (), task.answers, strict=True
        ):
            assert corrupted != prompt
            assert corrupted in known, corrupted
            assert known[corrupted] != answer
        # the corrupting subject comes from the same split
        train = load_builtin(name, "train")
        subject_of = dict(zip(train.prompts, train.subjects or (), strict=True))
        corrupting = {subject_of[c] for c in task.corrupted_prompts or ()}
        assert all(fact_split(subject) == split for subject in corrupting)


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_algorithmic_corrupted_prompts_keep_template_and_change_answer(name: str) -> None:
    algorithm = ALGORITHMS[name]
    known = {
        template.render(fact.fields): (fact.answer, template.id)
        for fact in algorithm.instances()
        for template in algorithm.templates
    }
    task = load_builtin(name, "detection")
    for prompt, corrupted, answer, template_id in zip(
        task.prompts,
        task.corrupted_prompts or (),
        task.answers,
        task.templates or (),
        strict=True,
    ):
        assert known[prompt] == (answer, template_id)
        corrupt_answer, corrupt_template = known[corrupted]
        assert corrupt_template == template_id and corrupt_answer != answer
        assert len(corrupted) == len(prompt)  # same digit counts / list length


def test_identical_prompts_never_disagree_across_tasks() -> None:
    seen: dict[str, tuple[str, str]] = {}
    for task in training_tasks():
        for prompt, answer in zip(task.prompts, task.answers, strict=True):
            first = seen.setdefault(prompt, (answer, task.name))
            assert first[0] == answer, (prompt, answer, first)


def test_training_tasks_are_the_train_splits() -> None:
    tasks = training_tasks()
    assert [t.name for t in tasks] == NAMES
    assert all(t.split == "train" for t in tasks)


def test_unknown_task_names_valid_ones_and_suggests() -> None:
    with pytest.raises(TasklensError) as error:
        load_builtin("capitol_of")
    message = str(error.value)
    assert "'capitol_of'" in message and "Did you mean 'capital_of'" in message
    assert all(name in message for name in NAMES)


def test_unknown_split_names_the_tasks_splits() -> None:
    with pytest.raises(TasklensError) as error:
        load_builtin("addition", "heldout_template")
    message = str(error.value)
    assert "'heldout_template'" in message
    for split in ("train", "detection", "evaluation", "heldout_instance"):
        assert split in message


def test_loading_is_deterministic() -> None:
    for name, split in ALL_SPLITS:
        assert load_builtin(name, split) == load_builtin(name, split)


def test_loading_is_deterministic_across_processes() -> None:
    code = (
        "from tasklens.tasks.builtin import load_builtin, builtin_task_names;"
        "print(*(load_builtin(n, s).data_hash() for n in builtin_task_names()"
        " for s in ('train', 'detection')))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1


def test_the_general_text_control_is_the_shipped_sentences_split_after_their_first_words():
    from tasklens.tasks.text import PROMPT_WORDS, general_sentences, general_text

    sentences = general_sentences()
    task = general_text()
    assert len(sentences) == len(task) == 48 and task.name == "general_text"
    assert len(set(sentences)) == 48  # no sentence twice
    for sentence, prompt, answer in zip(sentences, task.prompts, task.answers, strict=True):
        assert prompt + answer == sentence and len(prompt.split(" ")) == PROMPT_WORDS
        assert answer.startswith(" ") and len(answer.split()) >= 5
    assert len(general_text(5)) == 5
    with pytest.raises(TasklensError, match="ask for 1 to 48"):
        general_text(49)
