"""Continual-learning outcomes from per-prompt cells, with intervals over seeds and prompts.

From the accuracy matrix ``a[i, j]`` of a task order (task i after stage j, both in sequence
order, T tasks) and the base model's accuracy ``z_i``, in percentage points:

- **accuracy** (CL, methods.md): ``mean_i a[i, T]``, the average accuracy after the sequence;
- **forgetting** (Chaudhry et al. 2018): ``mean_{i<T} (max_{i<=l<T} a[i, l] - a[i, T])``, how far
  each earlier task fell from its best; lower is better;
- **forward transfer** (Lopez-Paz & Ranzato 2017): ``mean_{i>1} (a[i, i-1] - z_i)``, how much
  the earlier stages helped a task before it was trained.

A run's outcome is the mean over its orders; a condition's is the mean over its runs (seeds,
and random draws). Its interval is a percentile bootstrap that resamples the seeds, the random
draws and each task's test prompts together (the same prompts in every cell of every run, so
differences between conditions are paired by prompt and seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tasklens.analysis.stats import ALPHA
from tasklens.errors import TasklensError
from tasklens.finetune.controls import ALONE, parse_values

#: the outcomes, each with +1 where larger is better and -1 where smaller is
OUTCOMES = {"accuracy": 1, "forgetting": -1, "forward_transfer": 1}
#: bootstrap resamples of the intervals
N_RESAMPLES = 2000


def sequence_outcomes(matrix: np.ndarray, zero: np.ndarray) -> dict[str, np.ndarray]:
    """The three outcomes (module docstring) of accuracy matrices ``[..., T, T]`` (rows: tasks,
    columns: stages, both in sequence order) with the base model's ``[..., T]``, in points.

    >>> a = np.array([[0.8, 0.4], [0.3, 0.9]])
    >>> {k: round(float(v), 1) for k, v in sequence_outcomes(a, np.array([0.0, 0.1])).items()}
    {'accuracy': 65.0, 'forgetting': 40.0, 'forward_transfer': 20.0}
    """
    t = matrix.shape[-1]
    if t < 2 or matrix.shape[-2] != t:
        raise TasklensError(f"An accuracy matrix needs T x T cells with T >= 2, got {matrix.shape[-2:]}")
    accuracy = matrix[..., :, -1].mean(-1)
    drops = [matrix[..., i, i : t - 1].max(-1) - matrix[..., i, t - 1] for i in range(t - 1)]
    transfer = [matrix[..., i, i - 1] - zero[..., i] for i in range(1, t)]
    return {
        "accuracy": 100 * accuracy,
        "forgetting": 100 * np.mean(drops, axis=0),
        "forward_transfer": 100 * np.mean(transfer, axis=0),
    }


@dataclass
class Runs:
    """One condition's per-prompt values.

    Attributes:
        method, neurons: the condition (e.g. ``"NCFT"``, ``"random"``).
        orders: the task orders (each run goes through all).
        draws, seeds: the random draws (``[0]`` for a fixed set) and training seeds.
        values: per task, ``[draw, seed, order, stage, prompt]`` (NaN where not evaluated).
    """

    method: str
    neurons: str
    orders: list[list[str]]
    draws: list[int]
    seeds: list[int]
    values: dict[str, np.ndarray]

    @classmethod
    def from_cells(cls, cells: pd.DataFrame, method: str, neurons: str) -> Runs:
        rows = cells[(cells.method == method) & (cells.neurons == neurons)]
        if rows.empty:
            raise TasklensError(f"No runs of {method} on {neurons} neurons in these cells")
        orders = [o.split(" > ") for o in dict.fromkeys(rows.order)]
        stages = {len(o) for o in orders}
        if len(stages) != 1 or len({frozenset(o) for o in orders}) != 1:
            raise TasklensError(f"Every order must hold the same tasks, got {orders}")
        draws, seeds = sorted(set(rows.draw)), sorted(set(rows.seed))
        order_index = {" > ".join(o): k for k, o in enumerate(orders)}
        shape = (len(draws), len(seeds), len(orders), len(orders[0]))
        values: dict[str, np.ndarray] = {}
        for row in rows.itertuples():
            prompts = parse_values(row.values)
            if row.task not in values:
                values[row.task] = np.full((*shape, prompts.size), np.nan)
            target = values[row.task]
            if target.shape[-1] != prompts.size:
                raise TasklensError(f"Task {row.task!r} has runs on different numbers of prompts")
            target[draws.index(row.draw), seeds.index(row.seed), order_index[row.order], row.stage - 1] = (
                prompts
            )
        return cls(method, neurons, orders, draws, seeds, values)


class Outcomes:
    """Outcomes of every condition in ``cells``, observed and bootstrapped (module docstring).

    Args:
        cells: `tasklens.finetune.controls` cell rows.
        zero_shot: the base model's values per task (`controls.zero_shot_rows`).
        n_resamples, seed: of the bootstrap; alpha: its intervals' level.
    """

    def __init__(
        self,
        cells: pd.DataFrame,
        zero_shot: pd.DataFrame,
        n_resamples: int = N_RESAMPLES,
        seed: int = 0,
        alpha: float = ALPHA,
    ) -> None:
        self.cells = cells
        self.zero = {row.task: parse_values(row.values) for row in zero_shot.itertuples()}
        self.n_resamples, self.alpha = n_resamples, alpha
        rng = np.random.default_rng(seed)
        self.counts = {  # how often each prompt is drawn, per resample: shared by every condition
            task: rng.multinomial(v.size, np.full(v.size, 1 / v.size), size=n_resamples)
            for task, v in sorted(self.zero.items())
        }
        self.seeds = sorted(set(cells.seed))
        self.seed_picks = rng.integers(0, len(self.seeds), size=(n_resamples, len(self.seeds)))
        self._rng = rng
        self._runs: dict[tuple[str, str], Runs] = {}
        self._drawn: dict[tuple[str, str], dict[str, np.ndarray]] = {}

    def runs(self, method: str, neurons: str) -> Runs:
        key = (method, neurons)
        if key not in self._runs:
            runs = Runs.from_cells(self.cells, method, neurons)
            if runs.seeds != self.seeds:
                raise TasklensError(f"{method} on {neurons} neurons ran seeds {runs.seeds}, not {self.seeds}")
            self._runs[key] = runs
        return self._runs[key]

    def _zero(self, task: str, resampled: bool) -> np.ndarray:
        z = self.zero[task]
        return self.counts[task] @ z / z.size if resampled else np.asarray(z.mean())

    def per_run(self, method: str, neurons: str, resampled: bool = False) -> dict[str, np.ndarray]:
        """Each run's outcomes: ``[draw, seed]`` (``[resample, draw, seed]`` with ``resampled``:
        the prompts of every task drawn again)."""
        runs = self.runs(method, neurons)
        means = {}
        for task, v in runs.values.items():
            if resampled:
                means[task] = np.einsum("dsojp,bp->bdsoj", v, self.counts[task]) / v.shape[-1]
            else:
                means[task] = v.mean(-1)
        per_order = []
        for k, order in enumerate(runs.orders):
            matrix = np.stack([means[t][..., k, :] for t in order], axis=-2)
            zero = np.stack([self._zero(t, resampled) for t in order], axis=-1)
            if resampled:
                zero = zero[:, None, None, :]
            per_order.append(sequence_outcomes(matrix, zero))
        return {name: np.mean([o[name] for o in per_order], axis=0) for name in OUTCOMES}

    def drawn(self, method: str, neurons: str) -> dict[str, np.ndarray]:
        """The condition's outcome over the bootstrap resamples ``[resample]``: seeds, draws and
        prompts resampled (the seeds and prompts the same for every condition)."""
        key = (method, neurons)
        if key not in self._drawn:
            per_run = self.per_run(method, neurons, resampled=True)
            n_draws = next(iter(per_run.values())).shape[1]
            draw_picks = self._rng.integers(0, n_draws, size=(self.n_resamples, n_draws))
            b = np.arange(self.n_resamples)[:, None, None]
            self._drawn[key] = {
                name: values[b, draw_picks[:, :, None], self.seed_picks[:, None, :]].mean(axis=(1, 2))
                for name, values in per_run.items()
            }
        return self._drawn[key]

    def _interval(self, values: np.ndarray) -> tuple[float, float]:
        values = values[np.isfinite(values)]
        if values.size == 0:
            return math.nan, math.nan
        low, high = np.percentile(values, [100 * self.alpha / 2, 100 * (1 - self.alpha / 2)])
        return float(low), float(high)

    def interval(self, method: str, neurons: str, outcome: str) -> tuple[float, float]:
        """The condition's interval for ``outcome`` (seeds, draws and prompts resampled)."""
        return self._interval(self.drawn(method, neurons)[outcome])

    def conditions(self) -> list[tuple[str, str]]:
        """The (method, neurons) sequence conditions in the cells, in the order they appear."""
        rows = self.cells[self.cells.method != ALONE]
        return list(dict.fromkeys(zip(rows.method, rows.neurons, strict=True)))

    def summary(self) -> pd.DataFrame:
        """One row per condition and outcome: the mean over runs, its interval, and how many
        draws, seeds, orders and test prompts per task it rests on."""
        rows = []
        for method, neurons in self.conditions():
            runs = self.runs(method, neurons)
            observed, drawn = self.per_run(method, neurons), self.drawn(method, neurons)
            for name in OUTCOMES:
                low, high = self._interval(drawn[name])
                rows.append(
                    {
                        "method": method,
                        "neurons": neurons,
                        "outcome": name,
                        "value": float(observed[name].mean()),
                        "low": low,
                        "high": high,
                        "n_draws": len(runs.draws),
                        "n_seeds": len(runs.seeds),
                        "n_orders": len(runs.orders),
                        "n_prompts": min(v.shape[-1] for v in runs.values.values()),
                    }
                )
        return pd.DataFrame(rows)

    def difference(self, a: tuple[str, str], b: tuple[str, str], outcome: str) -> tuple[float, float, float]:
        """Condition ``a``'s outcome minus ``b``'s, with its paired interval (same seeds, prompts)."""
        value = float(self.per_run(*a)[outcome].mean() - self.per_run(*b)[outcome].mean())
        return (value, *self._interval(self.drawn(*a)[outcome] - self.drawn(*b)[outcome]))

    def alone(self, neurons: str, tasks: list[str] | None = None) -> dict[str, float]:
        """Single-task runs (`controls.ControlledContinual.alone`) on ``neurons``: the mean accuracy
        (%) of each task on its own test prompts after training on it alone, over seeds, with its
        interval (seeds and prompts resampled); ``tasks`` restricts the tasks averaged."""
        rows = self.cells[
            (self.cells.method == ALONE)
            & (self.cells.neurons == neurons)
            & (self.cells.trained == self.cells.task)
        ]
        if tasks is not None:
            rows = rows[rows.task.isin(tasks)]
        if rows.empty:
            raise TasklensError(f"No single-task runs on {neurons} in these cells")
        names = list(dict.fromkeys(rows.task))
        seeds = sorted(set(rows.seed))
        observed, drawn = [], []
        picks = self.seed_picks[:, : len(seeds)] % len(seeds)
        for task in names:
            values = np.stack(
                [parse_values(rows[(rows.task == task) & (rows.seed == s)].iloc[0]["values"]) for s in seeds]
            )
            observed.append(values.mean())
            resampled = values @ self.counts[task].T / values.shape[1]  # [seed, resample]
            drawn.append(resampled[picks, np.arange(self.n_resamples)[:, None]].mean(1))
        low, high = self._interval(100 * np.mean(drawn, axis=0))
        return {"value": 100 * float(np.mean(observed)), "low": low, "high": high, "n_seeds": len(seeds)}
