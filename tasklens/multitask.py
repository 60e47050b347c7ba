"""Selections that look at several tasks (or prompts) at once: LAPE and knowledge neurons."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from tasklens.errors import TasklensError
from tasklens.neurons import NeuronSet


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
    """
    if per_prompt.ndim != 3 or len(per_prompt) == 0:
        raise TasklensError("knowledge_neurons needs per-prompt scores [n_prompts, n_layers, d_mlp]")
    peak = per_prompt.flatten(1).max(1).values[:, None, None]
    kept = per_prompt >= fraction * peak
    share = kept.float().mean(0)
    rule = {"rule": "knowledge_neurons", "fraction": fraction, "min_share": min_share}
    return NeuronSet(share >= min_share, name, {"rule": rule})


def shared_by(sets: list[NeuronSet], min_share: float, name: str = "shared") -> NeuronSet:
    """Neurons present in at least ``min_share`` of ``sets`` (e.g. 10 % of a relation's facts)."""
    if not sets:
        raise TasklensError("shared_by needs at least one neuron set")
    counts = torch.stack([s.check_fits(sets[0].shape).mask.float() for s in sets]).mean(0)
    return NeuronSet(counts >= min_share, name, {"rule": {"rule": "shared_by", "min_share": min_share}})
