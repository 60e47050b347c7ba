"""Causal interventions on neuron sets: one small class per kind, applied as context managers.

An `Intervention` says what to do to which neurons (a `NeuronSet`), at which unit and
positions; each kind is a frozen dataclass owning its parameters (`Zero`, `Mean`,
`Resample`, `Amplify`, `Clamp`), registered by name in `INTERVENTIONS`, so
``Intervention("amplify", neurons, factor=3.0)`` is ``Amplify(neurons, factor=3.0)``.
It is plain data: `Intervention.to_dict` records exactly what a run did (every
`EvaluationResult` keeps it) and `Intervention.from_dict` rebuilds it. ``with
intervention.apply(model):`` makes every forward pass inside the block (including each
step of greedy decoding) see the change. Interventions nest; each removes exactly its own
hooks on exit, even when an exception is raised.

A kind of your own registers like the built-in ones (`tasklens.register_intervention`)
and then works by name in Python, on the CLI (``--intervention mykind
--intervention-param k=v``) and in a run's TOML (``intervention = "mykind"`` with an
``[intervention_params]`` table, and ``plugins = ["mymodule"]``).

`ablate`, `amplify` and `clamp` are the short forms:
``with ablate(model, neurons):`` is ``with Zero(neurons).apply(model):``.

One model, one owner: TransformerLens hooks belong to the model, not to a thread, so while an
intervention's ``with`` block is open (or a scorer is reading activations) the thread that opened
it owns the model. A forward pass through the same model from another thread, or another
thread's intervention on it, raises a `TasklensError` naming the owning thread instead of
silently running through the edit. To work in parallel, load one model per thread
(`tasklens.load_model` again); within one thread interventions nest freely.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from jaxtyping import Float
from torch import Tensor

from tasklens.data.neurons import NeuronSet
from tasklens.errors import TasklensError
from tasklens.interventions.base import (
    INTERVENTIONS,
    Edit,
    FunctionKind,
    Intervention,
    edit_neurons,
    kind_class,
    register,
)
from tasklens.interventions.kinds import Amplify, Clamp, Mean, PositionMean, Resample, Zero
from tasklens.models import DEFAULT_UNIT
from tasklens.tasks.task import Task


def _positions(positions):
    """A list of positions as the tuple an `Intervention` holds; anything else as given, for the
    intervention to refuse by name."""
    if positions is None or isinstance(positions, str | bytes) or not isinstance(positions, Iterable):
        return positions
    return tuple(positions)


@contextmanager
def ablate(
    model,
    neurons: NeuronSet,
    mode: str = "zero",
    mean: Float[Tensor, "layer neuron"] | None = None,
    source: Task | None = None,
    unit: str = DEFAULT_UNIT,
    positions: Sequence[int] | None = None,
    seed: int = 0,
) -> Iterator[Intervention]:
    """Ablate ``neurons`` inside a ``with`` block.

    Args:
        mode: ``"zero"`` (default, as in the three papers), ``"mean"`` (by ``mean`` or the
            mean over ``source``) or ``"resample"`` (values of random tokens of ``source``).
        unit: as in `Intervention`.
        positions: as in `Intervention`.
        seed: ``resample``'s random seed.

    Returns:
        The `Intervention` applied (a `Zero`, `Mean` or `Resample`).

    Examples:
        >>> from tasklens import NeuronSet, load_model
        >>> from tasklens.interventions import ablate
        >>> model = load_model("organism")
        >>> neurons = NeuronSet.from_pairs([(1, 3), (1, 200)], (4, 512), "two")
        >>> with ablate(model, neurons) as spec:
        ...     _, cache = model.run_with_cache("Paris is in", names_filter="blocks.1.mlp.hook_post")
        >>> spec.label, cache["blocks.1.mlp.hook_post"][..., [3, 200]].abs().max().item()
        ('zero ablation', 0.0)
    """
    if mode == "zero":
        spec = Zero(neurons, unit, _positions(positions))
    elif mode == "mean":
        spec = Mean(neurons, unit, _positions(positions), mean=mean, source=source)
    elif mode == "resample":
        spec = Resample(neurons, unit, _positions(positions), source=source, seed=seed)
    else:
        raise TasklensError(f"Unknown ablation mode {mode!r}; choose 'zero', 'mean' or 'resample'")
    with spec.apply(model):
        yield spec


@contextmanager
def amplify(
    model,
    neurons: NeuronSet,
    factor: float = 2.0,
    unit: str = DEFAULT_UNIT,
    positions: Sequence[int] | None = None,
) -> Iterator[Intervention]:
    """Multiply the selected activations by ``factor`` (2.0: the knowledge-neuron convention).

    Returns:
        The `Amplify` applied.

    Examples:
        >>> import torch
        >>> from tasklens import NeuronSet, load_model
        >>> from tasklens.interventions import amplify
        >>> model = load_model("organism")
        >>> neurons = NeuronSet.from_pairs([(2, 5)], (4, 512), "one")
        >>> name = "blocks.2.mlp.hook_post"
        >>> _, clean = model.run_with_cache("Paris is in", names_filter=name)
        >>> with amplify(model, neurons, 2.0):
        ...     _, cache = model.run_with_cache("Paris is in", names_filter=name)
        >>> torch.allclose(cache[name][..., 5], 2 * clean[name][..., 5])
        True
    """
    with Amplify(neurons, unit, _positions(positions), factor=factor).apply(model) as spec:
        yield spec


@contextmanager
def clamp(
    model,
    neurons: NeuronSet,
    value: float,
    unit: str = DEFAULT_UNIT,
    positions: Sequence[int] | None = None,
) -> Iterator[Intervention]:
    """Set the selected activations to ``value`` (e.g. to steer generation with one neuron).

    Returns:
        The `Clamp` applied.

    Examples:
        >>> from tasklens import NeuronSet, load_model
        >>> from tasklens.interventions import clamp
        >>> model = load_model("organism")
        >>> neurons = NeuronSet.from_pairs([(0, 7)], (4, 512), "one")
        >>> with clamp(model, neurons, 3.0) as spec:
        ...     _, cache = model.run_with_cache("Paris is in", names_filter="blocks.0.mlp.hook_post")
        >>> spec.label, cache["blocks.0.mlp.hook_post"][0, :, 7].unique().tolist()
        ('clamp = 3', [3.0])
    """
    with Clamp(neurons, unit, _positions(positions), value=value).apply(model) as spec:
        yield spec


__all__ = [
    "INTERVENTIONS",
    "Amplify",
    "Clamp",
    "Edit",
    "FunctionKind",
    "Intervention",
    "Mean",
    "PositionMean",
    "Resample",
    "Zero",
    "ablate",
    "amplify",
    "clamp",
    "edit_neurons",
    "kind_class",
    "register",
]
