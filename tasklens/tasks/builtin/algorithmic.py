"""Algorithmic tasks: addition, the larger of two numbers, copying and reversing lists."""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from tasklens.tasks.builtin.assemble import INSTANCE_SPLITS, BuiltinSpec, Fact, instance_split_task
from tasklens.tasks.builtin.splits import seeded_rng
from tasklens.tasks.builtin.templates import Template
from tasklens.tasks.task import Task

LIST_POOL_SIZE = 2000


@dataclass(frozen=True)
class Algorithm:
    """One algorithmic task: its instances, templates and held-out seed."""

    name: str
    description: str
    templates: tuple[Template, ...]
    instances: Callable[[], tuple[Fact, ...]]
    heldout_seed: str

    def build(self, split: str) -> Task:
        """The task's ``split``."""
        meta = {"kind": "algorithmic", "source": "generated", "relation": self.description}
        return instance_split_task(
            self.name,
            split,
            self.instances(),
            self.templates,
            self.heldout_seed,
            language="en",
            meta=meta,
        )


@cache
def addition_instances() -> tuple[Fact, ...]:
    """Every ``a + b`` with a, b in 0..99."""
    return tuple(
        Fact(f"{a} + {b}", {"a": str(a), "b": str(b)}, f" {a + b}") for a in range(100) for b in range(100)
    )


@cache
def larger_number_instances() -> tuple[Fact, ...]:
    """Every ordered pair of different numbers in 0..99, answered with the larger."""
    return tuple(
        Fact(f"{a}, {b}", {"a": str(a), "b": str(b)}, f" {max(a, b)}")
        for a in range(100)
        for b in range(100)
        if a != b
    )


@cache
def letter_lists() -> tuple[tuple[str, ...], ...]:
    """A fixed pool of distinct lists of 3 to 5 different lowercase letters."""
    rng = seeded_rng("tasklens-letter-lists")
    pool: dict[tuple[str, ...], None] = {}
    while len(pool) < LIST_POOL_SIZE:
        pool[tuple(rng.sample(string.ascii_lowercase, rng.randint(3, 5)))] = None
    return tuple(pool)


@cache
def copy_list_instances() -> tuple[Fact, ...]:
    """Each pool list, answered with itself."""
    return tuple(Fact(" ".join(x), {"items": " ".join(x)}, " " + " ".join(x)) for x in letter_lists())


@cache
def reverse_list_instances() -> tuple[Fact, ...]:
    """Each pool list, answered with its reverse."""
    return tuple(
        Fact(" ".join(x), {"items": " ".join(x)}, " " + " ".join(reversed(x))) for x in letter_lists()
    )


def _template_rows(rows: tuple[tuple[str, str, tuple[str, ...]], ...]) -> tuple[Template, ...]:
    return tuple(Template(i, frame, text, markers) for i, (frame, text, markers) in enumerate(rows))


ADDITION_TEMPLATES = _template_rows(
    (
        ("equation", "{a} + {b} =", ("=",)),
        ("qa", "Q: What is {a} plus {b}? A:", ("Q:", "A:")),
        ("question_answer", "Question: What is the sum of {a} and {b}? Answer:", ("Question:", "Answer:")),
        ("input_output", "Input: {a} + {b} | Output:", ("Input:", "Output:")),
        ("arrow", "add: {a} {b} ->", ("->",)),
    )
)
LARGER_NUMBER_TEMPLATES = _template_rows(
    (
        ("equation", "max({a}, {b}) =", ("=",)),
        ("qa", "Q: Which is larger, {a} or {b}? A:", ("Q:", "A:")),
        (
            "question_answer",
            "Question: Which number is larger, {a} or {b}? Answer:",
            ("Question:", "Answer:"),
        ),
        ("input_output", "Input: {a}, {b} | Larger:", ("Input:", "Larger:")),
        ("arrow", "max: {a} {b} ->", ("->",)),
    )
)
COPY_LIST_TEMPLATES = _template_rows(
    (
        ("arrow", "copy: {items} ->", ("->",)),
        ("qa", "Q: Copy the list {items}. A:", ("Q:", "A:")),
        ("question_answer", "Question: Repeat the letters {items}. Answer:", ("Question:", "Answer:")),
        ("input_output", "Input: {items} | Copy:", ("Input:", "Copy:")),
        ("instruction", "Copy the letters {items}. Answer:", ("Answer:",)),
    )
)
REVERSE_LIST_TEMPLATES = _template_rows(
    (
        ("arrow", "reverse: {items} ->", ("->",)),
        ("qa", "Q: Reverse the list {items}. A:", ("Q:", "A:")),
        ("question_answer", "Question: What is {items} backwards? Answer:", ("Question:", "Answer:")),
        ("input_output", "Input: {items} | Reversed:", ("Input:", "Reversed:")),
        ("instruction", "Reverse the letters {items}. Answer:", ("Answer:",)),
    )
)

# copy_list and reverse_list share the list pool and the held-out seed, so a
# held-out list appears in neither task's training data.
ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("addition", "a + b for a, b in 0..99", ADDITION_TEMPLATES, addition_instances, "addition"),
        Algorithm(
            "larger_number",
            "the larger of two different numbers in 0..99",
            LARGER_NUMBER_TEMPLATES,
            larger_number_instances,
            "larger_number",
        ),
        Algorithm(
            "copy_list",
            "copy a list of 3 to 5 letters",
            COPY_LIST_TEMPLATES,
            copy_list_instances,
            "letter_lists",
        ),
        Algorithm(
            "reverse_list",
            "reverse a list of 3 to 5 letters",
            REVERSE_LIST_TEMPLATES,
            reverse_list_instances,
            "letter_lists",
        ),
    )
}


def specs() -> list[BuiltinSpec]:
    """The algorithmic tasks, for the built-in registry."""
    return [
        BuiltinSpec(a.name, "algorithmic", "en", INSTANCE_SPLITS, lambda a=a: len(a.instances()), a.build)
        for a in ALGORITHMS.values()
    ]
