"""The evaluation matrix: neuron sets (and their random controls) x tasks, under an intervention."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import pandas as pd
import torch

from tasklens.errors import TasklensError, check_choice
from tasklens.evaluate import exact_match
from tasklens.interventions import ablate, amplify
from tasklens.metrics import METRICS
from tasklens.neurons import NeuronSet
from tasklens.selection import random_like
from tasklens.tasks.task import Task
from tasklens.tasks.tokenize import TokenizedTask

EVALUATIONS = ("exact_match", *METRICS)


def evaluate(model, task: Task, metric: str = "exact_match", batch_size: int = 64) -> float:
    """Mean over the task's prompts of ``metric``: greedy ``exact_match`` (default) or a
    teacher-forced metric from `tasklens.metrics.METRICS` (``logprob``, ``next_token``...)."""
    if metric == "exact_match":
        return float(exact_match(model, task, batch_size).float().mean())
    if metric not in METRICS:
        raise TasklensError(f"Unknown metric {metric!r}; choose one of {list(EVALUATIONS)}")
    total = 0.0
    with torch.no_grad():
        for batch in TokenizedTask.for_model(task, model).batches(batch_size):
            total += float(METRICS[metric](model(batch.tokens.to(model.cfg.device)), batch).sum())
    return total / len(task)


def intervention(kind: str = "ablate", factor: float = 2.0) -> Callable:
    """``(model, neurons) -> context manager``: ``"ablate"`` (zero) or ``"amplify"`` by ``factor``."""
    if kind == "ablate":
        return ablate
    if kind == "amplify":
        return partial(amplify, factor=factor)
    raise TasklensError(f"Unknown intervention {kind!r}; choose 'ablate' or 'amplify'")


def evaluation_matrix(
    model,
    sets: Sequence[NeuronSet],
    tasks: Sequence[Task],
    n_controls: int = 3,
    seed: int = 0,
    intervene: Callable = ablate,
    metric: str = "exact_match",
    batch_size: int = 64,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """``metric`` on every task with each neuron set intervened on, beside random controls.

    Each set gets ``n_controls`` random sets with the same per-layer counts
    (seeds ``seed .. seed + n_controls - 1``), reported as mean and std.

    Returns:
        Long-form frame with columns ``neurons`` (set name, ``"none"`` for the
        unmodified model), ``control`` (bool), ``size``, ``task``, ``value``,
        ``value_std`` (over control seeds, 0 otherwise), ``baseline`` and
        ``change`` (value - baseline).
    """
    check_choice("metric", metric, EVALUATIONS)

    def measure() -> dict[str, float]:
        return {task.name: evaluate(model, task, metric, batch_size) for task in tasks}

    baseline = measure()
    rows = [
        dict(neurons="none", control=False, size=0, task=t, value=v, value_std=0.0)
        for t, v in baseline.items()
    ]
    for neurons in sets:
        if progress:
            progress(neurons.name)
        with intervene(model, neurons):
            values = measure()
        rows += [
            dict(neurons=neurons.name, control=False, size=len(neurons), task=t, value=v, value_std=0.0)
            for t, v in values.items()
        ]
        if n_controls:
            runs = []
            for i in range(n_controls):
                with intervene(model, random_like(neurons, seed + i)):
                    runs.append(measure())
            for task in tasks:
                values = pd.Series([run[task.name] for run in runs])
                rows.append(
                    dict(
                        neurons=f"random({neurons.name})",
                        control=True,
                        size=len(neurons),
                        task=task.name,
                        value=float(values.mean()),
                        value_std=float(values.std(ddof=0)),
                    )
                )
    frame = pd.DataFrame(rows)
    frame["baseline"] = frame["task"].map(baseline)
    frame["change"] = frame["value"] - frame["baseline"]
    frame.attrs["metric"] = metric
    return frame


def ablation_matrix(model, sets, tasks, **kwargs) -> pd.DataFrame:
    """`evaluation_matrix` under zero ablation (greedy exact match by default)."""
    return evaluation_matrix(model, sets, tasks, intervene=ablate, **kwargs)


def pivot(frame: pd.DataFrame, value: str = "value") -> pd.DataFrame:
    """Neuron sets as rows, tasks as columns (in first-seen order)."""
    table = frame.pivot(index="neurons", columns="task", values=value)
    return table.loc[frame["neurons"].unique(), frame["task"].unique()]


def own_and_others(table: pd.DataFrame, names: list[str]) -> tuple[pd.Series, pd.Series]:
    """For a square table indexed by task on both axes (e.g. sets x tasks), each task's
    diagonal cell and the mean of the rest of its row."""
    own = pd.Series({n: table.loc[n, n] for n in names})
    others = pd.Series({n: table.loc[n, names].drop(n).mean() for n in names})
    return own, others


def plot(frame: pd.DataFrame, value: str = "value"):
    """Heatmap of the matrix (``value`` or ``change``)."""
    from tasklens.plots import heatmap

    metric = frame.attrs.get("metric", "metric")
    return heatmap(pivot(frame, value), f"{metric} ({value})", center=value == "change")
