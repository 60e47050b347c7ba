"""Selecting a `NeuronSet` from `NeuronScores`: every selection rule in one place.

Single-task rules (`top_k`, `top_percent`, `per_layer_top_k`, `threshold`,
`fraction_of_max`, `random_like`, `contrast`) and rules over several tasks at once
(`lape`, `knowledge_neurons`, `shared_by`).

Every rule is registered by name in `SELECTIONS` (``(scores, value) -> NeuronSet``),
so runs and the CLI can name it (``select = "top_percent"``, ``value = 1.0``);
register your own with `tasklens.register_selection`. Every top-k uses one
ordering, `tasklens.data.neurons.ranking` (ties broken by neuron index).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tasklens.data.neurons import NeuronScores, NeuronSet
from tasklens.data.provenance import tensor_hash
from tasklens.errors import TasklensError, check_seed
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
    True / False and strings are refused.

    Example:
        >>> import numpy as np
        >>> finite_number(np.float32(0.5), "percent"), finite_number(np.int64(3), "k")
        (0.5, 3)
        >>> finite_number(float("nan"), "percent")
        Traceback (most recent call last):
        tasklens.errors.TasklensError: percent must be a finite number (e.g. 1.0), got nan (float)
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TasklensError(
            f"{what} must be a finite number (e.g. 1.0), got {value!r} ({type(value).__name__})"
        )
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def whole_number(value: object, what: str) -> int:
    """``value`` as an int, refusing fractions (``2.0`` is 2; ``2.7`` is an error).

    Example:
        >>> whole_number(2.0, "k")
        2
        >>> whole_number(2.7, "k")
        Traceback (most recent call last):
        tasklens.errors.TasklensError: k must be a whole number, got 2.7; round it yourself
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TasklensError(f"{what} must be a whole number, got {value!r} ({type(value).__name__})")
    if value != int(value):
        raise TasklensError(f"{what} must be a whole number, got {value}; round it yourself")
    return int(value)


@SELECTIONS.register("top_k")
def top_k(scores: NeuronScores, k: int | float) -> NeuronSet:
    """The ``k`` highest-scoring neurons over all layers (ties broken by index).

    Example:
        >>> import torch
        >>> from tasklens import NeuronScores
        >>> values = torch.tensor([[0.1, 0.9, 0.3, 0.0], [0.8, 0.2, 0.7, 0.4]])  # 2 layers x 4 neurons
        >>> scores = NeuronScores(values, model="demo", task="capital_of", method="demo")
        >>> top_k(scores, 3).pairs()
        [(0, 1), (1, 0), (1, 2)]
    """
    k = whole_number(k, "k (the number of neurons)")
    total = scores.values.numel()
    if not 0 < k <= total:
        raise TasklensError(f"Cannot select {k} neurons: the model has {total}; choose 1..{total}")
    return _from_flat(scores, scores.ranking()[:k], {"rule": "top_k", "k": k})


@SELECTIONS.register("top_percent")
def top_percent(scores: NeuronScores, percent: int | float) -> NeuronSet:
    """The top ``percent`` % of all neurons (at least one).

    Example:
        >>> import torch
        >>> from tasklens import NeuronScores
        >>> values = torch.tensor([[0.1, 0.9, 0.3, 0.0], [0.8, 0.2, 0.7, 0.4]])  # 2 layers x 4 neurons
        >>> scores = NeuronScores(values, model="demo", task="capital_of", method="demo")
        >>> selected = top_percent(scores, 25)
        >>> selected.pairs(), selected.meta["rule"]
        ([(0, 1), (1, 0)], {'rule': 'top_percent', 'percent': 25, 'k': 2})
    """
    percent = finite_number(percent, "percent")
    if not 0 < percent <= 100:
        raise TasklensError(f"percent must be in (0, 100], got {percent}")
    k = max(1, round(scores.values.numel() * percent / 100))
    selected = top_k(scores, k)
    selected.meta["rule"] = {"rule": "top_percent", "percent": percent, "k": k}
    return selected


