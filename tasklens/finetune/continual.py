"""Continual learning over a task sequence: SeqFT, NCFT and W-NCFT (Leng & Xiong, methods.md section 8).

- **SeqFT**: fine-tune every parameter on task 1, then task 2, ... (sequential full fine-tuning).
- **NCFT**: at stage j train only task j's neurons (`NeuronDeltas`), merge, go on.
- **W-NCFT**: the NCFT training; at inference the weights are a per-input mixture of the
  per-task parameters: with theta_t the weights right after stage t (theta_0 the base
  model) and alpha_t(x) the `TaskRouter` weights over the tasks learned so far,

      theta(x) = sum_t alpha_t(x) theta_t = theta_0 + sum_s c_s(x) Delta_s,   c_s = sum_{t >= s} alpha_t

  where Delta_s is stage s's neuron delta. An input routed wholly to task t sees exactly
  the model as it was after learning t.

Metrics (methods.md): ``a[i, j]`` is the accuracy on task i after stage j (rows: tasks,
columns: stages, both in sequence order); CL = 100 x mean_i a[i, T];
FG_j = 100 / (j - 1) x sum_{i<j} a[i, j] / A_i, with A_i the accuracy on task i after
fine-tuning on task i alone (same method, from the base model). As defined, FG is the
share of each earlier task's own accuracy that is retained (100 % = nothing forgotten);
`ContinualResult.fg` is FG_T, after the last stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from tasklens.data.neurons import NeuronSet
from tasklens.errors import TasklensError, check_choice
from tasklens.finetune.config import FinetuneConfig
from tasklens.finetune.evaluation import DEFAULT_METRIC, accuracies, mixed_values, prompt_values
from tasklens.finetune.full import preserved
from tasklens.finetune.routing import TaskRouter, batch_features, task_features
from tasklens.finetune.trainer import FULL, FinetuneRun
from tasklens.tasks.task import Task

METHODS = ("SeqFT", "NCFT", "W-NCFT")


@dataclass
class ContinualResult:
    """One method on one task order.

    Attributes:
        method: ``"SeqFT"``, ``"NCFT"`` or ``"W-NCFT"``.
        order: the task sequence.
        matrix: ``a[i, j]``: rows the tasks, columns the stage (named by the task trained
            there), both in sequence order; values in [0, 1].
        alone: A_i, the accuracy after fine-tuning on task i alone.
        zero_shot: the base model's accuracy per task.
        seconds: training and evaluation wall time.
        alone_source: ``"single-task runs"`` (methods.md's A_i) or ``"diagonal"`` (a[i, i]).
    """

    method: str
    order: list[str]
    matrix: pd.DataFrame
    alone: dict[str, float]
    zero_shot: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    alone_source: str = "single-task runs"

    def __post_init__(self) -> None:
        if not self.alone:
            self.alone = {task: self.a(i, i) for i, task in enumerate(self.order, start=1)}
            self.alone_source = "diagonal"

    def a(self, i: int, j: int) -> float:
        """a[i, j] with 1-based i (task) and j (stage), as in the paper."""
        return float(self.matrix.iat[i - 1, j - 1])

    @property
    def cl(self) -> float:
        """Average accuracy after the last stage, in %."""
        return 100.0 * float(self.matrix.iloc[:, -1].mean())

    def fg_at(self, j: int) -> float:
        """FG_j in % (j >= 2); NaN when some A_i is 0."""
        if not 2 <= j <= len(self.order):
            raise TasklensError(f"FG_j is defined for j in 2..{len(self.order)}, got {j}")
        ratios = []
        for i in range(1, j):
            reference = self.alone[self.order[i - 1]]
            if reference <= 0:
                return float("nan")
            ratios.append(self.a(i, j) / reference)
        return 100.0 * sum(ratios) / (j - 1)

    @property
    def fg(self) -> float:
        """FG_T: FG after the last stage, in %."""
        return self.fg_at(len(self.order))

    def summary(self) -> dict:
        return {
            "method": self.method,
            "order": " > ".join(self.order),
            "CL": self.cl,
            "FG": self.fg,
            **{f"FG_{j}": self.fg_at(j) for j in range(2, len(self.order) + 1)},
            "mean_A": 100.0 * sum(self.alone[t] for t in self.order) / len(self.order),
            "A_source": self.alone_source,
            "seconds": round(self.seconds, 1),
        }

    def long(self) -> pd.DataFrame:
        """One row per (task, stage): method, order, accuracy."""
        rows = []
        for j, stage in enumerate(self.order, start=1):
            for i, task in enumerate(self.order, start=1):
                rows.append(
                    {
                        "method": self.method,
                        "order": " > ".join(self.order),
                        "task": task,
                        "task_index": i,
                        "stage": j,
                        "trained": stage,
                        "accuracy": self.a(i, j),
                    }
                )
        return pd.DataFrame(rows)


def summary_table(results: Sequence[ContinualResult]) -> pd.DataFrame:
    """CL and FG per method and order, then each method's mean over orders."""
    frame = pd.DataFrame([r.summary() for r in results])
    means = frame.groupby("method", sort=False)[["CL", "FG", "mean_A"]].mean().reset_index()
    means["order"] = "mean over orders"
    return pd.concat([frame, means], ignore_index=True)


def _matrix(order: Sequence[str], columns: list[dict[str, float]]) -> pd.DataFrame:
    data = {stage: [col[task] for task in order] for stage, col in zip(order, columns, strict=True)}
    frame = pd.DataFrame(data, index=list(order))
    frame.index.name = "task"
    frame.columns.name = "after_stage"
    return frame


def _alone(alone: Mapping[str, Mapping[str, float]] | None, scope: str) -> dict[str, float]:
    if alone is None:
        return {}
    if scope not in alone:
        raise TasklensError(
            f"alone needs A_i for scope {scope!r} (keys 'full' and 'neurons'), got {list(alone)}"
        )
    return dict(alone[scope])


def _cumulative(alpha: torch.Tensor) -> torch.Tensor:
    """c_s = sum over t >= s of alpha_t (stages in order along the last dimension)."""
    return alpha.flip(-1).cumsum(-1).flip(-1)


def continual_learning(
    model,
    order: Sequence[str],
    train: Mapping[str, Task],
    test: Mapping[str, Task],
    neurons: Mapping[str, NeuronSet],
    alone: Mapping[str, Mapping[str, float]] | None,
    configs: Mapping[str, FinetuneConfig] | None = None,
    methods: Sequence[str] = METHODS,
    router: TaskRouter | None = None,
    metric: str = DEFAULT_METRIC,
    batch_size: int = 64,
    zero_shot: Mapping[str, float] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[ContinualResult]:
    """Run the sequence ``order`` with each method; the model is restored afterwards.

    Args:
        order: task names in training order.
        train, test: per task, training prompts and held-out prompts.
        neurons: per task, the neurons NCFT trains at its stage.
        alone: A_i per scope: ``{"full": {task: acc}, "neurons": {task: acc}}`` (see
            `SingleTaskRuns.alone`); SeqFT uses ``"full"``, NCFT and W-NCFT ``"neurons"``.
            None: use the diagonal a[i, i] (the accuracy right after stage i) instead, which
            skips the single-task runs; the results then say ``alone_source="diagonal"``.
        configs: hyperparameters for ``"full"`` (SeqFT) and ``"neurons"`` (NCFT).
        methods: any of `METHODS`.
        router: W-NCFT's router, fitted on the base model (needed for W-NCFT).
        metric: teacher-forced evaluation metric.
    """
    for method in methods:
        check_choice("continual-learning method", method, METHODS)
    if "W-NCFT" in methods and router is None:
        raise TasklensError("W-NCFT needs a TaskRouter fitted on the base model (TaskRouter.fit)")
    if len(set(order)) != len(order) or len(order) < 2:
        raise TasklensError(f"A task order needs at least two distinct tasks, got {list(order)}")
    configs = dict(configs or {})
    evaluated = {t: test[t] for t in order}
    if zero_shot is None:
        zero_shot = accuracies(model, evaluated, metric, batch_size)
    say = progress or (lambda text: None)
    results = []
    runs = []
    if "SeqFT" in methods:
        runs.append((FULL, ("SeqFT",), "full"))
    neuron_methods = tuple(m for m in ("NCFT", "W-NCFT") if m in methods)
    if neuron_methods:
        runs.append((neurons, neuron_methods, "neurons"))
    for trained, chosen, scope in runs:
        sequence = run_sequence(
            model, order, train, evaluated, trained, configs.get(scope), chosen, router, metric, batch_size,
            progress=say,
        )  # fmt: skip
        for method in chosen:
            columns = [
                {task: float(sequence.values[method][(j, task)].mean()) for task in order}
                for j in range(1, len(order) + 1)
            ]
            results.append(
                ContinualResult(
                    method,
                    list(order),
                    _matrix(order, columns),
                    _alone(alone, scope),
                    dict(zero_shot),
                    sequence.seconds[method],
                )
            )
    return results


@dataclass
class SequenceValues:
    """Per-prompt results of one task sequence.

    Attributes:
        order: the task sequence.
        values: per method, ``(stage, task) -> [prompt]`` values of the metric on that task's
            held-out prompts after stage ``stage`` (1-based; the stage trained ``order[stage - 1]``);
            only the cells asked for.
        seconds: per method, training and evaluation wall time (the training of NCFT and
            W-NCFT, which share it, counts for both).
    """

    order: list[str]
    values: dict[str, dict[tuple[int, str], np.ndarray]]
    seconds: dict[str, float]


def all_cells(stage: int, task: str) -> bool:
    return True


def run_sequence(
    model,
    order: Sequence[str],
    train: Mapping[str, Task],
    evaluated: Mapping[str, Task],
    trained: Mapping[str, NeuronSet] | str,
    config: FinetuneConfig | None,
    methods: Sequence[str],
    router: TaskRouter | None = None,
    metric: str = DEFAULT_METRIC,
    batch_size: int = 64,
    cells: Callable[[int, str], bool] = all_cells,
    features: Mapping[str, torch.Tensor] | None = None,
    progress: Callable[[str], None] | None = None,
) -> SequenceValues:
    """Train the tasks of ``order`` one after the other and evaluate after each stage; the model
    is restored afterwards.

    Args:
        trained: ``"full"`` (every parameter: SeqFT) or, per task, the neurons trained at its
            stage (NCFT, and W-NCFT's per-task deltas).
        config: hyperparameters of every stage.
        methods: ``("SeqFT",)`` for ``"full"``; any of ``"NCFT"``, ``"W-NCFT"`` for neuron sets
            (one training serves both).
        evaluated: per task, the prompts evaluated.
        cells: ``cells(stage, task)``: whether to evaluate ``task`` after ``stage`` (default all).
        features: W-NCFT's base-model features of the evaluated prompts (computed when None).
    """
    say = progress or (lambda text: None)
    full = isinstance(trained, str)
    allowed = ("SeqFT",) if full else ("NCFT", "W-NCFT")
    if not methods or any(m not in allowed for m in methods):
        raise TasklensError(
            f"A sequence training {'every parameter' if full else 'neuron sets'} runs {list(allowed)}, "
            f"not {list(methods)}"
        )
    if "W-NCFT" in methods and router is None:
        raise TasklensError("W-NCFT needs a TaskRouter fitted on the base model (TaskRouter.fit)")
    values: dict[str, dict[tuple[int, str], np.ndarray]] = {m: {} for m in methods}
    seconds = dict.fromkeys(methods, 0.0)

    def evaluate_stage(stage: int, method: str, evaluate: Callable[[str, Task], np.ndarray]) -> None:
        start = time.perf_counter()
        for name, task in evaluated.items():
            if cells(stage, name):
                values[method][(stage, name)] = evaluate(name, task)
        seconds[method] += time.perf_counter() - start
        shown = {k[1]: v.mean() for k, v in values[method].items() if k[0] == stage}
        say(f"{method} after {order[stage - 1]}: " + ", ".join(f"{k} {v:.2f}" for k, v in shown.items()))

    def plain(name: str, task: Task) -> np.ndarray:
        return prompt_values(model, task, metric, batch_size)

    if full:
        with preserved(model):
            for stage, task in enumerate(order, start=1):
                start = time.perf_counter()
                FinetuneRun(model, train[task], FULL, config, restorable=False).train()
                seconds["SeqFT"] += time.perf_counter() - start
                evaluate_stage(stage, "SeqFT", plain)
        return SequenceValues(list(order), values, seconds)

    runs: list[FinetuneRun] = []
    if "W-NCFT" in methods and features is None:
        start = time.perf_counter()
        features = {name: task_features(model, task, batch_size) for name, task in evaluated.items()}
        seconds["W-NCFT"] += time.perf_counter() - start
    try:
        for stage, task in enumerate(order, start=1):
            start = time.perf_counter()
            runs.append(FinetuneRun(model, train[task], trained[task], config).train().merge())
            for method in methods:
                seconds[method] += time.perf_counter() - start
            if "NCFT" in methods:
                evaluate_stage(stage, "NCFT", plain)
            if "W-NCFT" in methods:
                deltas = [run.trainable for run in runs]
                routed = _router_evaluation(
                    model, deltas, list(order[:stage]), features, router, metric, batch_size
                )
                for run in reversed(runs):  # the routed mixture starts from the base model
                    run.restore()
                try:
                    evaluate_stage(stage, "W-NCFT", routed)
                finally:
                    for run in runs:
                        run.merge()
    finally:
        for run in reversed(runs):
            run.restore()
    return SequenceValues(list(order), values, seconds)


def _router_evaluation(model, deltas, seen, features, router, metric, batch_size):
    """``(name, task) -> [prompt]`` values with W-NCFT's per-input mixture of the stages ``seen``
    (``features``: per task, the base model's feature of each evaluated prompt); the deltas
    must not be merged while it runs."""

    def routed(name: str, task: Task) -> np.ndarray:
        def coefficients(batch):
            return _cumulative(router.weights(features[name][batch.indices], seen))

        return mixed_values(model, task, deltas, coefficients, metric, batch_size)

    return routed


def routing_accuracy(
    model, router: TaskRouter, tasks: Mapping[str, Task], batch_size: int = 64
) -> pd.DataFrame:
    """How W-NCFT routes each task's prompts: mean weight on every task (rows: true task)."""
    from tasklens.tasks.tokenize import TokenizedTask

    rows = {}
    with torch.no_grad():
        for name, task in tasks.items():
            weights = []
            for batch in TokenizedTask.for_model(task, model).batches(batch_size, with_answers=False):
                weights.append(router.weights(batch_features(model, batch), list(tasks)))
            rows[name] = torch.cat(weights).mean(0).tolist()
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=list(tasks))
    frame.index.name = "task"
    return frame
