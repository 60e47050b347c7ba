"""Continual learning against its controls: task neurons vs random neurons, full and sequential
fine-tuning, over several seeds, each at the learning rate the same search picked for it.

`ControlledContinual` runs, for every training seed:

- **NCFT / W-NCFT on the task neurons**: each stage trains its task's neurons (one training
  serves both methods; W-NCFT routes per input at evaluation);
- **NCFT / W-NCFT on random neurons**: ``random_draws`` draws, each a random set per task with the
  same per-layer counts as that task's neurons (`random_sets`), trained exactly the same way;
- **SeqFT**: every parameter, task after task;
- **each task alone** (`ControlledContinual.alone`): full fine-tuning of every task from the base
  model (the ceiling of what a task can reach), and its task neurons alone (the runs behind the
  transfer between tasks).

Every set, task or random, trains with the same seeds (the data order), so the mean of a set's
runs over the seeds is exchangeable with a random set's under the null hypothesis that the task
neurons are no better than random ones (the Monte Carlo test of `tasklens.finetune.verdict`).

`ControlledContinual.search` picks each condition's learning rate from one grid by one rule: the
highest final average accuracy (CL) on validation prompts (disjoint from the test prompts, by
subject) after the whole sequence, trained with a seed no test run uses (`SEARCH_SEED`) and, for
random neurons, a draw no test run uses (`SEARCH_DRAW`). A run that diverges scores nothing.

Every evaluation is kept per prompt (`cells`: one row per run, stage and evaluated task, the
prompt values in one column), so intervals can resample seeds and prompts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tasklens.data.neurons import NeuronSet
from tasklens.errors import TasklensError
from tasklens.finetune.config import FinetuneConfig
from tasklens.finetune.continual import SequenceValues, run_sequence
from tasklens.finetune.evaluation import DEFAULT_METRIC, prompt_values
from tasklens.finetune.routing import TaskRouter, task_features
from tasklens.finetune.trainer import FULL, FinetuneRun
from tasklens.selection import random_like
from tasklens.tasks.builtin.splits import stable_int
from tasklens.tasks.task import Task

#: the training seed of the learning-rate search (no test run uses it)
SEARCH_SEED = 1000
#: the random draw of the learning-rate search (test draws are 0, 1, ...)
SEARCH_DRAW = -1
#: the columns of `cells` that name a run
RUN_COLUMNS = ("method", "neurons", "draw", "seed", "lr", "order")
#: what each method trains: ``"task"`` / ``"random"`` neurons or ``"full"`` (every parameter)
CONDITIONS = (
    ("NCFT", "task"),
    ("W-NCFT", "task"),
    ("NCFT", "random"),
    ("W-NCFT", "random"),
    ("SeqFT", "full"),
)
#: single-task runs (`ControlledContinual.alone`)
ALONE = "alone"


def held_out(task: Task, n_test: int, n_validation: int, seed: int = 0) -> tuple[Task, Task]:
    """A task's held-out prompts split into test and validation prompts that share no subject
    (no prompt, for tasks without subjects): a third of the subjects, ranked by a hash of their
    text, give the validation prompts; ``n_test`` and ``n_validation`` are sampled from each part.

    >>> task = Task.from_lists("t", [f"q{i}" for i in range(30)], ["a"] * 30)
    >>> test, validation = held_out(task, 12, 6)
    >>> len(test), len(validation), set(test.prompts) & set(validation.prompts)
    (12, 6, set())
    """
    keys = list(task.subjects or task.prompts)
    distinct = sorted(set(keys), key=lambda k: (stable_int("tasklens-validation", k), k))
    if len(distinct) < 2:
        raise TasklensError(
            f"Task {task.name!r} has {len(distinct)} held-out subject(s); validation and test prompts "
            "need different subjects, so give it at least 2"
        )
    chosen = set(distinct[: max(1, len(distinct) // 3)])
    test = task.subset([i for i, k in enumerate(keys) if k not in chosen], f"{task.split}, test")
    validation = task.subset([i for i, k in enumerate(keys) if k in chosen], f"{task.split}, validation")
    return test.sample(n_test, seed), validation.sample(n_validation, seed)


def random_sets(neurons: Mapping[str, NeuronSet], draw: int) -> dict[str, NeuronSet]:
    """Draw ``draw``'s random neurons: per task, a random set with the same per-layer counts as its
    neurons (`random_like`), each task and draw with its own seed.

    >>> found = {"a": NeuronSet.from_pairs([(0, 1), (1, 2)], (2, 8), name="a")}
    >>> drawn = random_sets(found, 0)["a"]
    >>> drawn.counts_per_layer(), drawn.pairs() == random_sets(found, 0)["a"].pairs()
    ([1, 1], True)
    """
    return {
        name: random_like(neurons[name], 1_000 * (draw + 2) + i).renamed(f"random({name}, draw {draw})")
        for i, name in enumerate(neurons)
    }


def _text(values: np.ndarray) -> str:
    return " ".join(f"{v:.6g}" for v in values.tolist())


def parse_values(text: str) -> np.ndarray:
    """A `cells` row's prompt values (the inverse of how they are written)."""
    return np.array([float(v) for v in str(text).split()], dtype=float)


