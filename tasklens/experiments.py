"""The causal comparisons of the relation paper: cumulativity, interference, cross-language.

Each is a loop of ablations and evaluations returning plain pandas frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from tasklens.errors import TasklensError
from tasklens.evaluate import exact_match
from tasklens.interventions import ablate
from tasklens.matrix import ablation_matrix, pivot
from tasklens.neurons import NeuronScores, NeuronSet
from tasklens.tasks.task import Task

#: the relation paper's grid (10 ... 50k of 835,584 Llama-2-7B neurons) as fractions of all neurons,
#: shifted up for small models so that the smallest k is still a few neurons
DEFAULT_FRACTIONS = (0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16)


def k_grid(n_neurons: int, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> list[int]:
    """Increasing neuron counts for a cumulativity curve, scaled to the model."""
    return sorted({max(1, round(f * n_neurons)) for f in fractions})


def _ranked(scores: NeuronScores, start: int, stop: int) -> NeuronSet:
    order = scores.values.flatten().argsort(descending=True, stable=True)
    mask = torch.zeros(scores.values.numel(), dtype=torch.bool)
    mask[order[start:stop]] = True
    return NeuronSet(mask.view_as(scores.values), f"{scores.task}[{start}:{stop}]")


def cumulativity(
    model,
    scores: NeuronScores,
    task: Task,
    others: Sequence[Task] = (),
    ks: Sequence[int] | None = None,
    batch_size: int = 64,
) -> pd.DataFrame:
    """Accuracy as the top-k neurons are deactivated, and the cumulativity score.

    For consecutive k1 < k2: among prompts correct with the top k1 off but wrong
    with the top k2 off (``n_total``), ``n_affected`` also fail with only ranks
    k1..k2 off; cumulativity = 1 - n_affected / n_total (NaN when n_total = 0).

    Returns:
        One row per k: ``k``, ``accuracy`` on ``task``, ``others_accuracy`` (mean
        over ``others``), and for k > first: ``n_total``, ``n_affected``, ``cumulativity``.
    """
    ks = list(ks) if ks is not None else k_grid(scores.values.numel())
    if ks != sorted(set(ks)) or ks[0] < 0:
        raise TasklensError(f"ks must be increasing non-negative counts, got {ks}")
    correct = {0: exact_match(model, task, batch_size)}
    others_acc = {0: _mean_accuracy(model, others, batch_size)}
    for k in ks:
        if k == 0:
            continue
        with ablate(model, _ranked(scores, 0, k)):
            correct[k] = exact_match(model, task, batch_size)
            others_acc[k] = _mean_accuracy(model, others, batch_size)
    rows = []
    previous = None
    for k in [0, *[k for k in ks if k]]:
        row = {"k": k, "accuracy": float(correct[k].float().mean()), "others_accuracy": others_acc[k]}
        if previous is not None:
            lost = correct[previous] & ~correct[k]
            with ablate(model, _ranked(scores, previous, k)):
                band_correct = (
                    exact_match(model, task.subset(lost.nonzero().flatten().tolist()), batch_size)
                    if lost.any()
                    else torch.zeros(0, dtype=torch.bool)
                )
            n_total, n_affected = int(lost.sum()), int((~band_correct).sum())
            row.update(
                n_total=n_total,
                n_affected=n_affected,
                cumulativity=1 - n_affected / n_total if n_total else float("nan"),
            )
        rows.append(row)
        previous = k
    return pd.DataFrame(rows)


def _mean_accuracy(model, tasks: Sequence[Task], batch_size: int) -> float:
    if not tasks:
        return float("nan")
    return float(sum(exact_match(model, t, batch_size).float().mean() for t in tasks) / len(tasks))


def interference(
    model, sets: Sequence[NeuronSet], tasks: Sequence[Task], batch_size: int = 64
) -> pd.DataFrame:
    """acc_drop[r_i, r_j] = (acc(r_i) - acc(r_i with r_j's neurons off)) / acc(r_i).

    Rows: the task evaluated (r_i); columns: whose neurons are off (r_j).
    Negative cells mean deactivating r_j's neurons *helped* r_i.
    """
    frame = ablation_matrix(model, sets, tasks, n_controls=0, batch_size=batch_size)
    acc = pivot(frame).drop(index="none")
    base = frame[frame.neurons == "none"].set_index("task")["value"]
    drop = (base - acc) / base.where(base > 0)
    return drop.T  # rows r_i (tasks), columns r_j (sets)


def cross_language(
    model, neurons: NeuronSet, tasks: Sequence[Task], n_controls: int = 5, batch_size: int = 64
) -> pd.DataFrame:
    """Deactivate one set (e.g. found on English prompts) while the relation is asked in other languages.

    Returns:
        Per task (language): baseline accuracy, accuracy with the set off, and the
        mean and std over ``n_controls`` random sets with the same per-layer counts.
    """
    for task in tasks:
        if len(task) == 0:
            raise TasklensError(f"Task {task.name!r} ({task.language}) has no prompts")
    frame = ablation_matrix(model, [neurons], tasks, n_controls=n_controls, batch_size=batch_size)
    rows = []
    for task in tasks:
        sub = frame[frame.task == task.name].set_index("neurons")
        control = sub.loc[f"random({neurons.name})"]
        rows.append(
            dict(
                task=task.name,
                language=task.language,
                baseline=sub.loc["none", "value"],
                ablated=sub.loc[neurons.name, "value"],
                random_mean=control["value"],
                random_std=control["value_std"],
            )
        )
    return pd.DataFrame(rows)


def exclusive_vs_shared(
    model, sets: Sequence[NeuronSet], tasks: Sequence[Task], metric: str = "exact_match", batch_size: int = 64
) -> pd.DataFrame:
    """Ablate only each task's exclusive neurons, then only its shared ones; measure every task.

    Returns:
        Long-form rows: ``task_set`` (whose neurons), ``part`` (``exclusive`` or
        ``shared``), ``size``, ``task`` (evaluated), ``value`` and ``change``
        from the unablated model.
    """
    from tasklens.compare import exclusive, shared
    from tasklens.matrix import evaluate

    parts = {"exclusive": exclusive(sets), "shared": shared(sets)}
    baseline = {t.name: evaluate(model, t, metric, batch_size) for t in tasks}
    rows = []
    for s in sets:
        for part, chosen in parts.items():
            neurons = chosen[s.name]
            for task in tasks:
                if len(neurons):
                    with ablate(model, neurons):
                        value = evaluate(model, task, metric, batch_size)
                else:
                    value = baseline[task.name]
                rows.append(
                    dict(
                        task_set=s.name,
                        part=part,
                        size=len(neurons),
                        task=task.name,
                        value=value,
                        change=value - baseline[task.name],
                    )
                )
    return pd.DataFrame(rows)
