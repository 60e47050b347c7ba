"""Keeping the facts a model knows (the relation paper detects neurons on those only).

A prompt is known when greedy decoding reproduces its answer. Greedy decoding
produces exactly the answer's tokens if and only if each answer token is the
argmax given the prompt and the answer tokens before it, so one teacher-forced
forward pass decides it for a whole batch (`tasklens.metrics.next_token_correct`),
with no generation. (This is token-exact; `tasklens.evaluate.exact_match`
additionally forgives case and surrounding spaces of the decoded text.)
"""

from __future__ import annotations

import dataclasses

from tasklens.errors import TasklensError
from tasklens.evaluate import evaluate_prompts
from tasklens.models import ModelInfo
from tasklens.tasks.task import Task, check_task


def known_by(model, task: Task, batch_size: int = 32) -> Task:
    """The prompts of ``task`` that ``model`` answers correctly (greedy, token-exact).

    The kept task records ``known_by`` (model name), ``n_known`` and ``n_asked`` in its meta.
    """
    task = check_task(task)
    correct = evaluate_prompts(model, task, "next_token", batch_size) > 0.5
    keep = correct.nonzero().flatten().tolist()
    meta = {**task.meta, "known_by": ModelInfo.of(model).name, "n_known": len(keep), "n_asked": len(task)}
    if not keep:
        raise TasklensError(
            f"{ModelInfo.of(model).name} answers none of the {len(task)} prompts of task {task.name!r} "
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