def cell_rows(sequence: SequenceValues, run: Mapping[str, object]) -> list[dict]:
    """One row per evaluated (method, stage, task) of a sequence, the run's columns first."""
    rows = []
    for method, cells in sequence.values.items():
        for (stage, task), values in cells.items():
            rows.append(
                {
                    **run,
                    "method": method,
                    "order": " > ".join(sequence.order),
                    "stage": stage,
                    "trained": sequence.order[stage - 1],
                    "task": task,
                    "n_prompts": values.size,
                    "mean": float(values.mean()),
                    "values": _text(values),
                }
            )
    return rows


@dataclass
class ControlledContinual:
    """Continual learning with its controls, over seeds (module docstring).

    Args:
        orders: task sequences (each at least two distinct tasks); every run goes through all.
        seeds: training seeds (data order); every condition trains once per seed.
        random_draws: random-neuron draws (each trains once per seed).
        lrs: the learning-rate grid every condition is searched over (one value: no search).
        steps, batch_size: of every stage and single-task run.
        methods: any of ``"SeqFT"``, ``"NCFT"``, ``"W-NCFT"``.
        metric: teacher-forced evaluation metric (default: the answer's tokens, greedy).
        eval_batch_size: prompts per evaluation batch.

    Example:
        >>> experiment = ControlledContinual([["continent_code", "subtraction"]], random_draws=3)
        >>> lrs = experiment.search(model, train, validation, neurons, router).chosen()
        >>> cells = experiment.run(model, train, test, neurons, router, lrs)
        >>> cells.groupby(["method", "neurons"]).draw.nunique().to_dict()[("NCFT", "random")]
        3
    """

    orders: Sequence[Sequence[str]]
    seeds: Sequence[int] = (0, 1)
    random_draws: int = 4
    lrs: Sequence[float] = (1e-4, 3e-4, 1e-3)
    steps: int = 15
    batch_size: int = 8
    methods: Sequence[str] = ("SeqFT", "NCFT", "W-NCFT")
    metric: str = DEFAULT_METRIC
    eval_batch_size: int = 64
    seconds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.orders = [list(o) for o in self.orders]
        if not self.orders:
            raise TasklensError("ControlledContinual needs at least one task order")
        for order in self.orders:
            if len(order) < 2 or len(set(order)) != len(order):
                raise TasklensError(f"A task order needs at least two distinct tasks, got {order}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or SEARCH_SEED in self.seeds:
            raise TasklensError(
                f"seeds must be distinct and not {SEARCH_SEED} (the learning-rate search's), "
                f"got {list(self.seeds)}"
            )
        if self.random_draws < 0:
            raise TasklensError(f"random_draws must be at least 0, got {self.random_draws}")
        if not self.lrs or not all(
            isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in self.lrs
        ):
            raise TasklensError(f"lrs must be positive numbers, got {list(self.lrs)}")
        unknown = [m for m in self.methods if m not in ("SeqFT", "NCFT", "W-NCFT")]
        if unknown or not self.methods:
            raise TasklensError(f"methods are SeqFT, NCFT and W-NCFT, got {list(self.methods)}")
        FinetuneConfig(steps=self.steps, batch_size=self.batch_size)  # checks both

    @property
    def tasks(self) -> list[str]:
        """Every task of the orders, in order of first appearance."""
        return list(dict.fromkeys(t for order in self.orders for t in order))

    def config(self, lr: float, seed: int) -> FinetuneConfig:
        return FinetuneConfig(steps=self.steps, lr=float(lr), batch_size=self.batch_size, seed=seed)

    def conditions(self) -> list[tuple[str, str]]:
        """The (method, neurons) pairs this experiment runs."""
        return [(m, n) for m, n in CONDITIONS if m in self.methods and (n != "random" or self.random_draws)]

    def _sequences(
        self,
        model,
        train: Mapping[str, Task],
        evaluated: Mapping[str, Task],
        neurons: Mapping[str, NeuronSet],
        router: TaskRouter | None,
        runs: Sequence[tuple[str, int, int, float, tuple[str, ...]]],
        final_only: bool,
        say: Callable[[str], None],
    ) -> list[dict]:
        """Rows of `cell_rows` for each run ``(neurons, draw, seed, lr, methods)`` over every order."""
        features = None
        if any("W-NCFT" in run[4] for run in runs):
            features = {n: task_features(model, t, self.eval_batch_size) for n, t in evaluated.items()}
        rows = []
        for choice, draw, seed, lr, methods in runs:
            trained = (
                FULL if choice == "full" else neurons if choice == "task" else random_sets(neurons, draw)
            )
            for order in self.orders:
                last = len(order)
                start = time.perf_counter()
                sequence = run_sequence(
                    model, order, train, {t: evaluated[t] for t in order}, trained, self.config(lr, seed),
                    methods, router, self.metric, self.eval_batch_size,
                    cells=(lambda stage, task, last=last: stage == last) if final_only else _needed(order),
                    features=features,
                )  # fmt: skip
                key = f"{'search ' if final_only else ''}{choice} neurons" if choice != "full" else "full"
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start
                run = {"neurons": choice, "draw": draw, "seed": seed, "lr": float(lr)}
                rows.extend(cell_rows(sequence, run))
                finals = {m: np.mean([v.mean() for (s, _), v in c.items() if s == last])
                          for m, c in sequence.values.items()}  # fmt: skip
                what = "every parameter" if choice == "full" else f"{choice} neurons"
                what += f" (draw {draw})" if choice == "random" else ""
                say(
                    f"{' > '.join(order)}, {what}, seed {seed}, lr {lr:g}: final accuracy "
                    + ", ".join(f"{m} {v:.2f}" for m, v in finals.items())
                )
        return rows

    def search(
        self,
        model,
        train: Mapping[str, Task],
        validation: Mapping[str, Task],
        neurons: Mapping[str, NeuronSet],
        router: TaskRouter | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> LearningRates:
        """Each condition's validation CL (final average accuracy, %) at every learning rate of the
        grid, trained with `SEARCH_SEED` (and `SEARCH_DRAW` for random neurons)."""
        say = progress or (lambda text: None)
        rows = []
        for choice, methods in self._trainings():
            draw = SEARCH_DRAW if choice == "random" else 0
            for lr in self.lrs:
                try:
                    cells = self._sequences(
                        model, train, validation, neurons, router, [(choice, draw, SEARCH_SEED, lr, methods)],
                        True, say,
                    )  # fmt: skip
                    frame = pd.DataFrame(cells)
                    scores = (100 * frame.groupby("method")["mean"].mean()).to_dict()
                    diverged = ""
                except TasklensError as error:
                    if "diverged" not in str(error):
                        raise
                    scores, diverged = {}, str(error).split(";")[0]
                    say(f"{choice} neurons, lr {lr:g}: {diverged}")
                for method in methods:
                    rows.append(
                        {
                            "method": method,
                            "neurons": choice,
                            "lr": float(lr),
                            "validation_CL": scores.get(method, math.nan),
                            "diverged": diverged,
                        }
                    )
        return LearningRates(pd.DataFrame(rows))

    def _trainings(self) -> list[tuple[str, tuple[str, ...]]]:
        """What trains: ``(neurons, methods it serves)``."""
        out = []
        neuron_methods = tuple(m for m in ("NCFT", "W-NCFT") if m in self.methods)
        if neuron_methods:
            out.append(("task", neuron_methods))
            if self.random_draws:
                out.append(("random", neuron_methods))
        if "SeqFT" in self.methods:
            out.append(("full", ("SeqFT",)))
        return out

    def run(
        self,
        model,
        train: Mapping[str, Task],
        test: Mapping[str, Task],
        neurons: Mapping[str, NeuronSet],
        router: TaskRouter | None,
        lrs: LearningRates,
        progress: Callable[[str], None] | None = None,
    ) -> pd.DataFrame:
        """Every condition over every seed (and random draw) at its chosen learning rate: the
        `cell_rows` of every run (one training serves NCFT and W-NCFT when their rates agree)."""
        say = progress or (lambda text: None)
        chosen = lrs.chosen()
        runs = []
        for choice, methods in self._trainings():
            by_lr: dict[float, list[str]] = {}
            for method in methods:
                by_lr.setdefault(chosen[(method, choice)], []).append(method)
            draws = range(self.random_draws) if choice == "random" else [0]
            for lr, served in by_lr.items():
                runs += [(choice, d, s, lr, tuple(served)) for d in draws for s in self.seeds]
        return pd.DataFrame(self._sequences(model, train, test, neurons, router, runs, False, say))

    def alone(
        self,
        model,
        train: Mapping[str, Task],
        test: Mapping[str, Task],
        trained: Mapping[str, NeuronSet | str],
        lr: float,
        name: str,
        progress: Callable[[str], None] | None = None,
        every_task: bool = True,
    ) -> pd.DataFrame:
        """Each task of ``trained`` fine-tuned alone from the base model (its neurons, or every
        parameter for ``"full"``) once per seed, every task of ``test`` evaluated after it (only the
        trained one without ``every_task``): rows like `cell_rows` with method `ALONE`, ``neurons``
        ``name``, order ``""`` and stage 1."""
        say = progress or (lambda text: None)
        rows = []
        for seed in self.seeds:
            for task, chosen in trained.items():
                start = time.perf_counter()
                with FinetuneRun(model, train[task], chosen, self.config(lr, seed)).train():
                    evaluated = test if every_task else {task: test[task]}
                    values = {
                        t: prompt_values(model, p, self.metric, self.eval_batch_size)
                        for t, p in evaluated.items()
                    }
                self.seconds[f"alone, {name}"] = (
                    self.seconds.get(f"alone, {name}", 0.0) + time.perf_counter() - start
                )
                sequence = SequenceValues([task], {ALONE: {(1, t): v for t, v in values.items()}}, {})
                rows += [
                    {**row, "order": ""}
                    for row in cell_rows(
                        sequence, {"neurons": name, "draw": 0, "seed": seed, "lr": float(lr)}
                    )
                ]
                say(f"{task} alone ({name}), seed {seed}: {values[task].mean():.2f} on its test prompts"
                    if task in values else f"{task} alone ({name}), seed {seed}")  # fmt: skip
        return pd.DataFrame(rows)


def _needed(order: Sequence[str]) -> Callable[[int, str], bool]:
    """The cells the outcomes read: every task from the stage before its own (forward transfer)
    to the end (forgetting, final accuracy)."""
    position = {t: i for i, t in enumerate(order, start=1)}
    return lambda stage, task: stage >= position[task] - 1


@dataclass
class LearningRates:
    """The learning-rate search: one row per (method, neurons, lr) with its validation CL."""

    table: pd.DataFrame

    def chosen(self) -> dict[tuple[str, str], float]:
        """Per (method, neurons), the learning rate with the highest validation CL (the smallest of
        equal ones).

        Raises:
            TasklensError: when every learning rate of a condition diverged.
        """
        out = {}
        for (method, choice), rows in self.table.groupby(["method", "neurons"], sort=False):
            scored = rows.dropna(subset=["validation_CL"])
            if scored.empty:
                raise TasklensError(
                    f"Every learning rate of the grid diverged for {method} on {choice} neurons "
                    f"({sorted(rows.lr)}); pass smaller ones (--lrs)"
                )
            best = scored[scored.validation_CL == scored.validation_CL.max()]
            out[(method, choice)] = float(best.lr.min())
        return out

    def with_chosen(self) -> pd.DataFrame:
        chosen = self.chosen()
        table = self.table.copy()
        table["chosen"] = [
            chosen[(m, n)] == lr for m, n, lr in zip(table.method, table.neurons, table.lr, strict=True)
        ]
        return table


def zero_shot_rows(
    model, test: Mapping[str, Task], metric: str = DEFAULT_METRIC, batch_size: int = 64
) -> pd.DataFrame:
    """The base model's values on each task's test prompts: one row per task."""
    rows = []
    for name, task in test.items():
        values = prompt_values(model, task, metric, batch_size)
        rows.append(
            {"task": name, "n_prompts": values.size, "mean": float(values.mean()), "values": _text(values)}
        )
    return pd.DataFrame(rows)
