"""Exact per-neuron ablation (or patching): the ground truth for every estimate.

For every neuron, the metric's change when that neuron alone is replaced (by
zero, its task mean, or its activation on the corrupted prompt) at every
position. Many neurons are tested per forward pass: the batch of prompts is
repeated once per neuron, and copy c has neuron c replaced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from tasklens.errors import TasklensError
from tasklens.metrics import get_metric
from tasklens.models import DEFAULT_UNIT, ModelInfo
from tasklens.neurons import NeuronScores, NeuronSet
from tasklens.scoring.base import make_scores
from tasklens.scoring.patching import BASELINES, baseline_inputs
from tasklens.tasks.task import Task
from tasklens.tasks.tokenize import Batch


@dataclass
class ExactAblation:
    """Exact effect of replacing each neuron, one neuron at a time.

    Args:
        baseline: ``"zero"`` (default), ``"mean"`` (task mean over all tokens) or
            ``"corrupted"`` (activation on the corrupted prompt, same token length).
        metric: per-prompt metric (default ``"logprob"`` of the answer).
        absolute: sum |change| per prompt instead of the signed drop.
        max_rows: sequences per forward pass (prompts x neurons tested together).
        only: test only these neurons (the others score 0), e.g. a scorer's top candidates.
        progress: show a progress bar.

    The score is the drop ``metric(clean) - metric(replaced)`` summed over prompts.
    """

    baseline: str = "zero"
    metric: str = "logprob"
    absolute: bool = False
    max_rows: int = 512
    only: NeuronSet | None = None
    progress: bool = False
    name: ClassVar[str] = "exact_ablation"

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise TasklensError(f"Unknown baseline {self.baseline!r}; choose one of {list(BASELINES)}")
        get_metric(self.metric)

    @torch.no_grad()
    def attribute(self, model, task: Task, *, unit: str = DEFAULT_UNIT, batch_size: int = 32) -> NeuronScores:
        info = ModelInfo.of(model)
        names = info.hook_names(unit)
        metric = get_metric(self.metric)
        clean, corrupt, mean = baseline_inputs(model, task, self.baseline, unit, batch_size)
        total = torch.zeros(info.shape, dtype=torch.float64)
        device = model.cfg.device
        tested = (
            self.only.check_fits(info.shape).mask
            if self.only is not None
            else torch.ones(info.shape, dtype=bool)
        )
        per_layer = [tested[layer].nonzero().flatten() for layer in range(info.n_layers)]
        # equal-length batches: no compute is spent on padding (pairs share lengths, so batches align)
        batches = list(clean.batches(batch_size, by_length=True))
        c_batches = list(corrupt.batches(batch_size, by_length=True)) if corrupt else [None] * len(batches)
        last = info.n_layers - 1
        # the last layer's hook_post neurons act on the logits only through W_out, the final norm
        # and the unembedding: their exact effect needs no further transformer blocks
        analytic_last = unit == "hook_post"
        resid_name = f"blocks.{last}.hook_resid_post"
        bar = tqdm(total=len(batches) * int(tested.sum()), desc="exact ablation", disable=not self.progress)
        for batch, c_batch in zip(batches, c_batches, strict=True):
            tokens = batch.tokens.to(device)
            logits, cache = model.run_with_cache(tokens, names_filter=[names[last], resid_name])
            clean_metric = metric(logits, batch)
            c_acts = None
            if c_batch is not None:
                _, cache = model.run_with_cache(c_batch.tokens.to(device), names_filter=names)
                c_acts = {n: cache[n] for n in names}
            n_copies = max(1, self.max_rows // batch.size)
            for layer, name in enumerate(names):
                for start in range(0, len(per_layer[layer]), n_copies):
                    neurons = per_layer[layer][start : start + n_copies]
                    fill = None
                    if mean is not None:
                        fill = mean[layer, neurons]
                    elif c_acts is not None:
                        fill = c_acts[name][:, :, neurons]  # [batch, pos, copies]
                    if analytic_last and layer == last:
                        replaced = self._last_layer(
                            model, batch, cache, name, resid_name, neurons, fill, metric
                        )
                    else:
                        replaced = self._run_copies(model, batch, tokens, name, neurons, fill, metric)
                    change = clean_metric[:, None] - replaced  # [batch, copies]
                    change = change.abs() if self.absolute else change
                    total[layer, neurons] += change.double().sum(0).cpu()
                    bar.update(len(neurons))
        bar.close()
        n_tokens = sum(int(b.attention_mask.sum()) for b in batches)
        return make_scores(self, model, task, total, unit, len(clean), n_tokens)

    @staticmethod
    def _last_layer(model, batch, cache, name: str, resid_name: str, neurons: Tensor, fill, metric) -> Tensor:
        """Exact metric per prompt and last-layer neuron, from the final residual stream."""
        act = cache[name][:, :, neurons]  # [batch, pos, copies]
        if fill is None:
            new = torch.zeros_like(act)
        elif fill.ndim == 1:
            new = fill.to(act.dtype).expand_as(act)
        else:
            new = fill.to(act.dtype)
        w_out = model.W_out[-1][neurons.to(act.device)]  # [copies, d_model]
        resid = cache[resid_name][:, None] + (new - act).permute(0, 2, 1)[..., None] * w_out[None, :, None, :]
        logits = model.unembed(model.ln_final(resid.flatten(0, 1)))
        return metric(logits, _repeat(batch, len(neurons))).view(batch.size, len(neurons))

    @staticmethod
    def _run_copies(model, batch, tokens, name: str, neurons: Tensor, fill, metric) -> Tensor:
        """Metric per prompt and neuron with each copy of the batch replacing one neuron."""
        n_copies = len(neurons)
        copies = torch.arange(n_copies)

        def hook(act: Tensor, hook) -> Tensor:
            act = act.clone()
            view = act.view(batch.size, n_copies, *act.shape[1:])  # [batch, copies, pos, neuron]
            if fill is None:
                view[:, copies, :, neurons] = 0.0
            elif fill.ndim == 1:
                view[:, copies, :, neurons] = fill.to(act.dtype)[:, None, None]
            else:
                view[:, copies, :, neurons] = fill.permute(2, 0, 1).to(act.dtype)
            return act

        # metrics read the logits from the last prompt token on: unembed only those positions
        start = int(batch.prompt_lengths.min()) - 1

        def trim(resid: Tensor, hook) -> Tensor:
            return resid[:, start:]

        with model.hooks(fwd_hooks=[(name, hook), ("unembed.hook_in", trim)]):
            logits = model(tokens.repeat_interleave(n_copies, dim=0))
        trimmed = Batch(
            batch.tokens[:, start:], batch.prompt_lengths - start, batch.lengths - start, batch.indices
        )
        return metric(logits, _repeat(trimmed, n_copies)).view(batch.size, n_copies)


def _repeat(batch: Batch, n: int) -> Batch:
    """The batch with every row repeated ``n`` times in place (row b*n + c is copy c of row b)."""
    return Batch(
        tokens=batch.tokens.repeat_interleave(n, dim=0),
        prompt_lengths=batch.prompt_lengths.repeat_interleave(n),
        lengths=batch.lengths.repeat_interleave(n),
        indices=[i for i in batch.indices for _ in range(n)],
    )


@dataclass
class VerifiedPatching:
    """Attribution patching, with its top candidates re-scored by exact ablation.

    The linear estimate ranks all neurons in one forward and backward pass; the
    top ``candidate_percent`` % are then ablated exactly, one neuron at a time.
    Each neuron's score is the best estimate available of the same quantity (the
    drop in the metric): exact for candidates, linear for the rest.

    Args:
        candidate_percent: share of all neurons verified exactly (cost: that share
            of `ExactAblation`'s).
        baseline, metric: as in `AttributionPatching` and `ExactAblation`.
    """

    candidate_percent: float = 5.0
    baseline: str = "zero"
    metric: str = "logprob"
    name: ClassVar[str] = "verified_patching"

    def attribute(self, model, task: Task, *, unit: str = DEFAULT_UNIT, batch_size: int = 32) -> NeuronScores:
        from tasklens.scoring.patching import AttributionPatching
        from tasklens.selection import top_percent

        estimate = AttributionPatching(self.baseline, self.metric).attribute(
            model, task, unit=unit, batch_size=batch_size
        )
        candidates = top_percent(estimate, self.candidate_percent)
        exact = ExactAblation(self.baseline, self.metric, only=candidates).attribute(
            model, task, unit=unit, batch_size=batch_size
        )
        values = torch.where(candidates.mask, exact.values, estimate.values)
        return make_scores(self, model, task, values, unit, exact.n_prompts, exact.n_tokens)
