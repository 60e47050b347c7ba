"""The evaluation matrix: neuron sets (and their random controls) x tasks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd

from tasklens.evaluate import accuracy
from tasklens.interventions import ablate
from tasklens.neurons import NeuronSet
from tasklens.selection import random_like
from tasklens.tasks.task import Task


def ablation_matrix(
    model,
    sets: Sequence[NeuronSet],
    tasks: Sequence[Task],
    n_controls: int = 3,
    seed: int = 0,
    batch_size: int = 64,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Accuracy of every task with each neuron set zero-ablated, beside random controls.

    Each set gets ``n_controls`` random sets with the same per-layer counts
    (seeds ``seed .. seed + n_controls - 1``), reported as mean and std.

    Returns:
        Long-form frame with columns ``neurons`` (set name, ``"none"`` for the
        unablated model), ``control`` (bool), ``size``, ``task``, ``accuracy``,
        ``accuracy_std`` (over control seeds, 0 otherwise), ``baseline`` and
        ``change`` (accuracy - baseline).
    """
    rows = []
    baseline = {task.name: accuracy(model, task, batch_size) for task in tasks}
    for task in tasks:
        rows.append(dict(neurons="none", control=False, size=0, task=task.name,
                         accuracy=baseline[task.name], accuracy_std=0.0))
    for neurons in sets:
        if progress:
            progress(neurons.name)
        with ablate(model, neurons):
            for task in tasks:
                rows.append(dict(neurons=neurons.name, control=False, size=len(neurons), task=task.name,
                                 accuracy=accuracy(model, task, batch_size), accuracy_std=0.0))
        if n_controls:
            controls = [random_like(neurons, seed + i) for i in range(n_controls)]
            per_task: dict[str, list[float]] = {task.name: [] for task in tasks}
            for control in controls:
                with ablate(model, control):
                    for task in tasks:
                        per_task[task.name].append(accuracy(model, task, batch_size))
            for task in tasks:
                values = pd.Series(per_task[task.name])
                rows.append(dict(neurons=f"random({neurons.name})", control=True, size=len(neurons),
                                 task=task.name, accuracy=float(values.mean()),
                                 accuracy_std=float(values.std(ddof=0))))
    frame = pd.DataFrame(rows)
    frame["baseline"] = frame["task"].map(baseline)
    frame["change"] = frame["accuracy"] - frame["baseline"]
    return frame


def pivot(frame: pd.DataFrame, value: str = "accuracy") -> pd.DataFrame:
    """Neuron sets as rows, tasks as columns (in first-seen order)."""
    table = frame.pivot(index="neurons", columns="task", values=value)
    return table.loc[frame["neurons"].unique(), frame["task"].unique()]
