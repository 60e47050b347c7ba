"""Causal interventions on neuron sets, as context managers on TransformerLens hooks.

Inside ``with ablate(model, neurons):`` every forward pass (including each
step of greedy decoding) sees the selected neurons replaced, at every
position. Interventions nest; each removes exactly its own hooks on exit, even
when an exception is raised.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

from jaxtyping import Float
from torch import Tensor

from tasklens.errors import TasklensError
from tasklens.models import DEFAULT_UNIT, ModelInfo
from tasklens.neurons import NeuronSet


def _check(model, neurons: NeuronSet, unit: str) -> ModelInfo:
    info = ModelInfo.of(model)
    info.check_unit(unit)
    neurons.check_fits(info.shape)
    if len(neurons) == 0:
        raise TasklensError(f"Neuron set {neurons.name!r} is empty; select at least one neuron")
    return info


@contextmanager
def edit_neurons(
    model,
    neurons: NeuronSet,
    scale: float = 0.0,
    value: Float[Tensor, "layer neuron"] | None = None,
    unit: str = DEFAULT_UNIT,
) -> Iterator[None]:
    """Set the selected neurons to ``scale * a + value`` at every position.

    The one mechanism behind `ablate` (scale 0, value 0 or a mean) and `amplify`
    (scale = factor, no value).
    """
    info = _check(model, neurons, unit)
    if not math.isfinite(scale):
        raise TasklensError(f"The factor must be a finite number, got {scale}")
    hooks = []
    for layer in range(info.n_layers):
        idx = neurons.mask[layer].nonzero().flatten()
        if idx.numel() == 0:
            continue
        fill = None if value is None else value[layer, idx]

        def hook(act: Tensor, hook, idx=idx, fill=fill) -> Tensor:
            act = act.clone()
            i = idx.to(act.device)
            new = act[..., i] * scale
            if fill is not None:
                new = new + fill.to(act.device, act.dtype)
            act[..., i] = new
            return act

        hooks.append((info.hook_name(layer, unit), hook))
    with model.hooks(fwd_hooks=hooks):
        yield


@contextmanager
def ablate(
    model,
    neurons: NeuronSet,
    mode: str = "zero",
    mean: Float[Tensor, "layer neuron"] | None = None,
    unit: str = DEFAULT_UNIT,
) -> Iterator[None]:
    """Ablate ``neurons``: ``mode="zero"`` (default, as in the papers) or ``"mean"``
    (replace by ``mean``, e.g. the task mean from `ActivationStats`)."""
    if mode == "zero":
        with edit_neurons(model, neurons, 0.0, None, unit):
            yield
    elif mode == "mean":
        if mean is None:
            raise TasklensError("Mean ablation needs mean=: the [n_layers, d_mlp] task-mean activations")
        with edit_neurons(model, neurons, 0.0, mean, unit):
            yield
    else:
        raise TasklensError(f"Unknown ablation mode {mode!r}; choose 'zero' or 'mean'")


@contextmanager
def amplify(model, neurons: NeuronSet, factor: float = 2.0, unit: str = DEFAULT_UNIT) -> Iterator[None]:
    """Multiply the selected activations by ``factor`` (2.0: the knowledge-neuron convention)."""
    with edit_neurons(model, neurons, float(factor), None, unit):
        yield


__all__ = ["ablate", "amplify", "edit_neurons"]
