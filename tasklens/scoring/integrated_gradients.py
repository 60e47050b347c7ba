"""Integrated gradients over neurons (Dai et al. 2022, knowledge neurons).

For one layer at a time, the layer's activation vector at the target position
(the last prompt token) is scaled from a baseline to its value, the rest of the
network running normally, and the gradient of the gold token's *probability*
is integrated:

    IG[l, j] = (a[l, j] - b[l, j]) / m * sum_k dP(b + alpha_k (a - b)) / da[l, j]

Speed: in a causal model, scaling only the target position leaves every earlier
position unchanged, so the prompt prefix is run once and its key-value cache is
shared by all L x m scaled copies of the target token, which run as one batch of
single-token forward passes with one backward pass. Prompts of different lengths share a
pass: right-padded, each copy attends to its own prompt's positions only, at its own
position id. Without a usable cache (a
``HookedTransformer``, or see `tasklens.models.cache_filled`) the copies rerun whole
prompts, in passes of at most ``max_tokens`` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from tasklens.data.neurons import NeuronScores
from tasklens.errors import TasklensError, check_choice
from tasklens.models import DEFAULT_UNIT, ModelInfo, cache_filled, cached_calls, enable_kv_cache, is_bridge
from tasklens.models.hooks import owned_hooks
from tasklens.scoring.base import SCORERS, ScorerParams, make_scores
from tasklens.tasks.task import Task
from tasklens.tasks.tokenize import Batch, TokenizedTask

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
def _prefix(model, batch: Batch, names: list[str]):
    """One forward over right-padded prompts: each layer's activation at each prompt's last
    position ``[batch, layer, neuron]``, and the key-value cache of every position but the
    last (None for one-token prompts, for models without the bridge's cache and where it
    comes back empty, see `cache_filled`: those rerun the whole prompt in the integral)."""
    store: dict[str, Tensor] = {}
    rows, last = torch.arange(batch.size), batch.lengths - 1

    def keep(act: Tensor, hook, name: str) -> None:
        store[name] = act[rows.to(act.device), last.to(act.device)].detach()

    hooks = [(n, lambda act, hook, n=n: keep(act, hook, n)) for n in names]
    tokens, width = batch.tokens.to(model.cfg.device), batch.tokens.shape[1]
    cached = is_bridge(model) and width > 1
    enable_kv_cache(model)
    with owned_hooks(model, hooks), cached_calls():
        if cached:
            padded = bool((last != width - 1).any())
            mask = {"attention_mask": batch.attention_mask.to(model.cfg.device)} if padded else {}
            try:
                _, kv = model(tokens, return_type="logits_and_cache", **mask)
            except TypeError:  # a bridge that takes no attention mask: rerun whole prompts
                model(tokens, return_type=None)
                return torch.stack([store[n] for n in names], dim=1), None
            if cache_filled(model, kv, width):
                kv.crop(-1)  # drop the last position: the integral recomputes it
            else:
                kv = None
        else:
            model(tokens, return_type=None)
            kv = None
    return torch.stack([store[n] for n in names], dim=1), kv


@SCORERS.register()
@dataclass
class IntegratedGradients(ScorerParams):
    """Knowledge-neuron integrated gradients at the last prompt token.

    Args:
        steps: m, the number of interpolation points (20 in Dai et al.).
        rule: ``"riemann_left"`` (alpha_k = k/m, k = 0..m-1, as in the paper),
            ``"riemann_right"`` or ``"riemann_trapezoid"`` (the standard rule on m
            points, weights 1/(m-1) with halved ends; captum's method of that name
            weights them 1/m).
        baseline: ``"zero"`` (default) or ``"mean"`` (the activation's mean at the
            target position over the task's prompts).
        max_tokens: tokens per forward pass of the scaled copies (n_layers x ``steps``
            per prompt: one token each on the key-value cache, whole prompts without a
            usable cache); bounds memory, not the result.

    Scores are summed over prompts; `per_prompt` gives ``[n_prompts, n_layers, d_mlp]``
    for the knowledge-neuron refinement (`tasklens.selection.knowledge_neurons`).
    """

    steps: int = 20
    rule: str = "riemann_left"
    baseline: str = "zero"
    max_tokens: int = 2048
    name: ClassVar[str] = "integrated_gradients"

    def __post_init__(self) -> None:
        alphas_and_weights(self.steps, self.rule)
        check_choice("baseline", self.baseline, ("zero", "mean"))
        if self.max_tokens < 1:
            raise TasklensError(f"max_tokens must be at least 1, got {self.max_tokens}")

    def per_prompt(self, model, task: Task, *, unit: str = DEFAULT_UNIT, batch_size: int = 16) -> Tensor:
        """IG per prompt: ``[n_prompts, n_layers, d_mlp]`` (arguments as in `attribute`).

        Example:
            >>> import tasklens
            >>> from tasklens.scoring import IntegratedGradients
            >>> model = tasklens.load_model("organism")
            >>> task = tasklens.load_builtin("continent_of", "detection").head(2)
            >>> IntegratedGradients(steps=2).per_prompt(model, task).shape
            torch.Size([2, 4, 512])
        """
        info = ModelInfo.of(model)
        names = info.hook_names(unit)
        tokenized = TokenizedTask.for_model(task, model)
        alphas, weights = alphas_and_weights(self.steps, self.rule)
        out = torch.zeros(len(task), info.n_layers, info.d_mlp, dtype=torch.float64)
        # prompts sorted by length, right-padded: a padded cache serves prompts of any length
        copies = info.n_layers * len(alphas)  # scaled copies per prompt
        per_pass = max(1, min(batch_size, self.max_tokens // copies))
        batches = list(tokenized.batches(per_pass, with_answers=False, sort=True))
        base = torch.zeros(info.n_layers, info.d_mlp)
        if self.baseline == "mean":  # needs every prompt's activation before any integral
            base = torch.cat([_prefix(model, batch, names)[0] for batch in batches]).float().cpu().mean(0)
        for batch in batches:
            acts, kv = _prefix(model, batch, names)
            gold = [tokenized.answer_ids[i][0] for i in batch.indices]
            out[batch.indices] = self._batch(
                model, batch, gold, names, acts.float().cpu(), kv, base, alphas, weights
            )
        return out.float()

    def _batch(self, model, batch, gold, names, acts: Tensor, kv, base: Tensor, alphas, weights) -> Tensor:
        device = model.cfg.device
        n_layers, m, size = len(names), len(alphas), batch.size
        tokens, width = batch.tokens.to(device), batch.tokens.shape[1]
        last, gold = (batch.lengths - 1).to(device), torch.tensor(gold, device=device)
        copies = n_layers * m  # per prompt: row = b * copies + layer * m + k
        diff = (acts - base).to(device)  # [batch, layer, neuron]
        rows = torch.arange(size * copies, device=device)
        b_of, layer_of, k_of = rows // copies, rows % copies // m, rows % m
        if kv is not None:  # single-token copies on the shared prefix: one pass holds them all
            kv.batch_repeat_interleave(copies)
            chunks = [rows]
        else:  # whole prompts: as many copies per pass as fit max_tokens
            chunks = list(rows.split(max(1, self.max_tokens // width)))
        alphas, w = alphas.to(device), weights.to(device).double()
        out = torch.zeros(size, n_layers, diff.shape[-1], dtype=torch.float64, device=device)
        for chunk in chunks:
            b, layer, k = b_of[chunk], layer_of[chunk], k_of[chunk]
            leaf = (base.to(device)[layer] + alphas[k, None] * diff[b, layer]).requires_grad_(True)
            # the scaled position of each row: the one new token on the cache, else the prompt's last
            at_pos = torch.zeros_like(b) if kv is not None else last[b]
            here = torch.arange(len(chunk), device=device)

            def splice(at: int, layer=layer, leaf=leaf, at_pos=at_pos):
                mine = (layer == at).nonzero().squeeze(1)

                def hook(act: Tensor, hook) -> Tensor:
                    act = act.clone()
                    act[mine, at_pos[mine]] = leaf[mine].to(act.dtype)
                    return act

                return hook

            if kv is not None:
                inputs, kwargs = tokens[b, last[b]][:, None], {"past_key_values": kv}
                if bool((last != width - 1).any()):  # padded: each copy sees its own prefix, at its position
                    positions = torch.arange(width, device=device)
                    mask = (positions < last[b, None]) | (positions == width - 1)
                    kwargs.update(attention_mask=mask.long(), position_ids=last[b, None])
            else:
                inputs, kwargs = tokens[b], {}
            splices = [(names[at], splice(at)) for at in layer.unique().tolist()]
            with torch.enable_grad(), owned_hooks(model, splices), cached_calls():
                logits = model(inputs, return_type="logits", **kwargs)
                probs = logits[here, at_pos].softmax(-1)[here, gold[b]]
                (grad,) = torch.autograd.grad(probs.sum(), leaf)
            contribution = grad.double() * w[k, None] * diff[b, layer].double()
            out.index_put_((b, layer), contribution, accumulate=True)
        return out.cpu()

    def attribute(self, model, task: Task, *, unit: str = DEFAULT_UNIT, batch_size: int = 16) -> NeuronScores:
        """Score every MLP neuron of ``model`` by its integrated gradient on ``task``.

        Args:
            model (TransformerBridge): the model, as `tasklens.load_model` returns it.
            task (Task): the prompts and their answers; the first answer token is the gold
                token whose probability is integrated.
            unit (str, optional): the neuron activation scaled: ``"hook_post"`` (default),
                ``"hook_pre"`` or ``"hook_pre_linear"`` (gated MLPs).
            batch_size (int, optional): prompts per prefix pass, of any lengths (at most
                ``max_tokens`` // (n_layers x ``steps``): each integral runs that many copies of
                each prompt). Default: 16.

        Returns:
            NeuronScores: ``[n_layers, d_mlp]`` signed integrated gradients, summed over
            prompts (`per_prompt` keeps them apart).

        Example:
            >>> import tasklens
            >>> from tasklens.scoring import IntegratedGradients
            >>> model = tasklens.load_model("organism")
            >>> task = tasklens.load_builtin("continent_of", "detection").head(8)
            >>> scores = IntegratedGradients(steps=5).attribute(model, task)
            >>> scores.method, scores.shape, scores.n_prompts
            ('integrated_gradients', (4, 512), 8)
            >>> scores.params["steps"], scores.params["rule"]
            (5, 'riemann_left')
        """
        per_prompt = self.per_prompt(model, task, unit=unit, batch_size=batch_size)
        return make_scores(self, model, task, per_prompt.sum(0), unit, len(task), len(task))
