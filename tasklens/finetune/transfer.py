"""Single-task fine-tuning from the base model: the paper's fine-tuning table and real transfer.

`single_task_runs` fine-tunes the base model on each task a with each choice of
trained parameters (its task neurons, random neurons of the same per-layer counts,
another task's neurons, every parameter), evaluates every task b after each run,
and restores the model. From that one table:

- `fine_tuning_table`: accuracy on the trained task per choice, beside zero-shot
  (Leng & Xiong, Llama-2-7B: task neurons 83.2, random neurons 54.8, zero-shot 53.3);
- `transfer_pairs`: the change on every other task b after fine-tuning on a, with the
  overlap and per-layer parameter similarity of the two tasks' neuron sets;
- `transfer_correlations`: Pearson and Spearman of transfer with each similarity,
  with the number of pairs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from tasklens.analysis.compare import (
    exclusive_parameter_similarity,
    overlap,
    parameter_similarity,
    similarity_transfer_correlation,
)
from tasklens.data.neurons import NeuronSet
from tasklens.errors import TasklensError, check_choice
from tasklens.finetune.config import FinetuneConfig
from tasklens.finetune.evaluation import DEFAULT_METRIC, accuracies
from tasklens.finetune.trainer import FULL, FinetuneRun
from tasklens.selection import random_like
from tasklens.tasks.task import Task

#: what a single-task run trains
SCOPES = ("task_neurons", "random_neurons", "other_task_neurons", "full")


@dataclass
class SingleTaskRuns:
    """Every (trained task, scope) run evaluated on every task.

    Attributes:
        zero_shot: accuracy of the base model per task.
        results: one row per (trained_on, scope, evaluated_on): accuracy, change from
            zero-shot, the trained set's name and size, trained parameters, steps, seconds.
        runs: one row per run: its loss curve summary and wall time.
    """

    zero_shot: dict[str, float]
    results: pd.DataFrame
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)

    def alone(self, scope: str) -> dict[str, float]:
        """A_i: accuracy on task i after fine-tuning on task i alone with ``scope``."""
        own = self.results[
            (self.results.scope == scope) & (self.results.trained_on == self.results.evaluated_on)
        ]
        if own.empty:
            raise TasklensError(f"No single-task runs with scope {scope!r}; run single_task_runs with it")
        return dict(zip(own.trained_on, own.accuracy, strict=True))


def trained_parameters(
    scope: str, task: str, neurons: Mapping[str, NeuronSet], order: Sequence[str], seed: int = 0
) -> NeuronSet | str:
    """What a ``scope`` run on ``task`` trains: its neurons, a random set like them, the
    next task's neurons (in ``order``, cyclically), or ``"full"``."""
    check_choice("scope", scope, SCOPES)
    if scope == "full":
        return FULL
    if scope == "task_neurons":
        return neurons[task]
    if scope == "random_neurons":
        return random_like(neurons[task], seed).renamed(f"random({task})")
    other = order[(list(order).index(task) + 1) % len(order)]
    if other == task:
        raise TasklensError("The other-task baseline needs at least two tasks")
    return neurons[other].renamed(f"{other}_neurons")


def single_task_runs(
    model,
    train: Mapping[str, Task],
    test: Mapping[str, Task],
    neurons: Mapping[str, NeuronSet],
    scopes: Sequence[str] = ("task_neurons", "random_neurons", "full"),
    configs: Mapping[str, FinetuneConfig] | None = None,
    metric: str = DEFAULT_METRIC,
    batch_size: int = 64,
    seed: int = 0,
    zero_shot: Mapping[str, float] | None = None,
    progress: Callable[[str], None] | None = None,
) -> SingleTaskRuns:
    """Fine-tune the base model on each task of ``train`` with each scope; evaluate on all of ``test``.

    Args:
        train, test: per task name, the training prompts and the held-out prompts.
        neurons: per task, its neurons (for the neuron scopes).
        scopes: which runs (see `SCOPES`).
        configs: hyperparameters per scope name, with ``"neurons"`` for every neuron scope
            and ``"full"`` for full fine-tuning (default `FinetuneConfig()` for both).
        metric: evaluation metric (default teacher-forced greedy match).
        seed: seed of the random neuron sets.
        zero_shot: the base model's accuracies, when already measured.
    """
    configs = dict(configs or {})
    names = list(train)
    if zero_shot is None:
        zero_shot = accuracies(model, test, metric, batch_size)
    rows, run_rows = [], []
    for task in names:
        for scope in scopes:
            chosen = trained_parameters(scope, task, neurons, names, seed)
            config = configs.get("full" if scope == "full" else "neurons", FinetuneConfig())
            start = time.perf_counter()
            with FinetuneRun(model, train[task], chosen, config).train() as run:
                after = accuracies(model, test, metric, batch_size)
            summary = run.summary()
            run_rows.append(
                {**summary, "scope": scope, "wall_seconds": round(time.perf_counter() - start, 2)}
            )
            for other, acc in after.items():
                rows.append(
                    {
                        "trained_on": task,
                        "scope": scope,
                        "evaluated_on": other,
                        "accuracy": acc,
                        "zero_shot": zero_shot[other],
                        "change": acc - zero_shot[other],
                        "neurons": summary["neurons"],
                        "n_neurons": summary["n_neurons"],
                        "n_trained_parameters": summary["n_trained_parameters"],
                    }
                )
            if progress is not None:
                progress(
                    f"{task} / {scope}: {after[task]:.3f} on its test prompts (zero-shot "
                    f"{zero_shot[task]:.3f}), {summary['seconds']:.0f} s"
                )
    return SingleTaskRuns(dict(zero_shot), pd.DataFrame(rows), pd.DataFrame(run_rows))


