"""Integrated gradients over neurons (Dai et al. 2022, knowledge neurons).

For one layer at a time, the layer's activation vector at the target position
(the last prompt token) is scaled from a baseline to its value, the rest of the
network running normally, and the gradient of the gold token's *probability*
is integrated:

    IG[l, j] = (a[l, j] - b[l, j]) / m * sum_k dP(b + alpha_k (a - b)) / da[l, j]

Speed: in a causal model, scaling only the target position leaves every earlier
position unchanged, so the prompt prefix is run once and its key-value cache is
shared by all L x m scaled copies of the target token, which run as one batch of
single-token forward passes with one backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from tasklens.errors import TasklensError, check_choice
from tasklens.models import DEFAULT_UNIT, ModelInfo, cache_filled, is_bridge
from tasklens.neurons import NeuronScores
from tasklens.scoring.base import SCORERS, make_scores
from tasklens.tasks.task import Task
from tasklens.tasks.tokenize import TokenizedTask

RULES = ("riemann_left", "riemann_right", "riemann_trapezoid")


def alphas_and_weights(steps: int, rule: str) -> tuple[Tensor, Tensor]:
    """Interpolation points in [0, 1] and their quadrature weights (summing to 1)."""
    if steps < 1:
        raise TasklensError(f"steps must be at least 1, got {steps}")
    if rule == "riemann_left":
        return torch.arange(steps) / steps, torch.full((steps,), 1 / steps)
    if rule == "riemann_right":
        return torch.arange(1, steps + 1) / steps, torch.full((steps,), 1 / steps)
    if rule == "riemann_trapezoid":
        if steps < 2:
            raise TasklensError("the trapezoid rule needs steps >= 2")
        alphas = torch.linspace(0, 1, steps)
        weights = torch.full((steps,), 1 / (steps - 1))
        weights[[0, -1]] /= 2
        return alphas, weights
    raise TasklensError(f"Unknown rule {rule!r}; choose one of {list(RULES)}")


@torch.no_grad()
def _prefix(model, tokens: Tensor, names: list[str]):
    """One forward over equal-length prompts: each layer's activation at the last position
    ``[batch, layer, neuron]``, and the key-value cache of the positions before it (None for
    one-token prompts, for models without the bridge's cache and where it comes back empty,
    see `cache_filled`: those rerun the whole prompt in the integral)."""
    store: dict[str, Tensor] = {}
    hooks = [(n, lambda act, hook, n=n: store.__setitem__(n, act[:, -1].detach())) for n in names]
    cached = is_bridge(model) and tokens.shape[1] > 1
    with model.hooks(fwd_hooks=hooks):
        if cached:
            _, kv = model(tokens, return_type="logits_and_cache")
            if cache_filled(model, kv, tokens.shape[1]):
                kv.crop(-1)  # drop the last position: the integral recomputes it
            else:
                kv = None
        else:
            model(tokens, return_type=None)
            kv = None
    return torch.stack([store[n] for n in names], dim=1), kv


@SCORERS.register()
@dataclass
class IntegratedGradients:
    """Knowledge-neuron integrated gradients at the last prompt token.

    Args:
        steps: m, the number of interpolation points (20 in Dai et al.).
        rule: ``"riemann_left"`` (alpha_k = k/m, k = 0..m-1, as in the paper),
            ``"riemann_right"`` or ``"riemann_trapezoid"`` (the standard rule on m
            points, weights 1/(m-1) with halved ends; captum's method of that name
            weights them 1/m).
        baseline: ``"zero"`` (default) or ``"mean"`` (the activation's mean at the
            target position over the task's prompts).

    Scores are summed over prompts; `per_prompt` gives ``[n_prompts, n_layers, d_mlp]``
    for the knowledge-neuron refinement (`tasklens.multitask.knowledge_neurons`).
    """

    steps: int = 20
    rule: str = "riemann_left"
    baseline: str = "zero"
    name: ClassVar[str] = "integrated_gradients"

    def __post_init__(self) -> None:
        alphas_and_weights(self.steps, self.rule)
        check_choice("baseline", self.baseline, ("zero", "mean"))

    def per_prompt(self, model, task: Task, *, unit: str = DEFAULT_UNIT, batch_size: int = 16) -> Tensor:
        """IG per prompt: ``[n_prompts, n_layers, d_mlp]``."""
        info = ModelInfo.of(model)
        names = info.hook_names(unit)
        tokenized = TokenizedTask.for_model(task, model)
        alphas, weights = alphas_and_weights(self.steps, self.rule)
        device = model.cfg.device
        # clean activations at the target position, and the prompts' KV caches
        by_length: dict[int, list[int]] = {}
        for i, ids in enumerate(tokenized.prompt_ids):
            by_length.setdefault(len(ids), []).append(i)
        out = torch.zeros(len(task), info.n_layers, info.d_mlp, dtype=torch.float64)
        groups = [
            idx[start : start + batch_size]
            for _, idx in sorted(by_length.items())
            for start in range(0, len(idx), batch_size)
        ]

        def tokens_of(idx: list[int]) -> Tensor:
            return torch.tensor([tokenized.prompt_ids[i] for i in idx], device=device)

        base = torch.zeros(info.n_layers, info.d_mlp)
        if self.baseline == "mean":  # needs every prompt's activation before any integral
            base = (
                torch.cat([_prefix(model, tokens_of(idx), names)[0] for idx in groups]).float().cpu().mean(0)
            )
        for idx in groups:
            acts, kv = _prefix(model, tokens_of(idx), names)
            out[idx] = self._batch(
                model, tokenized, idx, names, acts.float().cpu(), kv, base, alphas, weights
            )
        return out.float()

    def _batch(self, model, tokenized, idx, names, acts: Tensor, kv, base: Tensor, alphas, weights) -> Tensor:
        device = model.cfg.device
        n_layers, m, batch = len(names), len(alphas), len(idx)
        tokens = torch.tensor([tokenized.prompt_ids[i] for i in idx], device=device)
        gold = torch.tensor([tokenized.answer_ids[i][0] for i in idx], device=device)
        copies = n_layers * m  # per prompt: row = layer * m + k
        if kv is not None:
            kv.batch_repeat_interleave(copies)
        diff = (acts - base).to(device)  # [batch, layer, neuron]
        leaves = [
            (base[None, layer].to(device) + alphas.to(device)[:, None, None] * diff[None, :, layer])
            .reshape(m * batch, -1)
            .clone()
            .requires_grad_(True)  # [m * batch, neuron], row = k * batch + b
            for layer in range(n_layers)
        ]
        rows = torch.arange(batch * copies, device=device).view(batch, n_layers, m)

        def splice(layer: int):
            def hook(act: Tensor, hook) -> Tensor:
                act = act.clone()
                sel = rows[:, layer, :].T.reshape(-1)  # k-major, matching the leaf's rows
                act[sel, -1] = leaves[layer].to(act.dtype)
                return act

            return hook

        # with a cache only the last token runs; without one, the whole prompt
        last = (tokens if kv is None else tokens[:, -1:]).repeat_interleave(copies, dim=0)
        with (
            torch.enable_grad(),
            model.hooks(fwd_hooks=[(n, splice(layer)) for layer, n in enumerate(names)]),
        ):
            kwargs = {"past_key_values": kv} if kv is not None else {}
            logits = model(last, return_type="logits", **kwargs)
            probs = logits[:, -1].softmax(-1)[torch.arange(len(last)), gold.repeat_interleave(copies)]
            grads = torch.autograd.grad(probs.sum(), leaves)
        w = weights.to(device).double()
        out = torch.zeros(batch, n_layers, diff.shape[-1], dtype=torch.float64)
        for layer, grad in enumerate(grads):
            integrated = (grad.double().view(m, batch, -1) * w[:, None, None]).sum(0)
            out[:, layer] = (diff[:, layer].double() * integrated).cpu()
        return out

    def attribute(self, model, task: Task, *, unit: str = DEFAULT_UNIT, batch_size: int = 16) -> NeuronScores:
        per_prompt = self.per_prompt(model, task, unit=unit, batch_size=batch_size)
        return make_scores(self, model, task, per_prompt.sum(0), unit, len(task), len(task))