@SELECTIONS.register("per_layer_top_k")
def per_layer_top_k(scores: NeuronScores, k: int | float) -> NeuronSet:
    """The ``k`` highest-scoring neurons of every layer (ties broken by index).

    Example:
        >>> import torch
        >>> from tasklens import NeuronScores
        >>> values = torch.tensor([[0.1, 0.9, 0.3, 0.0], [0.8, 0.2, 0.7, 0.4]])  # 2 layers x 4 neurons
        >>> scores = NeuronScores(values, model="demo", task="capital_of", method="demo")
        >>> per_layer_top_k(scores, 1).pairs()
        [(0, 1), (1, 0)]
    """
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
    """Every neuron whose score is at least ``value``.

    Example:
        >>> import torch
        >>> from tasklens import NeuronScores
        >>> values = torch.tensor([[0.1, 0.9, 0.3, 0.0], [0.8, 0.2, 0.7, 0.4]])  # 2 layers x 4 neurons
        >>> scores = NeuronScores(values, model="demo", task="capital_of", method="demo")
        >>> threshold(scores, 0.5).pairs()
        [(0, 1), (1, 0), (1, 2)]
    """
    value = finite_number(value, "threshold")
    scores.ranking()  # refuses NaN
    idx = (scores.values.flatten() >= value).nonzero().flatten()
    return _from_flat(scores, idx, {"rule": "threshold", "value": value})


@SELECTIONS.register("fraction_of_max")
def fraction_of_max(scores: NeuronScores, fraction: int | float) -> NeuronSet:
    """Every neuron scoring at least ``fraction`` x the maximum score (knowledge-neuron rule).

    Example:
        >>> import torch
        >>> from tasklens import NeuronScores
        >>> values = torch.tensor([[0.1, 0.9, 0.3, 0.0], [0.8, 0.2, 0.7, 0.4]])  # 2 layers x 4 neurons
        >>> scores = NeuronScores(values, model="demo", task="capital_of", method="demo")
        >>> fraction_of_max(scores, 0.75).pairs()  # at least 0.75 x 0.9
        [(0, 1), (1, 0), (1, 2)]
    """
    fraction = finite_number(fraction, "fraction")
    if not 0 < fraction <= 1:
        raise TasklensError(f"fraction must be in (0, 1], got {fraction}")
    selected = threshold(scores, fraction * float(scores.values.max()))
    selected.meta["rule"] = {"rule": "fraction_of_max", "fraction": fraction}
    return selected


def select(scores: NeuronScores, rule: str, value: int | float) -> NeuronSet:
    """Apply the selection registered as ``rule``; the set is named after the scores' task.

    Example:
        >>> import torch
        >>> from tasklens import NeuronScores
        >>> values = torch.tensor([[0.1, 0.9, 0.3, 0.0], [0.8, 0.2, 0.7, 0.4]])  # 2 layers x 4 neurons
        >>> scores = NeuronScores(values, model="demo", task="capital_of", method="demo")
        >>> select(scores, "top_k", 2)
        NeuronSet(name='capital_of', size=2, shape=[2, 4])
    """
    return SELECTIONS.get(rule)(scores, value)


def excluding(scores: NeuronScores, exclude: NeuronSet) -> NeuronScores:
    """``scores`` with the neurons of ``exclude`` ranked below every other neuron, so a selection
    rule picks the same number of neurons from the rest (e.g. without the generic units of
    `tasklens.analysis.generic.generic_units`); remove ``exclude`` from the set it selects.

    Example:
        >>> import torch
        >>> from tasklens import NeuronScores, NeuronSet
        >>> values = torch.tensor([[0.1, 0.9, 0.3, 0.0], [0.8, 0.2, 0.7, 0.4]])
        >>> scores = NeuronScores(values, model="demo", task="capital_of", method="demo")
        >>> generic = NeuronSet.from_pairs([(0, 1)], (2, 4), "generic")
        >>> top_k(excluding(scores, generic), 2).pairs()
        [(1, 0), (1, 2)]
    """
    if tuple(exclude.shape) != tuple(scores.values.shape):
        raise TasklensError(
            f"The neurons to exclude have shape {list(exclude.shape)}, the scores "
            f"{list(scores.values.shape)}; take both from the same model"
        )
    values = scores.values.clone()
    mask = exclude.mask.to(values.device)
    if mask.any():
        values[mask] = values[~mask].min() - 1 if (~mask).any() else 0.0
    return dataclasses.replace(scores, values=values, method=f"{scores.method}, excluding {exclude.name}")


