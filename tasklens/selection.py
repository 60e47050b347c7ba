"""Selecting a `NeuronSet` from `NeuronScores`: the single-task selection rules.

Every rule is registered by name in `SELECTIONS` (``(scores, value) -> NeuronSet``),
so runs and the CLI can name it (``select = "top_percent"``, ``value = 1.0``);
register your own with `tasklens.register_selection`. Every top-k uses one
ordering, `tasklens.neurons.ranking` (ties broken by neuron index).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch

from tasklens.errors import TasklensError
from tasklens.neurons import NeuronScores, NeuronSet
from tasklens.registry import Registry

Selection = Callable[[NeuronScores, float], NeuronSet]  # (scores, value) -> set
SELECTIONS: Registry[Selection] = Registry("selection")


def _from_flat(scores: NeuronScores, idx: torch.Tensor, rule: dict) -> NeuronSet:
    mask = torch.zeros(scores.values.numel(), dtype=torch.bool)
    mask[idx] = True
    meta = {
        "rule": rule,
        "task": scores.task,
        "method": scores.method,
        "model": scores.model,
        "model_fingerprint": scores.model_fingerprint,
        "unit": scores.unit,
        "task_hash": scores.task_hash,
    }
    return NeuronSet(mask.view_as(scores.values), name=scores.task, meta=meta)


def finite_number(value: object, what: str) -> float | int:
    """``value`` as a Python int or float if it is a finite real number (NumPy numbers too);
    True / False and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TasklensError(
            f"{what} must be a finite number (e.g. 1.0), got {value!r} ({type(value).__name__})"
        )
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def whole_number(value: object, what: str) -> int:
    """``value`` as an int, refusing fractions (``2.0`` is 2; ``2.7`` is an error)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TasklensError(f"{what} must be a whole number, got {value!r} ({type(value).__name__})")
    if value != int(value):
        raise TasklensError(f"{what} must be a whole number, got {value}; round it yourself")
    return int(value)


@SELECTIONS.register("top_k")
def top_k(scores: NeuronScores, k: int | float) -> NeuronSet:
    """The ``k`` highest-scoring neurons over all layers (ties broken by index)."""
    k = whole_number(k, "k (the number of neurons)")
    total = scores.values.numel()
    if not 0 < k <= total:
        raise TasklensError(f"Cannot select {k} neurons: the model has {total}; choose 1..{total}")
    return _from_flat(scores, scores.ranking()[:k], {"rule": "top_k", "k": k})


@SELECTIONS.register("top_percent")
def top_percent(scores: NeuronScores, percent: int | float) -> NeuronSet:
    """The top ``percent`` % of all neurons (at least one)."""
    percent = finite_number(percent, "percent")
    if not 0 < percent <= 100:
        raise TasklensError(f"percent must be in (0, 100], got {percent}")
    k = max(1, round(scores.values.numel() * percent / 100))
    selected = top_k(scores, k)
    selected.meta["rule"] = {"rule": "top_percent", "percent": percent, "k": k}
    return selected


@SELECTIONS.register("per_layer_top_k")
def per_layer_top_k(scores: NeuronScores, k: int | float) -> NeuronSet:
    """The ``k`` highest-scoring neurons of every layer (ties broken by index)."""
    k = whole_number(k, "k (neurons per layer)")
    n_layers, width = scores.shape
    if not 0 < k <= width:
        raise TasklensError(f"Cannot select {k} neurons per layer: layers have {width}; choose 1..{width}")
    scores.ranking()  # refuses NaN
    order = scores.values.argsort(dim=1, descending=True, stable=True)[:, :k]
    idx = order + torch.arange(n_layers)[:, None] * width
    return _from_flat(scores, idx.flatten(), {"rule": "per_layer_top_k", "k": k})


@SELECTIONS.register("threshold")
def threshold(scores: NeuronScores, value: int | float) -> NeuronSet:
    """Every neuron whose score is at least ``value``."""
    value = finite_number(value, "threshold")
    scores.ranking()  # refuses NaN
    idx = (scores.values.flatten() >= value).nonzero().flatten()
    return _from_flat(scores, idx, {"rule": "threshold", "value": value})


@SELECTIONS.register("fraction_of_max")
def fraction_of_max(scores: NeuronScores, fraction: int | float) -> NeuronSet:
    """Every neuron scoring at least ``fraction`` x the maximum score (knowledge-neuron rule)."""
    fraction = finite_number(fraction, "fraction")
    if not 0 < fraction <= 1:
        raise TasklensError(f"fraction must be in (0, 1], got {fraction}")
    selected = threshold(scores, fraction * float(scores.values.max()))
    selected.meta["rule"] = {"rule": "fraction_of_max", "fraction": fraction}
    return selected


def select(scores: NeuronScores, rule: str, value: int | float) -> NeuronSet:
    """Apply the selection registered as ``rule``; the set is named after the scores' task."""
    return SELECTIONS.get(rule)(scores, value)


def random_like(neurons: NeuronSet, seed: int) -> NeuronSet:
    """A random set with the same number of neurons in every layer (the papers' control)."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros_like(neurons.mask)
    for layer, count in enumerate(neurons.counts_per_layer()):
        mask[layer, torch.randperm(mask.shape[1], generator=generator)[:count]] = True
    return NeuronSet(
        mask, f"random({neurons.name}, seed={seed})", {"control_for": neurons.name, "seed": seed}
    )


def contrast(scores: dict[str, NeuronScores]) -> dict[str, NeuronScores]:
    """Task-specific scores: each task's score minus the mean of the other tasks' scores.

    With activation statistics this ranks neurons by how much more they respond
    to a task than to the others, rather than by how active they are overall.
    """
    import dataclasses

    if len(scores) < 2:
        raise TasklensError("contrast needs scores for at least two tasks")
    shapes = {s.shape for s in scores.values()}
    if len(shapes) != 1:
        raise TasklensError(f"contrast needs scores of one model; got shapes {sorted(shapes)}")
    out = {}
    for name, own in scores.items():
        others = torch.stack([s.values for n, s in scores.items() if n != name]).mean(0)
        out[name] = dataclasses.replace(
            own,
            values=own.values - others,
            method=f"{own.method}-contrast",
            params={**own.params, "contrast_with": sorted(set(scores) - {name})},
            reduction="none",
        )
    return out
