"""`tasklens demo`: locate task neurons with activation statistics and ablate them.

For each task: score every neuron on the task's detection prompts, keep the top
``percent`` %, zero-ablate the set and measure greedy exact match on every
task's evaluation prompts, beside random sets with the same per-layer counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from tqdm.auto import tqdm

from tasklens.matrix import ablation_matrix, pivot
from tasklens.models import ORGANISM, load_model
from tasklens.neurons import NeuronSet
from tasklens.organism.evaluate import sample
from tasklens.scoring.activation import ActivationStats
from tasklens.selection import contrast, top_percent
from tasklens.tasks.builtin import load_builtin

DEMO_TASKS = ("capital_of", "element_symbol", "addition", "reverse_list")


@dataclass
class DemoResult:
    """The demo's outputs: the neuron sets and the long-form ablation frame."""

    sets: list[NeuronSet]
    frame: pd.DataFrame

    def table(self) -> pd.DataFrame:
        return pivot(self.frame)


def run_demo(
    model_spec: str = ORGANISM,
    tasks: Sequence[str] = DEMO_TASKS,
    percent: float = 1.0,
    statistic: str = "mean_abs",
    positions: str = "prompt",
    n_controls: int = 3,
    max_prompts: int = 150,
    batch_size: int = 64,
    model=None,
    progress: bool = True,
) -> DemoResult:
    """Run the demo; ``model`` (a loaded bridge) overrides ``model_spec``."""
    model = model if model is not None else load_model(model_spec)
    detection = {name: sample(load_builtin(name, "detection"), max_prompts) for name in tasks}
    evaluation = [sample(load_builtin(name, "evaluation"), max_prompts) for name in tasks]
    scorer = ActivationStats(statistic=statistic, positions=positions)
    raw = {}
    for name in tqdm(tasks, desc="scoring neurons", disable=not progress):
        raw[name] = scorer.attribute(model, detection[name], batch_size=batch_size)
    sets = [top_percent(scores, percent) for scores in contrast(raw).values()]
    bar = tqdm(total=len(sets), desc="ablating", disable=not progress)
    frame = ablation_matrix(model, sets, evaluation, n_controls=n_controls, batch_size=batch_size,
                            progress=lambda _: bar.update())
    bar.close()
    return DemoResult(sets, frame)