@dataclass(frozen=True)
class Strata:
    """A label per neuron (``[layer x neuron]``) that random sets are matched on within each
    layer, beside the per-layer counts: a random set draws, in every layer and stratum, as many
    neurons as the set has there.

    `by_size` bins each layer's neurons by a score (mean |activation| or gradient attribution)
    so that random sets are as large as the set's neurons, not just as many; generic units (the
    massive-activation units every task needs) form a stratum of their own, so a random set holds
    as many of them as the set does.
    """

    labels: Int[Tensor, "layer neuron"]
    description: str

    @classmethod
    def by_size(cls, scores: NeuronScores, bins: int = 10, generic: NeuronSet | None = None) -> Strata:
        """Strata of ``scores`` within each layer: ``bins`` bins of equal count by rank (ties by
        index), and ``generic`` (if given) a stratum of its own.

        Example:
            >>> from tasklens import NeuronScores
            >>> scores = NeuronScores(torch.arange(8.0).reshape(2, 4), model="demo", task="t", method="mean")
            >>> Strata.by_size(scores, bins=2).labels.tolist()
            [[0, 0, 1, 1], [0, 0, 1, 1]]
        """
        if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= scores.shape[1]:
            raise TasklensError(f"bins must be a whole number from 1 to {scores.shape[1]}, got {bins!r}")
        values = scores.values.float()
        ranks = values.argsort(dim=1, stable=True).argsort(dim=1, stable=True)
        labels = (ranks * bins) // values.shape[1]
        what = f"{bins} bins of {scores.method} per layer"
        if generic is not None:
            if tuple(generic.mask.shape) != tuple(values.shape):
                raise TasklensError(
                    f"generic units are on a {tuple(generic.mask.shape)} grid, "
                    f"the scores on {tuple(values.shape)}"
                )
            labels = torch.where(generic.mask, torch.full_like(labels, bins), labels)
            what += f", {len(generic)} generic units apart"
        return cls(labels.long(), what)

    def to_dict(self) -> dict[str, Any]:
        """What the strata are, for a result's inputs: the description and a hash of the labels."""
        return {"kind": "strata", "description": self.description, "sha256": tensor_hash(self.labels)}


def random_like(neurons: NeuronSet, seed: int, strata: Strata | None = None) -> NeuronSet:
    """A random set with the same number of neurons in every layer (the papers' control), and in
    every stratum of each layer when ``strata`` are given (`Strata`).

    Example:
        >>> from tasklens import NeuronSet
        >>> found = NeuronSet.from_pairs([(0, 1), (1, 0), (1, 2)], (2, 512), name="capital_of")
        >>> control = random_like(found, seed=0)
        >>> control.name, control.counts_per_layer()
        ('random(capital_of, seed=0)', [1, 2])
        >>> random_like(found, seed=0).pairs() == control.pairs()  # the same seed, the same set
        True
    """
    seed = check_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros_like(neurons.mask)
    if strata is None:
        for layer, count in enumerate(neurons.counts_per_layer()):
            mask[layer, torch.randperm(mask.shape[1], generator=generator)[:count]] = True
    else:
        if tuple(strata.labels.shape) != tuple(mask.shape):
            raise TasklensError(
                f"strata are on a {tuple(strata.labels.shape)} grid, the set {neurons.name!r} on "
                f"{tuple(mask.shape)}; build them from this model's scores"
            )
        for layer in range(mask.shape[0]):
            labels = strata.labels[layer]
            for label in labels[neurons.mask[layer]].unique().tolist():
                pool = torch.nonzero(labels == label).flatten()
                count = int((neurons.mask[layer] & (labels == label)).sum())
                mask[layer, pool[torch.randperm(pool.numel(), generator=generator)[:count]]] = True
    metadata = {"control_for": neurons.name, "seed": seed}
    if strata is not None:
        metadata["strata"] = strata.description
    return NeuronSet(mask, f"random({neurons.name}, seed={seed})", metadata)


