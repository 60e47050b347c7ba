"""Causal interventions on neuron sets, as context managers on TransformerLens hooks.

Inside ``with ablate(model, neurons):`` every forward pass (including each
step of greedy decoding) sees the selected neurons replaced, at every
position. Interventions nest; each removes exactly its own hooks on exit, even
when an exception is raised.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from jaxtyping import Float
from torch import Tensor

from tasklens.errors import TasklensError
from tasklens.models import DEFAULT_UNIT, ModelInfo
from tasklens.neurons import NeuronSet
from tasklens.tasks.task import Task


def _check(model, neurons: NeuronSet, unit: str) -> ModelInfo:
    info = ModelInfo.of(model)
    info.check_unit(unit)
    neurons.check_fits(info.shape)
    if len(neurons) == 0:
        raise TasklensError(f"Neuron set {neurons.name!r} is empty; select at least one neuron")
    return info


Fill = Float[Tensor, "layer neuron"] | Callable[[int, Tensor, Tensor], Tensor] | None


@contextmanager
def edit_neurons(
    model,
    neurons: NeuronSet,
    scale: float = 0.0,
    fill: Fill = None,
    unit: str = DEFAULT_UNIT,
    positions: Sequence[int] | None = None,
) -> Iterator[None]:
    """Set the selected neurons to ``scale * a + fill``.

    The one mechanism behind `ablate` (scale 0; fill 0, a mean or resampled
    values) and `amplify` (scale = factor, no fill).

    Args:
        fill: None, a ``[n_layers, d_mlp]`` tensor (e.g. task means), or a function
            ``(layer, idx, act) -> values`` returning ``act[..., idx]``-shaped values.
        positions: token positions to edit in each forward call (negative counts
            from the end: ``[-1]`` is the newest token, also during cached
            generation); default every position.
    """
    info = _check(model, neurons, unit)
    if not math.isfinite(scale):
        raise TasklensError(f"The factor must be a finite number, got {scale}")
    hooks = []
    for layer in range(info.n_layers):
        idx = neurons.mask[layer].nonzero().flatten()
        if idx.numel() == 0:
            continue

        def hook(act: Tensor, hook, layer=layer, idx=idx) -> Tensor:
            act = act.clone()
            i = idx.to(act.device)
            where = slice(None) if positions is None else torch.tensor(positions, device=act.device)
            current = act[:, where][..., i]
            new = current * scale
            if callable(fill):
                new = new + fill(layer, idx, current).to(act.device, act.dtype)
            elif fill is not None:
                new = new + fill[layer, idx].to(act.device, act.dtype)
            view = act[:, where]
            view[..., i] = new
            act[:, where] = view
            return act

        hooks.append((info.hook_name(layer, unit), hook))
    with model.hooks(fwd_hooks=hooks):
        yield


def resampler(
    model, neurons: NeuronSet, source: Task, unit: str = DEFAULT_UNIT, seed: int = 0, batch_size: int = 32
):
    """A fill function drawing each position's values from a random token of ``source``.

    The selected neurons' activations at every real token of ``source`` (prompts
    and answers) form the pool; each edited position gets one pool row, drawn
    independently with a seeded generator.
    """
    from tasklens.scoring.base import stream_activations

    info = ModelInfo.of(model)
    names = info.hook_names(unit)
    pools: list[list[Tensor]] = [[] for _ in names]
    for batch, store in stream_activations(model, source, names, batch_size):
        mask = batch.attention_mask.bool()
        for layer, name in enumerate(names):
            idx = neurons.mask[layer].nonzero().flatten()
            pools[layer].append(store[name][mask][:, idx.to(store[name].device)].cpu())
    pool = [torch.cat(p) for p in pools]
    generator = torch.Generator().manual_seed(seed)

    def fill(layer: int, idx: Tensor, current: Tensor) -> Tensor:
        draw = torch.randint(len(pool[layer]), current.shape[:-1], generator=generator)
        return pool[layer][draw]

    return fill


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
) -> Iterator[None]:
    """Ablate ``neurons``.

    Args:
        mode: ``"zero"`` (default, as in the three papers), ``"mean"`` (replace by
            ``mean``, e.g. the task mean from `ActivationStats`) or ``"resample"``
            (replace by activations drawn from random tokens of ``source``).
        positions: positions to ablate (default all, including generated tokens).
    """
    if mode == "zero":
        fill = None
    elif mode == "mean":
        if mean is None:
            raise TasklensError("Mean ablation needs mean=: the [n_layers, d_mlp] task-mean activations")
        fill = mean
    elif mode == "resample":
        if source is None:
            raise TasklensError("Resample ablation needs source=: the Task whose activations are drawn")
        fill = resampler(model, neurons, source, unit, seed)
    else:
        raise TasklensError(f"Unknown ablation mode {mode!r}; choose 'zero', 'mean' or 'resample'")
    with edit_neurons(model, neurons, 0.0, fill, unit, positions):
        yield


@contextmanager
def amplify(
    model,
    neurons: NeuronSet,
    factor: float = 2.0,
    unit: str = DEFAULT_UNIT,
    positions: Sequence[int] | None = None,
) -> Iterator[None]:
    """Multiply the selected activations by ``factor`` (2.0: the knowledge-neuron convention)."""
    with edit_neurons(model, neurons, float(factor), None, unit, positions):
        yield


__all__ = ["ablate", "amplify", "edit_neurons"]
