"""The causal comparisons of the relation paper: cumulativity, interference, cross-language.

Each is a loop of ablations and evaluations returning plain pandas frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from tasklens.analysis.engine import RandomSets
from tasklens.analysis.matrix import ablation_matrix
from tasklens.analysis.stats import ALPHA, drop_test, holm
from tasklens.data.neurons import NeuronScores, NeuronSet
from tasklens.errors import TasklensError
from tasklens.evaluation.evaluate import evaluate_prompts
from tasklens.interventions import Zero, ablate
from tasklens.tasks.task import Task

#: the relation paper's grid (10 ... 50k of 835,584 Llama-2-7B neurons) as fractions of all neurons,
#: shifted up for small models so that the smallest k is still a few neurons
DEFAULT_FRACTIONS = (0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16)


def k_grid(n_neurons: int, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> list[int]:
    """Increasing neuron counts for a cumulativity curve, scaled to the model."""
    return sorted({max(1, round(f * n_neurons)) for f in fractions})


def _ranked(scores: NeuronScores, start: int, stop: int) -> NeuronSet:
    order = scores.ranking()
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
    metric: str = "exact_match",
    n_controls: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """Accuracy as the top-k neurons are deactivated, and the cumulativity score.

    ``metric`` is a per-prompt correctness: ``exact_match`` (greedy decoding) or
    ``next_token`` (every answer token is the argmax under teacher forcing: the same
    test without normalisation, in one forward pass).

    For consecutive k1 < k2: among prompts correct with the top k1 off but wrong
    with the top k2 off (``n_total``), ``n_affected`` also fail with only ranks
    k1..k2 off; cumulativity = 1 - n_affected / n_total (NaN when n_total = 0).

    With ``n_controls``, each k's top set is set beside that many random sets of the same
    per-layer counts on ``task`` (seeds ``seed...``): ``random_accuracy`` (their mean),
    ``random_low`` / ``random_high`` (2.5 and 97.5 percentiles), and ``p_holm``, the
    one-sided test that the top k lower the accuracy more than random sets do
    (`tasklens.analysis.stats.drop_test`), Holm-corrected over the k.

    Returns:
        One row per k: ``k``, ``accuracy`` on ``task``, ``others_accuracy`` (mean
        over ``others``), and for k > first: ``n_total``, ``n_affected``, ``cumulativity``.
    """
    ks = list(ks) if ks is not None else k_grid(scores.values.numel())
    if ks != sorted(set(ks)) or ks[0] < 0:
        raise TasklensError(f"ks must be increasing non-negative counts, got {ks}")

    def correct_of(t: Task) -> torch.Tensor:
        return evaluate_prompts(model, t, metric, batch_size) > 0.5

    def mean_accuracy() -> float:
        return (
            float(sum(correct_of(t).float().mean() for t in others) / len(others)) if others else float("nan")
        )

    correct = {0: correct_of(task)}
    others_acc = {0: mean_accuracy()}
    for k in ks:
        if k == 0:
            continue
        with ablate(model, _ranked(scores, 0, k)):
            correct[k] = correct_of(task)
            others_acc[k] = mean_accuracy()
    controls = _random_controls(model, scores, task, ks, correct, metric, batch_size, n_controls, seed)
    rows = []
    previous = None
    for k in [0, *[k for k in ks if k]]:
        row = {"k": k, "accuracy": float(correct[k].float().mean()), "others_accuracy": others_acc[k]}
        row.update(controls.get(k, {}))
        if previous is not None:
            lost = correct[previous] & ~correct[k]
            with ablate(model, _ranked(scores, previous, k)):
                band_correct = (
                    correct_of(task.subset(lost.nonzero().flatten().tolist()))
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
    frame = pd.DataFrame(rows)
    if n_controls:
        frame["p_holm"] = holm(frame["p_value"].to_numpy())
    return frame


def _random_controls(
    model, scores, task, ks, correct, metric: str, batch_size: int, n_controls: int, seed: int
) -> dict:
    """Per k > 0: the random sets' accuracies on ``task`` (through the random-set engine, each
    evaluated whole) and the test of the top k against them."""
    engine = RandomSets(model, [task], [metric], Zero(), batch_size=batch_size, seed=seed, share_prefix=False)
    out = {}
    for k in [k for k in ks if k] if n_controls else []:
        draws = engine.draws(_ranked(scores, 0, k), n_controls)
        runs = np.asarray([float((d.values[task.name][:, 0] > 0.5).float().mean()) for d in draws])
        base = float(correct[0].float().mean())
        test = drop_test((correct[k].float() - correct[0].float()).numpy(), base - runs)
        out[k] = dict(
            random_accuracy=float(runs.mean()),
            random_low=float(np.quantile(runs, ALPHA / 2)),
            random_high=float(np.quantile(runs, 1 - ALPHA / 2)),
            p_value=test.p_value,
        )
    return out


def interference(
    model,
    sets: Sequence[NeuronSet],
    tasks: Sequence[Task],
    batch_size: int = 64,
    metric: str = "exact_match",
) -> pd.DataFrame:
    """acc_drop[r_i, r_j] = (acc(r_i) - acc(r_i with r_j's neurons off)) / acc(r_i).

    Rows: the task evaluated (r_i); columns: whose neurons are off (r_j).
    Negative cells mean deactivating r_j's neurons *helped* r_i.
    """
    return ablation_matrix(
        model, sets, tasks, n_controls=0, batch_size=batch_size, metric=metric
    ).relative_drop()


def cross_language(
    model,
    neurons: NeuronSet,
    tasks: Sequence[Task],
    n_controls: int = 5,
    batch_size: int = 64,
    metric: str = "exact_match",
) -> pd.DataFrame:
    """Deactivate one set (e.g. found on English prompts) while the relation is asked in other languages.

    Returns:
        Per task (language): baseline accuracy, accuracy with the set off, and the
        mean and std over ``n_controls`` random sets with the same per-layer counts.
    """
    for task in tasks:
        if len(task) == 0:
            raise TasklensError(f"Task {task.name!r} ({task.language}) has no prompts")
    result = ablation_matrix(
        model, [neurons], tasks, n_controls=n_controls, batch_size=batch_size, metric=metric
    )
    return pd.DataFrame(
        [
            dict(
                task=task.name,
                language=task.language,
                baseline=result.baseline[task.name],
                ablated=result.values.loc[neurons.name, task.name],
                random_mean=result.controls.loc[neurons.name, task.name],
                random_std=result.controls_std.loc[neurons.name, task.name],
            )
            for task in tasks
        ]
    )


def exclusive_vs_shared(
    model, sets: Sequence[NeuronSet], tasks: Sequence[Task], metric: str = "exact_match", batch_size: int = 64
) -> pd.DataFrame:
    """Ablate only each task's exclusive neurons, then only its shared ones; measure every task.

    Returns:
        Long-form rows: ``task_set`` (whose neurons), ``part`` (``exclusive`` or
        ``shared``), ``size``, ``task`` (evaluated), ``value`` and ``change``
        from the unablated model.
    """
    from tasklens.analysis.compare import exclusive, shared
    from tasklens.evaluation.evaluate import evaluate

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
