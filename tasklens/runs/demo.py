"""`tasklens demo`: locate task neurons with activation statistics and ablate them.

For each task: score every neuron on the task's detection prompts, keep the top
``percent`` %, zero-ablate the set and measure exact match on every task's
evaluation prompts, beside random sets with the same per-layer counts; each set gets the
specificity verdict (`EvaluationResult.specificity`, docs/statistics.md).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from tqdm.auto import tqdm

from tasklens.analysis.draws import Draws
from tasklens.analysis.locate import locate
from tasklens.analysis.matrix import EvaluationResult, ablation_matrix
from tasklens.analysis.verdict_table import CLI_FLAGS, VerdictTable, verdict_lines
from tasklens.data.neurons import NeuronSet
from tasklens.models import ORGANISM
from tasklens.runs.pipeline import load_model_on
from tasklens.scoring.activation import ActivationStats
from tasklens.tasks.builtin import builtin_task_names, load_builtin

#: relations with class-like answers and algorithmic tasks: in the organism these depend on a
#: small set of MLP neurons, while single-fact lookups (capital_of) are stored redundantly
DEMO_TASKS = ("continent_of", "currency_of", "larger_number")


@dataclass
class DemoResult:
    """The demo's outputs: the neuron sets and the ablation result."""

    sets: list[NeuronSet]
    result: EvaluationResult

    def table(self) -> pd.DataFrame:
        """Exact match on every task (columns) with each set off (rows), the unmodified model first."""
        return self.result.pivot()

    def verdicts(self) -> VerdictTable:
        """The specificity verdict of each set (`EvaluationResult.specificity`, compact view)."""
        return VerdictTable(self.result.specificity())

    def controls(self) -> pd.DataFrame:
        """Per set: its own task with the set off (and 95 % interval over prompts) beside random
        sets of the same per-layer counts (their mean and 2.5-97.5 percentile range), the mean
        change on the other tasks, and the specificity verdict: the share of its own task's gap
        to the floor the set removes, the other task it spares least (and how much of that
        task's gap) with the selectivity (own minus that effect), the p-value and its
        Benjamini-Hochberg adjustment over the sets, and the verdict's level."""
        own = self.result.own_and_others()
        test = self.verdicts()
        return pd.DataFrame(
            {
                "neurons": own["size"],
                "prompts": own["n_prompts"],
                "random sets": test["n_null"],
                "unmodified": own["baseline"],
                "set off": own["value"],
                "set off 95% CI": _intervals(own["value_low"], own["value_high"]),
                "random": own["baseline"] + own["control_own_change"],
                "random 95% range": _intervals(own["control_value_low"], own["control_value_high"]),
                "others change": own["others_change"],
                "own effect": test["effect"],
                "least spared": [
                    f"{c} {e:.2f}" if isinstance(c, str) and c else ""
                    for c, e in zip(test["worst"], test["worst_effect"], strict=True)
                ],
                "selectivity 95% CI": _intervals(test["selectivity_low"], test["selectivity_high"]),
                "p": test["p_value"],
                "p (BH)": test["p_adjusted"],
                "verdict": test["level"],
            }
        )

    def printout(self, width: int = 100) -> str:
        """What `tasklens demo` prints: lines at most ``width`` characters wide."""
        own = self.result.own_and_others()
        n_prompts = int(own["n_prompts"].max()) if len(own) else 0
        shown = self.controls()
        narrow = pd.DataFrame(
            {
                "neurons": shown["neurons"],
                "set off [95% CI]": [
                    f"{v:.2f} {ci}" for v, ci in zip(shown["set off"], shown["set off 95% CI"], strict=True)
                ],
                "random [range]": [
                    f"{v:.2f} {r}" for v, r in zip(shown["random"], shown["random 95% range"], strict=True)
                ],
                "random sets": shown["random sets"],
                "others change": [f"{v:+.3f}" for v in shown["others change"]],
            }
        )
        parts = [
            *textwrap.wrap(
                f"Exact match on each task's {n_prompts} held-out prompts (rows: the neurons zero-ablated)",
                width,
            ),
            "",
            self.table().to_string(float_format=lambda v: f"{v:.3f}"),
            "",
            *textwrap.wrap(
                "Each set on its own task: exact match with the set off and its 95 % interval, beside "
                "its random sets of the same per-layer counts (mean and 2.5-97.5 percentile range; "
                "how many were drawn), and the mean change on the other tasks",
                width,
            ),
            "",
            narrow.to_string(),
            "",
            *textwrap.wrap(
                "Specificity (docs/statistics.md): own effect, the share of the own task's gap to its "
                "floor the set removes [95 % interval]; selectivity, own effect minus the worst other "
                "task's",
                width,
            ),
            *verdict_lines(self.verdicts(), width, flags=CLI_FLAGS),
        ]
        return "\n".join(parts)

    def to_dict(self) -> dict:
        """Plain data for scripts (``tasklens demo --json``)."""
        return {
            "sets": {s.name: s.summary() for s in self.sets},
            "exact_match": {k: v for k, v in self.table().to_dict(orient="index").items()},
            "controls": self.controls().to_dict(orient="index"),
            "n_controls": self.result.n_controls,
            "metric": self.result.metric,
            "error_control": self.verdicts()["family"].iloc[0],
        }


def _intervals(low: pd.Series, high: pd.Series) -> list[str]:
    return [f"[{lo:.2f}, {hi:.2f}]" for lo, hi in zip(low, high, strict=True)]


def run_demo(
    model_spec: str = ORGANISM,
    tasks: Sequence[str] = DEMO_TASKS,
    percent: float = 1.0,
    statistic: str = "mean_abs",
    positions: str = "last_prompt",
    n_controls: int = 20,
    max_prompts: int = 100,
    batch_size: int = 50,
    model=None,
    progress: bool = True,
    device: str = "cpu",
    dtype: str = "float32",
) -> DemoResult:
    """Run the demo; ``model`` (a loaded bridge) overrides ``model_spec``, ``device`` and ``dtype``.

    Each task's score is its activation statistic minus the mean of the same
    statistic over every built-in task (`tasklens.selection.contrast`), so the
    selected neurons respond to that task more than to the others. Each set draws
    ``n_controls`` random sets, and up to what the page's verdicts need where its verdict is
    at stake (`tasklens.analysis.draws.Draws.for_page`: 60 for the three demo tasks), on its
    own task.
    """
    model = model if model is not None else load_model_on(model_spec, device, dtype)
    scorer = ActivationStats(statistic=statistic, positions=positions)
    pool = sorted(set(builtin_task_names()) | set(tasks))
    detection = {name: load_builtin(name, "detection").sample(max_prompts) for name in pool}
    located = locate(
        model, {name: detection[name] for name in tasks}, scorer, "top_percent", percent,
        batch_size=batch_size, contrast=detection, progress=progress,
    )  # fmt: skip
    sets = list(located.values())
    evaluation = [load_builtin(name, "evaluation").sample(max_prompts) for name in tasks]
    bar = tqdm(total=len(sets), desc="ablating", disable=not progress)
    draws = Draws.for_page(len(sets), controls=n_controls)
    result = ablation_matrix(
        model, sets, evaluation, batch_size=batch_size, progress=lambda _: bar.update(), **draws.kwargs()
    )
    bar.close()
    return DemoResult(sets, result)