def fine_tuning_table(runs: SingleTaskRuns) -> pd.DataFrame:
    """Accuracy on the fine-tuned task per scope, beside zero-shot; the last row averages."""
    own = runs.results[runs.results.trained_on == runs.results.evaluated_on]
    table = own.pivot(index="trained_on", columns="scope", values="accuracy")
    table = table[[s for s in SCOPES if s in table.columns]]
    table.insert(0, "zero_shot", [runs.zero_shot[t] for t in table.index])
    table.index.name = "task"
    table.loc["average"] = table.mean()
    return table


def _mean_finite(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def transfer_pairs(
    model, runs: SingleTaskRuns, neurons: Mapping[str, NeuronSet], scope: str = "task_neurons"
) -> pd.DataFrame:
    """One row per ordered pair (a, b), a != b: the change on b after fine-tuning on a with
    ``scope``, and the overlap and parameter similarity of a's and b's neuron sets (on ``model``,
    which should be the base model): ``mean_similarity`` as Leng & Xiong, and
    ``exclusive_similarity`` (`exclusive_parameter_similarity`), independent of the overlap."""
    frame = runs.results[
        (runs.results.scope == scope) & (runs.results.trained_on != runs.results.evaluated_on)
    ]
    if frame.empty:
        raise TasklensError(f"No cross-task results for scope {scope!r}")
    rows = []
    for a, b, change, acc in zip(
        frame.trained_on, frame.evaluated_on, frame.change, frame.accuracy, strict=True
    ):
        o = overlap(neurons[a], neurons[b])
        sims = parameter_similarity(model, neurons[a], neurons[b])
        rows.append(
            {
                "task_a": a,
                "task_b": b,
                "scope": scope,
                "accuracy_b": acc,
                "transfer": change,
                "jaccard": o.jaccard,
                "shared": o.shared,
                "mean_similarity": _mean_finite(sims),
                "exclusive_similarity": _mean_finite(
                    exclusive_parameter_similarity(model, neurons[a], neurons[b])
                ),
                **{f"similarity_layer_{i}": v for i, v in enumerate(sims)},
            }
        )
    return pd.DataFrame(rows)


def transfer_correlations(pairs: pd.DataFrame, transfer: str = "transfer") -> pd.DataFrame:
    """Pearson and Spearman (with the number of pairs) of ``transfer`` with each similarity column:
    the Jaccard overlap, the mean parameter similarity (which rises with the overlap), the mean
    similarity of the sets' exclusive neurons (which does not), and each layer's."""
    measures = ["jaccard", "mean_similarity", "exclusive_similarity"] + [
        c for c in pairs.columns if c.startswith("similarity_layer_")
    ]
    rows = []
    for measure in measures:
        data = pairs[[measure, transfer]].dropna()
        constant = data[measure].nunique() < 2 or data[transfer].nunique() < 2
        if len(data) < 3 or constant:
            rows.append(
                {
                    "similarity": measure,
                    "pearson": float("nan"),
                    "spearman": float("nan"),
                    "p_permutation": float("nan"),
                    "n_pairs": len(data),
                }
            )
            continue
        rows.append({"similarity": measure, **similarity_transfer_correlation(pairs, measure, transfer)})
    return pd.DataFrame(rows)
