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
    """What every tasklens scorer provides (`get_params` comes with `ScorerParams` or registration)."""

    name: ClassVar[str]

    def get_params(self) -> dict[str, Any]:
        """The scorer's parameters as plain data."""
        ...

    def attribute(self, model, task: Task, *, unit: str = DEFAULT_UNIT, batch_size: int = 32) -> NeuronScores:
        """Score every MLP neuron of ``model`` for ``task``: ``[n_layers, d_mlp]``."""
        ...


def param_names(scorer_class: type) -> tuple[str, ...] | None:
    """The parameters a scorer class takes at construction and records: its dataclass fields
    (those marked ``metadata={"record": False}``, caches, left out); None for a class that is
    not a dataclass (its parameters are then whatever its instances hold)."""
    if not is_dataclass(scorer_class):
        return None
    return tuple(f.name for f in dc_fields(scorer_class) if f.init and f.metadata.get("record", True))


class ScorerParams:
    """Scikit-learn style access to a scorer's parameters, for provenance and reuse checks.

    Every built-in scorer inherits it; a scorer class registered in `SCORERS` without it
    (a plug-in written as a plain dataclass) is given `get_params` when registered.
    """

    def get_params(self) -> dict[str, Any]:
        """This scorer's parameters as plain data (what its scores record as ``params``).

        Returns:
            ``{name: value}`` for every parameter in `param_names`, with tasks by name and
            hash and tensors by shape and hash (`tasklens.data.provenance.plain`).

        Example:
            >>> from tasklens.scoring import ActivationStats
            >>> ActivationStats(statistic="std").get_params()
            {'statistic': 'std', 'positions': 'prompt'}
        """
        names = param_names(type(self))
        values = vars(self) if names is None else {name: getattr(self, name) for name in names}
        return plain(values)


class _ScorerRegistry(Registry[type]):
    """The scorer registry: a class registered without `ScorerParams.get_params` is given it."""

    def register(self, name: str | type | None = None, obj: type | None = None, *, overwrite: bool = False):
        if name is not None and not isinstance(name, str):
            name, obj = None, name
        add = super().register(name, overwrite=overwrite)

        def add_with_params(cls: type) -> type:
            registered = add(cls)
            if not callable(getattr(registered, "get_params", None)):
                registered.get_params = ScorerParams.get_params
            return registered

        return add_with_params if obj is None else add_with_params(obj)


SCORERS: Registry[type] = _ScorerRegistry("scorer")


def _params(scorer: Any) -> dict[str, Any]:
    # a scorer that was never registered (so never given get_params) is read the same way
    get_params = getattr(scorer, "get_params", None)
    return get_params() if callable(get_params) else ScorerParams.get_params(scorer)


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
        params={**_params(scorer), **extra_params},
        unit=unit,
        n_prompts=n_prompts,
        n_tokens=n_tokens,
        reduction=reduction,
        model_fingerprint=model_fingerprint(model),
    )
