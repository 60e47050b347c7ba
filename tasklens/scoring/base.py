"""The scorer protocol every method implements, and the machinery they share.

A scorer is configured at construction (its method's parameters) and has one
entry point, ``attribute(model, task, unit=..., batch_size=...)``, returning
`NeuronScores`; scorers are swappable in one line, as in captum.
"""

from __future__ import annotations

from dataclasses import fields as dc_fields
from dataclasses import is_dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from torch import Tensor

from tasklens.data.neurons import NeuronScores
from tasklens.data.provenance import model_fingerprint, plain
from tasklens.models import DEFAULT_UNIT, ModelInfo
from tasklens.registry import Registry
from tasklens.tasks.task import Task


@runtime_checkable
class Scorer(Protocol):
    """What every tasklens scorer provides."""

    name: ClassVar[str]

    def attribute(self, model, task: Task, *, unit: str = DEFAULT_UNIT, batch_size: int = 32) -> NeuronScores:
        """Score every MLP neuron of ``model`` for ``task``: ``[n_layers, d_mlp]``."""
        ...


SCORERS: Registry[type] = Registry("scorer")


def scorer_params(scorer: Any) -> dict[str, Any]:
    """A scorer's parameters as plain data (for provenance); tasks appear by name and hash;
    fields marked ``metadata={"record": False}`` (caches) are left out."""
    fields = (
        {f.name: getattr(scorer, f.name) for f in dc_fields(scorer) if f.metadata.get("record", True)}
        if is_dataclass(scorer)
        else vars(scorer)
    )
    return plain(fields)


def make_scores(
    scorer: Any,
    model,
    task: Task,
    values: Tensor,
    unit: str,
    n_prompts: int,
    n_tokens: int,
    reduction: str = "sum",
    **extra_params: Any,
) -> NeuronScores:
    """Wrap a score tensor with its provenance (``extra_params`` join the scorer's parameters)."""
    return NeuronScores(
        values=values.detach().float().cpu(),
        model=ModelInfo.of(model).name,
        task=task.name,
        task_hash=task.data_hash(),
        method=scorer.name,
        params={**scorer_params(scorer), **extra_params},
        unit=unit,
        n_prompts=n_prompts,
        n_tokens=n_tokens,
        reduction=reduction,
        model_fingerprint=model_fingerprint(model),
    )
