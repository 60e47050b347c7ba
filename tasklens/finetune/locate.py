"""Each task's neurons for fine-tuning: a scorer on its training prompts, then a selection rule.

Leng & Xiong find task neurons by gradient attribution |a * dL/da| on the task's
data and keep the top share; that is the default here, on the model as it is
before any fine-tuning (the same sets serve every experiment).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tasklens.analysis.locate import locate
from tasklens.data.neurons import NeuronSet
from tasklens.scoring import get_scorer
from tasklens.tasks.task import Task


def task_neurons(
    model,
    tasks: Mapping[str, Task],
    scorer: str = "gradient_attribution",
    rule: str = "top_percent",
    value: float = 5.0,
    n_prompts: int = 128,
    scorer_params: Mapping[str, Any] | None = None,
    batch_size: int = 32,
) -> dict[str, NeuronSet]:
    """Per task, the set selected by ``rule`` (with ``value``) from ``scorer``'s scores on a seeded
    sample of ``n_prompts`` of its prompts; each set is named after its task."""
    method = get_scorer(scorer, **dict(scorer_params or {}))
    sampled = {name: task.sample(n_prompts) for name, task in tasks.items()}
    return locate(model, sampled, method, rule, value, batch_size=batch_size)
