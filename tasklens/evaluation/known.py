"""Keeping the facts a model knows (the relation paper detects neurons on those only).

A prompt is known when greedy decoding reproduces its answer. Greedy decoding
produces exactly the answer's tokens if and only if each answer token is the
argmax given the prompt and the answer tokens before it, so one teacher-forced
forward pass decides it for a whole batch (`tasklens.evaluation.metrics.next_token_correct`),
with no generation (`tasklens.evaluation.evaluate.exact_match` is the same check;
`tasklens.evaluation.evaluate.greedy_match` decodes and also forgives case and surrounding spaces).
"""

from __future__ import annotations

import dataclasses
import random
import warnings

from tasklens.errors import TasklensError, TasklensWarning
from tasklens.evaluation.evaluate import evaluate_prompts
from tasklens.models import ModelInfo
from tasklens.tasks.task import Task, check_task


def known_by(model, task: Task, batch_size: int = 32, need: int | None = None, seed: int = 0) -> Task:
    """The prompts of ``task`` that ``model`` answers correctly (greedy, token-exact).

    With ``need``, prompts are asked in a random order (``seed``), a batch at a time, until
    ``need`` known ones are found (or the task runs out): a random sample of the known
    prompts, at the cost of asking only about ``need / share known`` of them.

    The kept task records ``known_by`` (model name), ``n_known`` and ``n_asked`` in its
    meta; with ``need``, ``n_asked`` counts the prompts up to the ``need``-th known one, so
    ``n_known / n_asked`` estimates the share known.
    """
    task = check_task(task)
    if need is not None and need < 1:
        raise TasklensError(f"need must be at least 1 known prompt, got {need}")
    order = list(range(len(task)))
    if need is not None:
        random.Random(seed).shuffle(order)
    keep: list[int] = []
    asked = 0
    step = len(order) if need is None else batch_size
    with warnings.catch_warnings():
        while asked < len(order) and (need is None or len(keep) < need):
            chunk = order[asked : asked + step]
            correct = evaluate_prompts(model, task.subset(chunk), "next_token", batch_size) > 0.5
            for i, ok in zip(chunk, correct.tolist(), strict=True):
                asked += 1
                keep += [i] if ok else []
                if need is not None and len(keep) == need:
                    break  # the prompts after the need-th known one count as not asked
            warnings.simplefilter("ignore", TasklensWarning)  # a task's warnings once, not per batch
    keep = sorted(keep)
    name = ModelInfo.of(model).name
    meta = {**task.meta, "known_by": name, "n_known": len(keep), "n_asked": asked}
    if not keep:
        raise TasklensError(
            f"{name} answers none of the {asked} prompts of task {task.name!r} it was asked "
            "correctly; try few-shot prompts (load_builtin(..., style='natural', shots=3)) or another task"
        )
    return dataclasses.replace(task.subset(keep), meta=meta)


def default_style(model) -> str:
    """``"organism"`` for the organism (its training templates), ``"natural"`` for any other model."""
    from tasklens.models import ORGANISM

    return "organism" if ModelInfo.of(model).name == ORGANISM else "natural"


def load_for_model(
    model,
    name: str,
    split: str = "detection",
    *,
    known: bool = True,
    asked: int | None = None,
    n: int | None = None,
    style: str | None = None,
    shots: int = 1,
    seed: int = 0,
    batch_size: int = 32,
) -> Task:
    """A built-in task in the form that suits ``model``, optionally only the facts it knows.

    Args:
        style: ``None`` picks `default_style`; ``"chat"`` uses the model's chat template.
        shots: demonstrations before each natural or chat prompt (ignored by the organism style).
        known: keep only the prompts the model answers correctly (greedy, token-exact).
        asked: first a deterministic sample of at most ``asked`` prompts (``seed``), to bound
            the cost of the known filter.
        n: then keep a deterministic sample of at most ``n`` prompts (``seed``).
    """
    from tasklens.tasks.builtin import load_builtin

    style = style or default_style(model)
    task = load_builtin(name, split, style=style, shots=shots, tokenizer=getattr(model, "tokenizer", None))
    if asked is not None:
        task = task.sample(asked, seed)
    if known:
        task = known_by(model, task, batch_size)
    return task if n is None else task.sample(n, seed)
