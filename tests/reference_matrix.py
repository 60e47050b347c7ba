"""The evaluation matrix as tasklens computed it before the random-set engine: one random set at a
time, each through `evaluate_metrics` with its intervention applied, in seed order, with the
sequential stop and the ``at_stake`` gate. `tests/integration/test_engine.py` checks that
`evaluation_matrices` (the engine, every setting) gives the same `EvaluationResult`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from tasklens.analysis.matrix import (
    BASELINE,
    CONTROL_COLUMNS,
    CONTROL_PROMPT_COLUMNS,
    FLOOR_COLUMNS,
    PROMPT_COLUMNS,
    EvaluationResult,
    _deranged,
)
from tasklens.analysis.stats import ALPHA
from tasklens.analysis.verdict import at_stake as verdict_at_stake
from tasklens.analysis.verdict import check_alpha, sequential_draws
from tasklens.data.neurons import NeuronSet
from tasklens.errors import TasklensError, check_choice
from tasklens.evaluation.evaluate import evaluate_metrics
from tasklens.evaluation.metrics import METRICS
from tasklens.interventions import Intervention
from tasklens.selection import random_like
from tasklens.tasks.task import Task, check_task


def one_at_a_time(
    model,
    sets: Sequence[NeuronSet],
    tasks: Sequence[Task],
    metrics: Sequence[str] = ("exact_match", "logprob"),
    n_controls: int = 10,
    seed: int = 0,
    intervention: Intervention | str = "zero",
    batch_size: int = 64,
    progress: Callable[[str], None] | None = None,
    controls_on: str = "all",
    measure_floor: bool = True,
    stop_after: int | None = None,
    at_stake: int | None = None,
    alpha: float = ALPHA,
) -> dict[str, EvaluationResult]:
    """`evaluation_matrix` for several ``metrics`` at once, by metric name: the teacher-forced
    metrics share each forward pass, so two cost about what one does."""
    spec = intervention if isinstance(intervention, Intervention) else Intervention(intervention)
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if not metrics or len(set(metrics)) != len(metrics):
        raise TasklensError(f"Give one or more distinct metric names, got {metrics}")
    for metric in metrics:
        METRICS.get(metric)
    sets = [sets] if isinstance(sets, NeuronSet) else list(sets)
    tasks = [check_task(t) for t in ([tasks] if isinstance(tasks, Task) else tasks)]
    if not tasks:
        raise TasklensError("evaluation_matrix got no tasks; give at least one Task to evaluate the sets on")
    if not isinstance(n_controls, int) or isinstance(n_controls, bool) or n_controls < 0:
        raise TasklensError(f"n_controls must be a whole number >= 0, got {n_controls!r}")
    if stop_after is not None and (isinstance(stop_after, bool) or not 1 <= stop_after <= max(n_controls, 1)):
        raise TasklensError(
            f"stop_after must be a whole number from 1 to n_controls ({n_controls}), got {stop_after!r}"
        )
    if at_stake is not None and (
        isinstance(at_stake, bool) or not isinstance(at_stake, int) or at_stake < n_controls
    ):
        raise TasklensError(
            f"at_stake must be a whole number of random sets, at least n_controls ({n_controls}); "
            f"got {at_stake!r}"
        )
    alpha = check_alpha(alpha)
    for what, names in (("sets", [s.name for s in sets]), ("tasks", [t.name for t in tasks])):
        if len(set(names)) != len(names):
            raise TasklensError(f"The {what} need distinct names, got {names}")

    check_choice("controls_on", controls_on, ("all", "own"))
    spec = spec.prepared(model)
    for neurons in sets:
        spec.on(neurons).check(model)

    prompt_rows: dict[str, list[dict[str, Any]]] = {m: [] for m in metrics}

    floor_rows: dict[str, list[dict[str, Any]]] = {m: [] for m in metrics}
    control_prompt_rows: dict[str, list[dict[str, Any]]] = {m: [] for m in metrics}

    def measure(
        only: str | None = None, rows: dict[str, list] | None = None, **labels: Any
    ) -> dict[str, dict[str, float]]:
        means: dict[str, dict[str, float]] = {m: {} for m in metrics}
        for task in tasks:
            if only is not None and task.name != only:
                continue
            per_prompt = evaluate_metrics(model, task, metrics, batch_size, spec.runs_in_pieces).double()
            for j, metric in enumerate(metrics):
                means[metric][task.name] = float(per_prompt[:, j].mean())
                if rows is not None:
                    rows[metric].extend(
                        {**labels, "task": task.name, "prompt": i, "value": float(v)}
                        for i, v in enumerate(per_prompt[:, j].tolist())
                    )
        return means

    baselines = {m: pd.Series(v, dtype=float) for m, v in measure(rows=prompt_rows, set=BASELINE).items()}
    if measure_floor:
        for task in tasks:
            if len(task) > 1:
                per_prompt = evaluate_metrics(model, _deranged(task, seed), metrics, batch_size)
                for j, metric in enumerate(metrics):
                    floor_rows[metric].extend(
                        {"task": task.name, "prompt": i, "value": float(v)}
                        for i, v in enumerate(per_prompt[:, j].double().tolist())
                    )
    columns = list(baselines[metrics[0]].index)
    values: dict[str, dict] = {m: {} for m in metrics}
    controls: dict[str, dict] = {m: {} for m in metrics}
    spread: dict[str, dict] = {m: {} for m in metrics}
    control_rows: dict[str, list[dict[str, Any]]] = {m: [] for m in metrics}

    def results(names: list[str]) -> dict[str, EvaluationResult]:
        """The results so far for the sets ``names``."""

        def table(data: dict) -> pd.DataFrame:
            return pd.DataFrame.from_dict(data, orient="index", columns=columns, dtype=float).reindex(names)

        template = {k: v for k, v in spec.to_dict().items() if k != "neurons"}
        chosen = [s for s in sets if s.name in names]
        return {
            metric: EvaluationResult(
                metric=metric,
                intervention=template,
                baseline=baselines[metric],
                values=table(values[metric]),
                controls=table(controls[metric]),
                controls_std=table(spread[metric]),
                sizes=pd.Series({s.name: len(s) for s in chosen}, dtype=int),
                n_controls=n_controls if at_stake is None else at_stake,
                seed=seed,
                settled=None if at_stake is None else n_controls,
                stop_after=stop_after,
                sets={s.name: s.summary() for s in chosen},
                prompt_values=pd.DataFrame(prompt_rows[metric], columns=PROMPT_COLUMNS),
                control_values=pd.DataFrame(control_rows[metric], columns=CONTROL_COLUMNS),
                control_prompt_values=pd.DataFrame(
                    control_prompt_rows[metric], columns=CONTROL_PROMPT_COLUMNS
                ),
                floor_values=pd.DataFrame(floor_rows[metric], columns=FLOOR_COLUMNS),
            )
            for metric in metrics
        }

    for neurons in sets:
        if progress:
            progress(neurons.name)
        with spec.on(neurons).apply(model):
            for metric, row in measure(rows=prompt_rows, set=neurons.name).items():
                values[metric][neurons.name] = row
        runs: dict[str, list] = {m: [] for m in metrics}
        only = neurons.name if controls_on == "own" else None

        def draw(
            i: int, neurons: NeuronSet = neurons, only: str | None = only, runs: dict = runs
        ) -> list[float]:
            """Evaluate random set ``i``; its own-task drop per metric (more negative: lower)."""
            with spec.on(random_like(neurons, seed + i)).apply(model):
                run = measure(only, control_prompt_rows, set=neurons.name, run=i)
            for metric, row in run.items():
                runs[metric].append(row)
                control_rows[metric].extend(
                    {"set": neurons.name, "run": i, "task": t, "value": v} for t, v in row.items()
                )
            return [-run[m].get(neurons.name, np.nan) for m in metrics]

        most = n_controls
        if at_stake is not None and neurons.name in columns:
            cells = [r._cells()[neurons.name] for r in results([neurons.name]).values()]
            most = at_stake if any(verdict_at_stake(neurons.name, c, alpha) for c in cells) else n_controls
        if stop_after is not None and most and neurons.name in columns:
            own = [-values[m][neurons.name][neurons.name] for m in metrics]
            sequential_draws(own, draw, stop_after, most)  # a random set as low as the set: exceedance
        else:
            for i in range(most):
                draw(i)
        for metric in metrics:
            frame = pd.DataFrame(runs[metric], columns=columns, dtype=float)
            empty = pd.Series(float("nan"), columns)
            controls[metric][neurons.name] = frame.mean() if len(frame) else empty
            spread[metric][neurons.name] = frame.std(ddof=0) if len(frame) else empty
    return results([s.name for s in sets])
