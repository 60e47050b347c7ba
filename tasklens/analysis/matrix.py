"""The evaluation matrix: neuron sets (and their random controls) x tasks, under an intervention.

`evaluation_matrix` returns an `EvaluationResult`: plain tables with clear
shapes (sets x tasks), the unmodified model's baseline, the random controls'
mean and spread, the metric and the intervention that produced them.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import Tensor

from tasklens import distributed
from tasklens.analysis.engine import RandomDraw, RandomSets, Sampler
from tasklens.analysis.stats import ALPHA, bootstrap_interval, mean_interval, monte_carlo_p
from tasklens.analysis.verdict import (
    MARGIN,
    TaskCells,
    against_random,
    apply_family,
    check_alpha,
    effect_interval,
    family,
    rival_test,
    specificity_verdict,
)
from tasklens.analysis.verdict import at_stake as verdict_at_stake
from tasklens.analysis.verdict_table import VerdictTable, result_repr
from tasklens.data.neurons import NeuronSet
from tasklens.data.provenance import model_fingerprint, plain
from tasklens.errors import TasklensError, check_choice, check_seed
from tasklens.evaluation.evaluate import evaluate_metrics
from tasklens.evaluation.metrics import METRICS
from tasklens.interventions import Intervention
from tasklens.io import write_json
from tasklens.selection import Strata, random_like
from tasklens.tasks.task import Task, check_task

BASELINE = "unmodified"
PROMPT_COLUMNS = ["set", "task", "prompt", "value"]
CONTROL_COLUMNS = ["set", "run", "task", "value"]
CONTROL_PROMPT_COLUMNS = ["set", "run", "task", "prompt", "value"]
FLOOR_COLUMNS = ["task", "prompt", "value"]


@dataclass
class EvaluationResult:
    """A metric on every task with each neuron set intervened on, beside random controls.

    Attributes:
        metric: the metric's name (see `tasklens.evaluation.metrics.METRICS`).
        intervention: what was done to each set (`Intervention.to_dict` without neurons).
        baseline: ``[task]`` the metric on the unmodified model.
        values: ``[set x task]`` the metric with the set intervened on.
        controls: ``[set x task]`` mean over the set's random controls (same per-layer
            counts; NaN without controls).
        controls_std: ``[set x task]`` their standard deviation (ddof 0).
        sizes: ``[set]`` neurons per set.
        n_controls: the most random controls per set (a set drawn sequentially, or not at
            stake, has fewer: `control_values`); their seeds are ``seed .. seed + n_controls - 1``.
        seed: first control seed.
        settled: the most random controls for a set not at stake (``None``: every set could draw
            ``n_controls``).
        stop_after: a set stopped drawing once this many random controls lowered its task as much
            (Besag-Clifford; ``None``: no stopping).
        sets: each set's `NeuronSet.summary`, by name.
        prompt_values: long table (``set``, ``task``, ``prompt``, ``value``) of the metric per
            prompt, the unmodified model as set ``"unmodified"``: what the intervals are
            computed from.
        control_values: long table (``set``, ``run``, ``task``, ``value``) of every random
            control's mean per task: the null distribution the tests compare with.
        control_prompt_values: long table (``set``, ``run``, ``task``, ``prompt``, ``value``) of
            every random control per prompt (empty in results saved before it was kept), for
            intervals that resample prompts and random sets together.
        floor_values: long table (``task``, ``prompt``, ``value``): the unmodified model's metric
            of each prompt scored against another prompt's answer (a derangement within the
            task), the task's no-information floor (`floor`).
    """

    metric: str
    intervention: dict[str, Any]
    baseline: pd.Series
    values: pd.DataFrame
    controls: pd.DataFrame
    controls_std: pd.DataFrame
    sizes: pd.Series
    n_controls: int = 0
    seed: int = 0
    settled: int | None = None
    stop_after: int | None = None
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    prompt_values: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PROMPT_COLUMNS))
    control_values: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CONTROL_COLUMNS))
    control_prompt_values: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=CONTROL_PROMPT_COLUMNS)
    )
    floor_values: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FLOOR_COLUMNS))
    inputs: dict[str, Any] = field(default_factory=dict)

    # --- views ------------------------------------------------------------------------
    @property
    def tasks(self) -> list[str]:
        return list(self.baseline.index)

    @property
    def set_names(self) -> list[str]:
        return list(self.values.index)

    def change(self) -> pd.DataFrame:
        """``[set x task]`` value minus the unmodified baseline."""
        return self.values - self.baseline

    def control_change(self) -> pd.DataFrame:
        """``[set x task]`` the random controls' mean minus the baseline."""
        return self.controls - self.baseline

    def relative_drop(self) -> pd.DataFrame:
        """``[task x set]`` (baseline - value) / baseline: the relation paper's acc_drop(r_i, r_j),
        rows the task evaluated, columns whose neurons are off; NaN where the baseline is 0."""
        base = self.baseline.where(self.baseline > 0)
        return ((base - self.values) / base).T

    def pivot(self, value: str = "value") -> pd.DataFrame:
        """Sets as rows (the unmodified model first for ``value``), tasks as columns.

        ``value``: ``"value"``, ``"change"``, ``"controls"`` or ``"control_change"``.
        """
        if value == "value":
            return pd.concat([self.baseline.to_frame(BASELINE).T, self.values])
        tables = {
            "change": self.change,
            "controls": lambda: self.controls,
            "control_change": self.control_change,
        }
        if value not in tables:
            raise TasklensError(f"Unknown table {value!r}; choose one of ['value', *{list(tables)}]")
        return tables[value]()

    def own_and_others(self) -> pd.DataFrame:
        """Per set named after a task: its effect on its own task against the other tasks and
        against its random controls.

        Columns: ``size``, ``n_prompts`` (own task), ``baseline`` (own task, unmodified),
        ``value`` (own task, set intervened) with ``value_low``/``value_high`` (its 95 % interval
        over prompts), ``control_value_low``/``control_value_high`` (2.5 and 97.5 percentiles of
        the random sets' own-task values), ``own_change``, ``others_change`` (mean change on the
        other tasks), ``control_own_change`` and ``control_own_std`` (random sets on the own
        task), ``control_others_change``.
        """
        names = [n for n in self.set_names if n in self.tasks]
        if not names:
            raise TasklensError(
                f"own_and_others needs sets named after tasks; sets {self.set_names}, tasks {self.tasks}"
            )
        change, control = self.change(), self.control_change()
        counts = self.n_prompts() if not self.prompt_values.empty else None
        rows = []
        for n in names:
            others = [t for t in self.tasks if t != n]
            low, high = (
                mean_interval(self._prompts(n, n)) if counts is not None else (float("nan"), float("nan"))
            )
            runs = self._control_runs(n, n)["value"]
            rows.append(
                dict(
                    set=n,
                    size=int(self.sizes[n]),
                    n_prompts=int(counts[n]) if counts is not None else 0,
                    baseline=float(self.baseline[n]),
                    value=float(self.values.loc[n, n]),
                    value_low=low,
                    value_high=high,
                    control_value_low=float(runs.quantile(ALPHA / 2)) if len(runs) else float("nan"),
                    control_value_high=float(runs.quantile(1 - ALPHA / 2)) if len(runs) else float("nan"),
                    own_change=float(change.loc[n, n]),
                    others_change=float(change.loc[n, others].mean()) if others else float("nan"),
                    control_own_change=float(control.loc[n, n]),
                    control_own_std=float(self.controls_std.loc[n, n]),
                    control_others_change=float(control.loc[n, others].mean()) if others else float("nan"),
                )
            )
        return pd.DataFrame(rows).set_index("set")

    # --- uncertainty ---------------------------------------------------------------------
    def _prompts(self, name: str, task: str) -> np.ndarray:
        rows = self.prompt_values
        picked = rows[(rows["set"] == name) & (rows["task"] == task)].sort_values("prompt")
        return picked["value"].to_numpy(dtype=float)

    def _control_runs(self, name: str, task: str | None = None) -> pd.DataFrame:
        """The rows of `control_values` for the random sets of ``name`` (on ``task`` only, if given)."""
        runs = self.control_values
        keep = runs["set"] == name
        if task is not None:
            keep &= runs["task"] == task
        return runs[keep]

    def _require_prompts(self) -> None:
        if self.prompt_values.empty:
            raise TasklensError(
                "This result holds no per-prompt values (saved by an older tasklens); re-run the evaluation"
            )

    def n_prompts(self) -> pd.Series:
        """``[task]`` the number of prompts each task was evaluated on."""
        return pd.Series({t: len(self._prompts(BASELINE, t)) for t in self.tasks}, dtype=int)

    def _changes(self, name: str, task: str) -> np.ndarray:
        """Per-prompt change (set on minus unmodified), paired by prompt."""
        return self._prompts(name, task) - self._prompts(BASELINE, task)

    def intervals(self, value: str = "value", alpha: float = ALPHA) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``(low, high)`` tables (sets x tasks; the unmodified model first for ``"value"``) of the
        ``1 - alpha`` interval over prompts: Wilson for a 0/1 metric's accuracy, a bootstrap of the
        mean otherwise; for ``"change"`` a bootstrap of the paired per-prompt changes.

        Example:
            >>> import tasklens
            >>> from tasklens.selection import top_k
            >>> model = tasklens.load_model("organism")
            >>> task = tasklens.load_builtin("continent_of", "evaluation").head(20)
            >>> scores = tasklens.scoring.ActivationStats().attribute(model, task)
            >>> result = evaluation_matrix(model, [top_k(scores, 20).renamed("continent_of")], [task], 2)
            >>> low, high = result.intervals()
            >>> bool(low.loc["unmodified", "continent_of"] <= result.baseline["continent_of"])
            True
        """
        check_choice("interval of", value, ("value", "change"))
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
            raise TasklensError(f"alpha must be a number in (0, 1) (0.05: a 95 % interval), got {alpha!r}")
        self._require_prompts()
        names = ([BASELINE] if value == "value" else []) + self.set_names
        low = pd.DataFrame(index=names, columns=self.tasks, dtype=float)
        high = low.copy()
        unmeasured = []
        for name in names:
            for task in self.tasks:
                values = self._prompts(name, task) if value == "value" else self._changes(name, task)
                if not np.isfinite(values).all():  # an interval over the other prompts would claim too much
                    unmeasured.append(f"{name} on {task} ({int((~np.isfinite(values)).sum())} prompts)")
                    low.loc[name, task], high.loc[name, task] = np.nan, np.nan
                    continue
                fn = mean_interval if value == "value" else bootstrap_interval
                low.loc[name, task], high.loc[name, task] = fn(values, alpha)
        if unmeasured:
            import warnings

            from tasklens.errors import TasklensWarning

            warnings.warn(
                f"No interval (NaN) where the metric is NaN or infinite on some prompts: "
                f"{'; '.join(unmeasured[:3])}{' ...' if len(unmeasured) > 3 else ''}",
                TasklensWarning,
                stacklevel=2,
            )
        return low, high

    def floor(self) -> pd.Series:
        """``[task]`` each task's no-information floor: the mean of `floor_values` where measured,
        else 0 for a metric whose values lie in [0, 1] (exact match, probabilities), else NaN
        (the specificity verdict is then "not tested" on that task)."""
        measured = self.floor_values.groupby("task")["value"].mean() if len(self.floor_values) else {}
        values = self.prompt_values["value"].to_numpy(dtype=float)
        bounded = bool(values.size) and bool(((values >= 0) & (values <= 1)).all())
        return pd.Series(
            {t: float(measured[t]) if t in measured else (0.0 if bounded else np.nan) for t in self.tasks},
            dtype=float,
        )

    def _cells(self) -> dict[str, dict[str, TaskCells]]:
        """Per set, per task: its `TaskCells` (per-prompt values in prompt order)."""
        self._require_prompts()
        prompts = _arrays(self.prompt_values, ["set", "task", "prompt"])
        if len(self.control_prompt_values):
            runs = _arrays(self.control_prompt_values, ["set", "task", "run", "prompt"], by_run=True)
        else:
            means = _arrays(self.control_values.dropna(), ["set", "task", "run"])
            runs = {k: v[:, None] for k, v in means.items()}
        floor = self.floor()
        measured = _arrays(self.floor_values.assign(set=""), ["set", "task", "prompt"])
        floors = {t: measured.get(("", t), np.array([floor[t]])) for t in self.tasks}
        empty = np.zeros(0)
        return {
            name: {
                task: TaskCells(
                    prompts.get((BASELINE, task), empty),
                    prompts.get((name, task), empty),
                    runs.get((name, task), np.zeros((0, 1))),
                    floors[task],
                )
                for task in self.tasks
            }
            for name in self.set_names
        }

    def _named_after_tasks(self, what: str, at_least: int = 1) -> list[str]:
        names = [n for n in self.set_names if n in self.tasks]
        if not names or len(self.tasks) < at_least:
            raise TasklensError(
                f"{what} needs sets named after tasks"
                + (f" and at least {at_least} tasks" if at_least > 1 else "")
                + f"; sets {self.set_names}, tasks {self.tasks}"
            )
        return names

    def specificity(self, alpha: float = ALPHA, correction: str = "bh", seed: int = 0) -> pd.DataFrame:
        """Per set named after a task: is it specific to that task? (`tasklens.analysis.verdict`)

        Specific means: (a) it lowers its task more than its random sets of the same per-layer
        counts (Monte Carlo p, ``p_random``); (b) it lowers its task more than every other task
        (``p_others``); (s) every other task is spared, losing at most ``spare_limit`` of its gap
        (``p_spared``; the rule is in ``margin``); all on the common scale, the fraction of the
        gap between the unmodified value and the task's no-information floor (`floor`) that the
        set removes, capped at 1 (``effect``, with ``effect_uncapped``). ``worst`` is the other
        task least spared, ``selectivity`` the own effect minus its effect, each with an
        interval. ``level`` is "specific" (``p_value``, adjusted in ``p_adjusted`` over the
        table: ``correction`` ``"bh"`` Benjamini-Hochberg or ``"holm"``, named in ``family``),
        "preferential" ((a) and (b), ``p_preferential``), "breaks everything", "not specific"
        (shown by an interval), "underpowered" (``needs`` says what would give the power) or
        "not tested"; ``verdict`` says it in words. A page reporting several tables adjusts them
        together with `tasklens.analysis.verdict.apply_family`. ``rival`` / ``p_rival``: on this
        task's prompts, the other task's set that comes closest to hurting them as much (exact
        sign test, paired by prompt; McNemar's for 0/1 values).

        Example:
            >>> import tasklens
            >>> from tasklens.selection import top_k
            >>> model = tasklens.load_model("organism")
            >>> names = ("addition", "continent_of")
            >>> tasks = [tasklens.load_builtin(n, "evaluation").head(24) for n in names]
            >>> scores = tasklens.scoring.ActivationStats().attribute(model, tasks[0])
            >>> result = evaluation_matrix(model, [top_k(scores, 50).renamed("addition")], tasks, 3)
            >>> result.specificity().loc["addition", "level"]
            'underpowered'
        """
        alpha = check_alpha(alpha)
        names = self._named_after_tasks("Specificity", at_least=2)
        cells = self._cells()
        rows = []
        for name in names:
            row = specificity_verdict(name, cells[name], alpha, seed)
            own = cells[name][name].value
            rivals = {r: cells[r][name].value for r in names if r != name and cells[r][name].value.size}
            row["rival"], row["p_rival"] = rival_test(own, rivals)
            rows.append({"set": name, "n_prompts": int(cells[name][name].base.size), **row, "margin": MARGIN})
        table, _ = apply_family(pd.DataFrame(rows).set_index("set"), correction, alpha, "this table")
        return VerdictTable(table)

    def against_random(self, alpha: float = ALPHA, correction: str = "bh") -> pd.DataFrame:
        """Per set named after a task: does it lower its own task more than its random sets?

        ``effect`` is the own task's normalised drop (see `specificity`) with its bootstrap
        interval, ``random_effect`` the random sets' mean; ``p_value`` the Monte Carlo p
        ``(b + 1) / (n + 1)`` over the ``n_null`` random sets, ``mde`` the smallest effect it
        calls significant, ``p_adjusted`` over the table (``correction``), ``verdict`` in words
        ("underpowered" when ``1 / (n + 1)`` cannot reach ``alpha``); ``decisive``, ``reason``
        and ``what`` let `tasklens.analysis.verdict.apply_family` reword it for a page.
        """
        alpha = check_alpha(alpha)
        names = self._named_after_tasks("against_random")
        cells = self._cells()
        rows = []
        for name in names:
            own = cells[name][name]
            drops = own.random_effects()
            effect = own.effect()
            interval = effect_interval(own, alpha)
            p, mde, decisive, reason = against_random(name, effect, drops, alpha, interval["effect_high"])
            rows.append(
                {
                    "set": name,
                    "n_prompts": int(own.base.size),
                    "n_null": int(drops.size),
                    "change": float(own.value.mean() - own.base.mean()) if own.base.size else np.nan,
                    **interval,
                    "p_value": p,
                    "p_floor": 1 / (drops.size + 1),
                    "mde": mde,
                    "decisive": decisive,
                    "reason": reason,
                    "what": "beyond random sets",
                }
            )
        table, _ = apply_family(pd.DataFrame(rows).set_index("set"), correction, alpha, "this table")
        return VerdictTable(table)

    def cell_tests(self, alpha: float = ALPHA, correction: str = "bh") -> pd.DataFrame:
        """Every cell (set x task): does the set move that task more than its random sets do,
        in either direction? The relation paper's interference, with improvements allowed.

        Columns: ``set``, ``task``, ``n_prompts``, ``change`` (mean per-prompt change, set on
        minus unmodified) with its bootstrap interval ``low``/``high``, ``random_change`` (mean
        of the random sets on that task), ``effect`` (the normalised drop, see `specificity`)
        with ``effect_low``/``effect_high``, ``excess`` over the random sets with
        ``excess_low``/``excess_high`` (prompts and random sets resampled together),
        ``n_null``, ``p_value`` (two-sided Monte Carlo: twice the smaller one-sided
        ``(b + 1) / (n + 1)``), ``p_adjusted`` over all cells (``correction``) and
        ``direction``: ``"lower"``, ``"higher"``, ``"as random"``, ``"underpowered"`` (the
        random sets are too few for ``2 / (n + 1)`` to reach ``alpha``) or ``"not tested"``.
        """
        alpha = check_alpha(alpha)
        cells = self._cells()
        rows = []
        for name in self.set_names:
            for task in self.tasks:
                cell = cells[name][task]
                changes = cell.value - cell.base if cell.value.size == cell.base.size else np.zeros(0)
                runs = cell.random.mean(axis=1) if cell.random.size else np.zeros(0)
                drop, drops = -changes.mean() if changes.size else np.nan, cell.base.mean() - runs
                down, up = monte_carlo_p(drop, drops), monte_carlo_p(-drop, -drops)
                low, high = bootstrap_interval(changes, alpha)
                rows.append(
                    dict(
                        set=name,
                        task=task,
                        n_prompts=int(changes.size),
                        change=-drop,
                        low=low,
                        high=high,
                        random_change=float(runs.mean() - cell.base.mean()) if runs.size else np.nan,
                        **effect_interval(cell, alpha),
                        n_null=int(runs.size),
                        p_value=float(np.minimum(1.0, 2 * np.minimum(down, up))),  # NaN stays NaN
                        lower=down < up,
                    )
                )
        frame = pd.DataFrame(rows)
        frame["p_adjusted"] = family(frame["p_value"].to_numpy(), correction, alpha).adjusted
        reachable = 2 / (frame["n_null"] + 1) < alpha
        frame["direction"] = np.select(
            [
                frame["p_adjusted"].isna(),
                frame["p_adjusted"] < alpha,
                ~reachable,
            ],
            ["not tested", np.where(frame.pop("lower"), "lower", "higher"), "underpowered"],
            "as random",
        )
        return frame

    def to_frame(self) -> pd.DataFrame:
        """Long form: one row per (set or its controls, task), with ``baseline`` and ``change``."""
        rows = [
            dict(set=BASELINE, control=False, size=0, task=t, value=v, value_std=0.0)
            for t, v in self.baseline.items()
        ]
        for name in self.set_names:
            for task in self.tasks:
                kinds = [(False, self.values, None)]
                if self.n_controls:
                    kinds.append((True, self.controls, self.controls_std))
                for control, table, spread in kinds:
                    rows.append(
                        dict(
                            set=name,
                            control=control,
                            size=int(self.sizes[name]),
                            task=task,
                            value=table.loc[name, task],
                            value_std=0.0 if spread is None else spread.loc[name, task],
                        )
                    )
        frame = pd.DataFrame(rows)
        frame["baseline"] = frame["task"].map(self.baseline)
        frame["change"] = frame["value"] - frame["baseline"]
        return frame

    # --- figures ------------------------------------------------------------------------
    def plot(self, value: str = "change"):
        """Heatmap of a `pivot` table (``change`` by default, centred on 0)."""
        from tasklens.analysis.plots import heatmap

        return heatmap(
            self.pivot(value),
            f"{self.metric} ({value}), {self.intervention_label}",
            center=value.endswith("change"),
        )

    def plot_own_vs_others(self):
        """Bars per set: own-task change, other tasks' change, and the random controls' own-task
        change with its spread (±1 sd)."""
        from tasklens.analysis.plots import effect_bars

        return effect_bars(self.own_and_others(), f"{self.metric}: {self.intervention_label}")

    @property
    def intervention_label(self) -> str:
        return Intervention.from_dict(self.intervention).label

    # --- data ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "EvaluationResult",
            "metric": self.metric,
            "intervention": self.intervention,
            "baseline": {str(k): float(v) for k, v in self.baseline.items()},
            "values": _split(self.values),
            "controls": _split(self.controls),
            "controls_std": _split(self.controls_std),
            "sizes": {str(k): int(v) for k, v in self.sizes.items()},
            "n_controls": self.n_controls,
            "seed": self.seed,
            "settled": self.settled,
            "stop_after": self.stop_after,
            "sets": self.sets,
            "prompt_values": self.prompt_values.to_dict(orient="list"),
            "control_values": self.control_values.to_dict(orient="list"),
            "control_prompt_values": self.control_prompt_values.to_dict(orient="list"),
            "floor_values": self.floor_values.to_dict(orient="list"),
            "inputs": self.inputs,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationResult:
        if data.get("kind") != "EvaluationResult":
            raise TasklensError(f"Not an EvaluationResult record (kind {data.get('kind')!r})")

        def table(key: str) -> pd.DataFrame:
            part = data[key]
            return pd.DataFrame(part["data"], index=part["index"], columns=part["columns"], dtype=float)

        return cls(
            metric=data["metric"],
            intervention=data["intervention"],
            baseline=pd.Series(data["baseline"], dtype=float),
            values=table("values"),
            controls=table("controls"),
            controls_std=table("controls_std"),
            sizes=pd.Series(data["sizes"], dtype=int),
            n_controls=int(data["n_controls"]),
            seed=int(data.get("seed", 0)),
            settled=data.get("settled"),
            stop_after=data.get("stop_after"),
            sets=data.get("sets", {}),
            prompt_values=_long(data, "prompt_values", PROMPT_COLUMNS),
            control_values=_long(data, "control_values", CONTROL_COLUMNS),
            control_prompt_values=_long(data, "control_prompt_values", CONTROL_PROMPT_COLUMNS),
            floor_values=_long(data, "floor_values", FLOOR_COLUMNS),
            inputs=data.get("inputs") or {},
        )

    def save(self, path: str | Path) -> Path:
        """Write the result as JSON (atomically)."""
        path = Path(path).with_suffix(".json")
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | Path) -> EvaluationResult:
        path = Path(path).with_suffix(".json")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise TasklensError(f"Cannot read evaluation result {str(path)!r}: {error}") from error
        return cls.from_dict(data)

    def __add__(self, other: EvaluationResult) -> EvaluationResult:
        """Both results' sets in one result: same metric, intervention, tasks, prompts (the
        unmodified model's values prompt by prompt), floor, seeds and draws of random sets, and,
        where both record them, the same `inputs`."""
        if not isinstance(other, EvaluationResult):
            return NotImplemented
        if self.tasks != other.tasks:
            raise TasklensError(
                f"Can only add evaluation results of the same tasks: {self.tasks} vs {other.tasks}"
            )
        for task in self.tasks:
            mine, theirs = self._prompts(BASELINE, task), other._prompts(BASELINE, task)
            if mine.shape != theirs.shape or not np.allclose(mine, theirs, equal_nan=True):
                raise TasklensError(
                    f"Can only add evaluation results on the same prompts; task {task!r} has "
                    f"{mine.size} prompts in one and {theirs.size} in the other (or other values)"
                )
        same = (
            self.metric == other.metric
            and self.intervention == other.intervention
            and (self.baseline - other.baseline).abs().max() < 1e-9
            and (self.n_controls, self.seed, self.settled, self.stop_after)
            == (other.n_controls, other.seed, other.settled, other.stop_after)
        )
        if not same:
            raise TasklensError(
                "Can only add evaluation results of the same metric, intervention, tasks, baseline, seed "
                "and draws of random controls (n_controls, settled, stop_after)"
            )
        if not self.floor_values.reset_index(drop=True).equals(other.floor_values.reset_index(drop=True)):
            raise TasklensError("Can only add evaluation results with the same measured floors")
        fingerprints = {r.inputs.get("fingerprint") for r in (self, other)} - {None}
        if len(fingerprints) > 1:
            raise TasklensError(
                "Can only add evaluation results of the same inputs (model, tasks, intervention, seeds, "
                "random-set draws); their fingerprints differ"
            )
        clash = set(self.set_names) & set(other.set_names)
        if clash:
            raise TasklensError(f"Both results hold sets named {sorted(clash)}; rename one")
        return EvaluationResult(
            metric=self.metric,
            intervention=self.intervention,
            baseline=self.baseline,
            values=pd.concat([self.values, other.values]),
            controls=pd.concat([self.controls, other.controls]),
            controls_std=pd.concat([self.controls_std, other.controls_std]),
            sizes=pd.concat([self.sizes, other.sizes]),
            n_controls=self.n_controls,
            seed=self.seed,
            settled=self.settled,
            stop_after=self.stop_after,
            sets={**self.sets, **other.sets},
            prompt_values=pd.concat(
                [self.prompt_values, other.prompt_values[other.prompt_values["set"] != BASELINE]],
                ignore_index=True,
            ),
            control_values=pd.concat([self.control_values, other.control_values], ignore_index=True),
            control_prompt_values=pd.concat(
                [self.control_prompt_values, other.control_prompt_values], ignore_index=True
            ),
            floor_values=self.floor_values if len(self.floor_values) else other.floor_values,
            inputs=self.inputs or other.inputs,
        )

    def __repr__(self) -> str:
        return result_repr(self)

    def _repr_html_(self) -> str:
        head = (
            f"<b>EvaluationResult</b>: {self.metric} under {self.intervention_label}, "
            f"{len(self.set_names)} sets x {len(self.tasks)} tasks, {self.n_controls} random controls per set"
        )
        try:
            summary = self.own_and_others().to_html(float_format=lambda v: f"{v:.3f}", border=0)
        except TasklensError:
            summary = ""
        table = self.pivot().to_html(float_format=lambda v: f"{v:.3f}", border=0)
        return f"<div>{head}{summary}{table}</div>"


def _arrays(frame: pd.DataFrame, order: list[str], by_run: bool = False) -> dict[tuple, np.ndarray]:
    """``frame``'s values per (set, task), sorted by the rest of ``order``; with ``by_run`` as
    ``[run x prompt]`` (every run holds the same prompts)."""
    if frame.empty:
        return {}
    ordered = frame.sort_values(order, kind="stable")
    keys = ordered[order[:2]].to_numpy()
    values = ordered["value"].to_numpy(dtype=float)
    starts = np.flatnonzero(np.r_[True, (keys[1:] != keys[:-1]).any(axis=1)])
    out = {}
    for start, stop in zip(starts, np.r_[starts[1:], len(values)], strict=True):
        part = values[start:stop]
        if by_run:
            part = part.reshape(ordered["run"].iloc[start:stop].nunique(), -1)
        out[tuple(keys[start])] = part
    return out


def _long(data: dict[str, Any], key: str, columns: list[str]) -> pd.DataFrame:
    """A saved long table, its ``value`` column numeric (JSON holds NaN as null or "nan")."""
    frame = pd.DataFrame(data.get(key) or {c: [] for c in columns})
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype(float)
    return frame


def _split(frame: pd.DataFrame) -> dict[str, list]:
    """A table as plain lists (floats kept exactly; NaN as null)."""
    return {
        "index": [str(i) for i in frame.index],
        "columns": [str(c) for c in frame.columns],
        "data": [[None if v != v else float(v) for v in row] for row in frame.to_numpy(dtype=float)],
    }


def evaluation_inputs(
    model,
    tasks: Sequence[Task],
    metric: str,
    intervention: Intervention,
    n_controls: int,
    seed: int = 0,
    controls_on: str = "all",
    measure_floor: bool = True,
    stop_after: int | None = None,
    at_stake: int | None = None,
    alpha: float = ALPHA,
    sampler: dict[str, Any] | None = None,
    precision: str = "float32",
) -> dict[str, Any]:
    """Everything an `EvaluationResult` depends on but its sets, as plain data with its
    ``fingerprint`` (SHA-256 of the rest): `evaluation_matrices` records it, and a resumed run
    keeps a saved result only when its fingerprint is the one its own inputs give.

    Example:
        >>> import tasklens
        >>> model = tasklens.load_model("organism")
        >>> task = tasklens.load_builtin("continent_of", "evaluation")
        >>> zero = Intervention("zero")
        >>> a = evaluation_inputs(model, [task.head(8)], "logprob", zero, 19)
        >>> b = evaluation_inputs(model, [task.head(12)], "logprob", zero, 19)
        >>> a["fingerprint"] == b["fingerprint"], a["tasks"][0]["n_prompts"]
        (False, 8)
    """
    spec = intervention.prepared(model)
    inputs = plain(
        {
            "model": model_fingerprint(model),
            "tasks": [t.provenance() for t in tasks],
            "metric": metric,
            "intervention": {k: v for k, v in spec.to_dict().items() if k != "neurons"},
            "seed": seed,
            "n_controls": n_controls,
            "at_stake": at_stake,
            "stop_after": stop_after,
            "alpha": alpha,
            "controls_on": controls_on,
            "measure_floor": measure_floor,
            "sampler": sampler or {"kind": "per-layer counts"},
            "precision": precision,
        }
    )
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return {**inputs, "fingerprint": digest}


def evaluation_matrix(
    model,
    sets: Sequence[NeuronSet],
    tasks: Sequence[Task],
    n_controls: int = 10,
    seed: int = 0,
    intervention: Intervention | str = "zero",
    metric: str = "exact_match",
    batch_size: int = 64,
    progress: Callable[[str], None] | None = None,
    controls_on: str = "all",
    measure_floor: bool = True,
    stop_after: int | None = None,
    at_stake: int | None = None,
    alpha: float = ALPHA,
    strata: Strata | None = None,
    *,
    precision: str = "float32",
    sets_per_forward: int | None = None,
    journal: str | Path | None = None,
    sampler: Sampler | None = None,
) -> EvaluationResult:
    """``metric`` on every task with each neuron set intervened on, beside random controls.

    Args:
        sets: the neuron sets (distinct names).
        tasks: the tasks evaluated (distinct names).
        n_controls: random sets per set with the same per-layer counts (seeds
            ``seed .. seed + n_controls - 1``), reported as mean and std, each kept
            (`EvaluationResult.control_values`) for the tests against random sets.
        intervention: an `Intervention` template (its neurons are replaced by each set)
            or a registered kind's name (``"zero"``, ``"amplify"``...).
        metric: ``exact_match`` (greedy and token-exact, one pass), another teacher-forced
            metric name (``logprob``...) or ``greedy_match`` (decoded text).
        progress: called with each set's name before it is evaluated.
        controls_on: ``"all"`` tasks, or ``"own"``: random controls only on the task named
            like the set (the others' control cells are NaN), which saves
            ``n_controls x (tasks - 1)`` evaluations per set on a large model.
        measure_floor: also evaluate the unmodified model on each task with every prompt scored
            against another prompt's answer (`EvaluationResult.floor_values`), the floor the
            specificity verdict normalises by (one extra evaluation per task).
        stop_after: sequential Monte Carlo (Besag & Clifford 1991): stop a set's random sets
            once, for every metric, this many of them lower the set's own task at least as
            much as the set does; ``n_controls`` is then the most drawn. A set that is clearly
            no better than random stops after a few draws; one whose verdict is at stake gets
            all. The Monte Carlo p-value stays valid (`tasklens.analysis.stats.monte_carlo_p`):
            a set that stops early already has ``stop_after`` exceedances, so the fixed
            ``n_controls`` test would not have rejected it either.
        at_stake: the most random sets for a set whose verdict is at stake, one that lowers its
            own task more than every other task (part (b) of the verdict at ``alpha``, on any
            metric; `tasklens.analysis.verdict.at_stake`), tested before any random set is
            drawn; the other sets, not specific whatever their random sets show, get
            ``n_controls``. ``None``: every set gets ``n_controls``. A page's correction keeps
            its level (`~tasklens.analysis.verdict.at_stake`).
        alpha: the level of that test.
        strata: random sets also matched on these strata within each layer
            (`tasklens.selection.Strata`, e.g. activation size with generic units apart);
            ``None``: on per-layer counts alone.
        precision: the random sets' forward passes in ``"float32"`` (default) or ``"bfloat16"``
            products (`tasklens.models.precision`: float32 accumulation, residual stream,
            unembedding and metrics; per-prompt values within `~tasklens.models.precision.TOLERANCE`
            of float32 on every conformance family). The baseline, the sets and the floor are
            always float32.
        sets_per_forward: random sets evaluated in one forward pass, each on its own copy of the
            batch (None: 1 on the CPU, where more is no faster, 8 on CUDA); the values are the same.
        journal: a folder that keeps every finished random set (`tasklens.analysis.engine`): run
            again with the same folder, an interrupted evaluation evaluates only the random sets
            it has not finished.
        sampler: ``(neurons, seed) -> NeuronSet``, the random set of a seed (default
            `tasklens.selection.random_like`).

    Under torchrun the random sets are shared between the ranks (`tasklens.analysis.engine`),
    and every rank's result equals one process's.

    `evaluation_matrices` measures several metrics in the same forward passes.
    """
    return evaluation_matrices(
        model, sets, tasks, (metric,), n_controls, seed, intervention, batch_size, progress, controls_on,
        measure_floor, stop_after, at_stake, alpha, strata, precision=precision,
        sets_per_forward=sets_per_forward, journal=journal, sampler=sampler,
    )[metric]  # fmt: skip


def evaluation_matrices(
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
    strata: Strata | None = None,
    *,
    precision: str = "float32",
    sets_per_forward: int | None = None,
    journal: str | Path | None = None,
    sampler: Sampler | None = None,
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
    check_seed(seed)
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
    if strata is not None:
        if sampler is not None:
            raise TasklensError("Give strata= or sampler=, not both (strata draw through random_like)")
        sampler = functools.partial(random_like, strata=strata)
    spec = spec.prepared(model)
    for neurons in sets:
        spec.on(neurons).check(model)
    engine = RandomSets(
        model, tasks, metrics, spec, batch_size=batch_size, seed=seed, precision=precision,
        sets_per_forward=sets_per_forward, journal=journal, sampler=sampler,
    )  # fmt: skip

    prompt_rows: dict[str, list[dict[str, Any]]] = {m: [] for m in metrics}
    inputs = {
        m: evaluation_inputs(
            model,
            tasks,
            m,
            spec,
            n_controls,
            seed,
            controls_on,
            measure_floor,
            stop_after,
            at_stake,
            alpha,
            strata.to_dict() if strata is not None else _sampler_name(sampler),
            precision,
        )
        for m in metrics
    }

    floor_rows: dict[str, list[dict[str, Any]]] = {m: [] for m in metrics}
    control_prompt_rows: dict[str, list[dict[str, Any]]] = {m: [] for m in metrics}

    def measure(
        only: str | None = None, rows: dict[str, list] | None = None, **labels: Any
    ) -> dict[str, dict[str, float]]:
        return record({t.name: evaluate(t) for t in tasks if only is None or t.name == only}, rows, **labels)

    def evaluate(task: Task) -> Tensor:
        # every rank evaluates the sets whole, as one process does: the random sets are what it shares
        with distributed.alone():
            return evaluate_metrics(model, task, metrics, batch_size, spec.runs_in_pieces).double()

    def record(
        evaluated: dict[str, Tensor], rows: dict[str, list] | None = None, **labels: Any
    ) -> dict[str, dict[str, float]]:
        """Each metric's mean per task of ``evaluated`` (task -> [prompt x metric]), with a row per
        prompt in ``rows``."""
        means: dict[str, dict[str, float]] = {m: {} for m in metrics}
        for name, per_prompt in evaluated.items():
            task = tasks_by_name[name]
            for j, metric in enumerate(metrics):
                means[metric][task.name] = float(per_prompt[:, j].mean())
                if rows is not None:
                    rows[metric].extend(
                        {**labels, "task": task.name, "prompt": i, "value": float(v)}
                        for i, v in enumerate(per_prompt[:, j].tolist())
                    )
        return means

    tasks_by_name = {t.name: t for t in tasks}
    baselines = {m: pd.Series(v, dtype=float) for m, v in measure(rows=prompt_rows, set=BASELINE).items()}
    if measure_floor:
        for task in tasks:
            if len(task) > 1:
                with distributed.alone():
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
                inputs=inputs[metric],
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

        def drop(draw: RandomDraw, name: str = neurons.name) -> list[float]:
            """A random set's own-task drop per metric (more negative: lower)."""
            own = draw.values.get(name)
            return [-float(own[:, j].mean()) if own is not None else np.nan for j in range(len(metrics))]

        most = n_controls
        if at_stake is not None and neurons.name in columns:
            cells = [r._cells()[neurons.name] for r in results([neurons.name]).values()]
            most = at_stake if any(verdict_at_stake(neurons.name, c, alpha) for c in cells) else n_controls
        sequential = stop_after is not None and most and neurons.name in columns
        own = [-values[m][neurons.name][neurons.name] for m in metrics] if sequential else None
        draws = engine.draws(  # sequential: a random set as low as the set is an exceedance
            neurons, most, only=only, statistic=drop if sequential else None, observed=own,
            stop_after=stop_after if sequential else None,
        )  # fmt: skip
        for draw in draws:
            run = record(draw.values, control_prompt_rows, set=neurons.name, run=draw.run)
            for metric, row in run.items():
                runs[metric].append(row)
                control_rows[metric].extend(
                    {"set": neurons.name, "run": draw.run, "task": t, "value": v} for t, v in row.items()
                )
        for metric in metrics:
            frame = pd.DataFrame(runs[metric], columns=columns, dtype=float)
            empty = pd.Series(float("nan"), columns)
            controls[metric][neurons.name] = frame.mean() if len(frame) else empty
            spread[metric][neurons.name] = frame.std(ddof=0) if len(frame) else empty
    return results([s.name for s in sets])


def _sampler_name(sampler: Sampler | None) -> dict[str, Any] | None:
    """How a result's inputs name a custom sampler of random sets (None: the default)."""
    if sampler is None:
        return None
    return {"kind": "sampler", "name": getattr(sampler, "__qualname__", None) or repr(sampler)}


def _deranged(task: Task, seed: int) -> Task:
    """``task`` with every prompt given another prompt's answer (a random cyclic derangement):
    what the model scores without the information the prompt's subject carries."""
    order = np.random.default_rng(seed).permutation(len(task))
    answers = list(task.answers)
    shuffled = answers.copy()
    for here, there in zip(order, np.roll(order, -1), strict=True):
        shuffled[here] = answers[there]
    return replace(task, answers=shuffled, split=f"{task.split}, answers deranged")


def ablation_matrix(model, sets, tasks, **kwargs) -> EvaluationResult:
    """`evaluation_matrix` under zero ablation (exact match by default)."""
    return evaluation_matrix(model, sets, tasks, intervention="zero", **kwargs)
