"""Accuracy of a model on several tasks, plainly or with W-NCFT's per-input mixing of deltas.

The default metric is ``"next_token"``: every answer token is the argmax given the
prompt and the earlier answer tokens (teacher forcing). That is greedy decoding
producing the answer's tokens exactly, read off one forward pass instead of one per
token (and with logits only at the answer positions, `tasklens.finetune.objective`).
Any other metric of `tasklens.evaluation.metrics` works too; ``"exact_match"`` (greedy decoding
and text comparison) for plain evaluation only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from tasklens.errors import TasklensError
from tasklens.evaluation.evaluate import evaluate, evaluate_prompts
from tasklens.evaluation.metrics import METRICS, is_generative
from tasklens.finetune.deltas import NeuronDeltas
from tasklens.finetune.objective import answer_correct
from tasklens.tasks.task import Task
from tasklens.tasks.tokenize import Batch, TokenizedTask

DEFAULT_METRIC = "next_token"


def _batch_values(model, batch: Batch, metric) -> Tensor:
    if metric == "next_token":
        return answer_correct(model, batch)
    fn = METRICS.get(metric) if isinstance(metric, str) else metric
    return fn(model(batch.tokens.to(model.cfg.device)), batch)


def task_accuracy(model, task: Task, metric: str = DEFAULT_METRIC, batch_size: int = 64) -> float:
    """Mean ``metric`` over the task's prompts, as the model is now."""
    if metric != "next_token":
        return evaluate(model, task, metric, batch_size)
    total = 0.0
    with torch.no_grad():
        for batch in TokenizedTask.for_model(task, model).batches(batch_size):
            total += float(answer_correct(model, batch).double().sum())
    return total / len(task)


def prompt_values(model, task: Task, metric: str = DEFAULT_METRIC, batch_size: int = 64) -> np.ndarray:
    """``metric`` on each of the task's prompts, as the model is now (``[prompt]``, float64)."""
    if metric != "next_token":
        return evaluate_prompts(model, task, metric, batch_size).numpy()
    parts = []
    with torch.no_grad():
        for batch in TokenizedTask.for_model(task, model).batches(batch_size):
            parts.append(answer_correct(model, batch).double().cpu())
    return torch.cat(parts).numpy()


def accuracies(
    model, tasks: Mapping[str, Task], metric: str = DEFAULT_METRIC, batch_size: int = 64
) -> dict[str, float]:
    """Mean ``metric`` on each task, as the model is now."""
    return {name: task_accuracy(model, task, metric, batch_size) for name, task in tasks.items()}


def mixed_accuracy(
    model,
    task: Task,
    deltas: Sequence[NeuronDeltas],
    coefficients: Callable[[Batch], Float[Tensor, "batch n_deltas"]],
    metric: str = DEFAULT_METRIC,
    batch_size: int = 64,
) -> float:
    """Mean ``metric`` with each of ``deltas`` added at a per-example weight (`mixed_values`)."""
    return float(mixed_values(model, task, deltas, coefficients, metric, batch_size).mean())


def mixed_values(
    model,
    task: Task,
    deltas: Sequence[NeuronDeltas],
    coefficients: Callable[[Batch], Float[Tensor, "batch n_deltas"]],
    metric: str = DEFAULT_METRIC,
    batch_size: int = 64,
) -> np.ndarray:
    """``metric`` on each prompt with each of ``deltas`` added at a per-example weight.

    Args:
        deltas: unmerged neuron deltas.
        coefficients: for a batch, ``[batch, len(deltas)]`` weights (computed before the
            deltas are applied, e.g. from the base model's features).
        metric: a teacher-forced metric (per-example weights cannot follow greedy
            decoding's re-batching).
    """
    fn = METRICS.get(metric) if isinstance(metric, str) else metric
    if is_generative(fn):
        raise TasklensError(
            "Per-input mixing (W-NCFT) is evaluated with a teacher-forced metric; use 'next_token' "
            "(greedy decoding's answer, read off one forward pass)"
        )
    parts = []
    with torch.no_grad():
        for batch in TokenizedTask.for_model(task, model).batches(batch_size):
            weights = coefficients(batch)
            with ExitStack() as stack:
                for i, delta in enumerate(deltas):
                    stack.enter_context(delta.applied(weights[:, i]))
                parts.append(_batch_values(model, batch, metric).double().cpu())
    return torch.cat(parts).numpy()