def contrast(scores: dict[str, NeuronScores]) -> dict[str, NeuronScores]:
    """Task-specific scores: each task's score minus the mean of the other tasks' scores.

    With activation statistics this ranks neurons by how much more they respond
    to a task than to the others, rather than by how active they are overall.

    Example:
        >>> import torch
        >>> from tasklens import NeuronScores
        >>> def mean_activation(task, values):
        ...     return NeuronScores(torch.tensor([values]), model="demo", task=task, method="mean")
        >>> scores = {"a": mean_activation("a", [2.0, 1.0, 0.5]), "b": mean_activation("b", [1.0, 1.0, 0.0])}
        >>> specific = contrast(scores)
        >>> specific["a"].values.tolist(), specific["a"].method
        ([[1.0, 0.0, 0.5]], 'mean-contrast')
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


# --- rules over several tasks at once: LAPE, knowledge neurons, sharing ------------------
def lape(
    firing_rates: dict[str, Float[Tensor, "layer neuron"]],
    filter_quantile: float = 0.95,
    keep_fraction: float = 0.01,
    bar_quantile: float = 0.95,
) -> dict[str, NeuronSet]:
    """LAPE (Tang et al., ACL 2024): low-entropy neurons assigned to the tasks they fire for.

    Args:
        firing_rates: per task, p[l, j] = fraction of the task's tokens where the
            neuron fires (`ActivationStats("firing_rate")`).
        filter_quantile: drop neurons whose largest p is below this quantile of all p.
        keep_fraction: keep the lowest-entropy fraction of all neurons.
        bar_quantile: assign a kept neuron to every task whose p is above this
            quantile of all p (the "activation bar").

    Returns:
        One `NeuronSet` per task (a neuron may belong to several).

    Example:
        >>> import torch
        >>> rates = {  # 1 layer x 4 neurons: fires for a only, for b only, for both, never
        ...     "a": torch.tensor([[0.9, 0.1, 0.8, 0.0]]),
        ...     "b": torch.tensor([[0.1, 0.9, 0.8, 0.0]]),
        ... }
        >>> sets = lape(rates, filter_quantile=0.5, keep_fraction=0.5, bar_quantile=0.5)
        >>> sets["a"].pairs(), sets["b"].pairs()
        ([(0, 0)], [(0, 1)])
    """
    if len(firing_rates) < 2:
        raise TasklensError("LAPE compares tasks: give firing rates for at least two tasks")
    names = list(firing_rates)
    p = torch.stack([firing_rates[n].double() for n in names], dim=-1)  # [layer, neuron, task]
    flat = p.flatten()
    normalised = p / p.sum(-1, keepdim=True).clamp_min(1e-12)
    entropy = -(normalised * normalised.clamp_min(1e-12).log()).sum(-1)
    candidate = p.max(-1).values >= torch.quantile(flat, filter_quantile)
    entropy = entropy.masked_fill(~candidate, float("inf"))
    k = max(1, round(keep_fraction * entropy.numel()))
    k = min(k, int(candidate.sum()))
    kept = torch.zeros(entropy.numel(), dtype=torch.bool)
    if k:
        kept[entropy.flatten().topk(k, largest=False).indices] = True
    kept = kept.view_as(entropy)
    bar = torch.quantile(flat, bar_quantile)
    rule = {
        "rule": "lape",
        "filter_quantile": filter_quantile,
        "keep_fraction": keep_fraction,
        "bar_quantile": bar_quantile,
    }
    return {n: NeuronSet(kept & (p[..., i] > bar), n, {"rule": rule}) for i, n in enumerate(names)}


def knowledge_neurons(
    per_prompt: Float[Tensor, "prompt layer neuron"],
    fraction: float = 0.2,
    min_share: float = 0.7,
    name: str = "knowledge_neurons",
) -> NeuronSet:
    """Knowledge-neuron refinement (Dai et al.) over one fact's prompts.

    Per prompt keep neurons with IG >= ``fraction`` x that prompt's maximum; keep a
    neuron when it is kept in at least ``min_share`` of the prompts.

    Example:
        >>> import torch
        >>> per_prompt = torch.tensor([[[1.0, 0.3, 0.0]], [[0.9, 0.0, 0.5]]])  # 2 prompts, 1 layer
        >>> knowledge_neurons(per_prompt, fraction=0.2, min_share=0.7).pairs()
        [(0, 0)]

        On a model, ``per_prompt`` comes from `IntegratedGradients.per_prompt` over one
        fact's paraphrases.
    """
    if per_prompt.ndim != 3 or len(per_prompt) == 0:
        raise TasklensError("knowledge_neurons needs per-prompt scores [n_prompts, n_layers, d_mlp]")
    peak = per_prompt.flatten(1).max(1).values[:, None, None]
    kept = per_prompt >= fraction * peak
    share = kept.float().mean(0)
    rule = {"rule": "knowledge_neurons", "fraction": fraction, "min_share": min_share}
    return NeuronSet(share >= min_share, name, {"rule": rule})


def shared_by(sets: list[NeuronSet], min_share: float, name: str = "shared") -> NeuronSet:
    """Neurons present in at least ``min_share`` of ``sets`` (e.g. 10 % of a relation's facts).

    Example:
        >>> from tasklens import NeuronSet
        >>> facts = [NeuronSet.from_pairs(pairs, (2, 4)) for pairs in ([(0, 1), (1, 2)], [(0, 1)], [(1, 3)])]
        >>> shared_by(facts, min_share=0.5).pairs()
        [(0, 1)]
    """
    if not sets:
        raise TasklensError("shared_by needs at least one neuron set")
    counts = torch.stack([s.check_fits(sets[0].shape).mask.float() for s in sets]).mean(0)
    return NeuronSet(counts >= min_share, name, {"rule": {"rule": "shared_by", "min_share": min_share}})
