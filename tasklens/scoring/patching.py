"""Attribution patching (AtP) and AtP*'s GradDrop, at the level of single neurons.

Linear estimate of the effect on a metric of patching neuron n from the clean
run to a baseline (zero, the task mean, or a corrupted prompt's activation):

    AtP(n) = sum_positions (a_baseline(n) - a_clean(n)) * dMetric/da(n)|clean

tasklens reports the estimated *drop* in the metric, ``-AtP(n)``, so that
important neurons score high, the same sign as `ExactAblation`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from tasklens.data.neurons import NeuronScores
from tasklens.errors import TasklensError, TasklensWarning, check_choice
from tasklens.evaluation.metrics import get_metric
from tasklens.models import DEFAULT_UNIT, ModelInfo
from tasklens.scoring.activation import ActivationStats
from tasklens.scoring.base import SCORERS, ScorerParams, make_scores
from tasklens.scoring.gradients import forward_backward
from tasklens.tasks.task import Task
from tasklens.tasks.tokenize import Batch, TokenizedTask

BASELINES = ("zero", "mean", "corrupted")


def _detach(act: Tensor, hook) -> Tensor:
    return act.detach()


def corrupted_pairs(model, task: Task) -> tuple[TokenizedTask, TokenizedTask]:
    """Clean and corrupted prompts (with the clean answers) whose token lengths match.

    Pairs whose corrupted prompt tokenises to another length cannot be patched
    position by position and are dropped.
    """
    if task.corrupted_prompts is None:
        raise TasklensError(
            f"Task {task.name!r} has no corrupted_prompts; give them, or use baseline='zero' or 'mean'"
        )
    clean = TokenizedTask.for_model(task, model)
    corrupt_task = Task(task.name, task.corrupted_prompts, task.answers)
    corrupt = TokenizedTask.for_model(corrupt_task, model)
    keep = [i for i in range(len(task)) if len(clean.prompt_ids[i]) == len(corrupt.prompt_ids[i])]
    if keep and len(keep) < len(task):
        warnings.warn(
            f"Task {task.name!r}: {len(task) - len(keep)} of {len(task)} corrupted prompts have another "
            "number of tokens than their clean prompt and are skipped (the scores record n_dropped_pairs)",
            TasklensWarning,
            stacklevel=3,
        )
    if not keep:
        raise TasklensError(
            f"Task {task.name!r}: no corrupted prompt has the same number of tokens as its clean "
            "prompt; make them the same length, or use baseline='zero' or 'mean'"
        )
    return (
        TokenizedTask.for_model(task.subset(keep), model),
        TokenizedTask.for_model(corrupt_task.subset(keep), model),
    )


def _drop(delta: dict[str, Tensor], grads: dict[str, Tensor], names) -> Tensor:
    """Linear estimate of the metric's drop, per layer, prompt and neuron: ``[layer, batch, neuron]``."""
    return torch.stack([-(delta[n] * grads[n]).sum(1).double().cpu() for n in names])


def baseline_inputs(
    model, task: Task, baseline: str, unit: str, batch_size: int
) -> tuple[TokenizedTask, TokenizedTask | None, Tensor | None]:
    """What patching to ``baseline`` needs: the clean prompts, the corrupted ones
    (``"corrupted"``) and the task-mean activation over all tokens (``"mean"``)."""
    if baseline == "corrupted":
        clean, corrupt = corrupted_pairs(model, task)
    else:
        clean, corrupt = TokenizedTask.for_model(task, model), None
    mean = None
    if baseline == "mean":
        sums = ActivationStats("mean", "all").accumulate(
            model, task, unit=unit, batch_size=batch_size, sums=("sum",)
        )
        mean = sums.statistic("mean").float()
    return clean, corrupt, mean


@dataclass
class PatchingOptions:
    """What patching-based scorers share: the replacement, the metric, and signed or |effect|.

    Args:
        baseline: what the neuron is patched to: ``"zero"`` (default; zero
            ablation), ``"mean"`` (its mean over the task's tokens) or
            ``"corrupted"`` (its activation on the task's corrupted prompt, same
            length in tokens; other pairs are skipped with a warning).
        metric: per-prompt metric, ``"logprob"`` (default: summed log-probability of
            the answer), ``"loss"``, ``"prob"`` or any registered teacher-forced metric.
        absolute: score |effect| per prompt (summed over prompts) instead of the
            signed drop.
    """

    baseline: str = "zero"
    metric: str = "logprob"
    absolute: bool = False

    def __post_init__(self) -> None:
        check_choice("baseline", self.baseline, BASELINES)
        get_metric(self.metric)

    def _inputs(self, model, task: Task, unit: str, batch_size: int):
        """What every patching scorer starts from: the neuron hook names, the metric, the
        clean and corrupted prompts, the task mean, and a float64 total of the grid's shape."""
        info = ModelInfo.of(model)
        clean, corrupt, mean = baseline_inputs(model, task, self.baseline, unit, batch_size)
        total = torch.zeros(info.shape, dtype=torch.float64)
        return info, info.hook_names(unit), get_metric(self.metric), clean, corrupt, mean, total

    def _provenance(self, task: Task, clean: TokenizedTask) -> dict[str, int]:
        """Extra provenance: how many corrupted pairs were skipped for their token length."""
        return {"n_dropped_pairs": len(task) - len(clean)} if self.baseline == "corrupted" else {}


@SCORERS.register()
@dataclass
class AttributionPatching(PatchingOptions, ScorerParams):
    """Attribution-patching estimate of each neuron's effect on a metric.

    Args:
        baseline, metric, absolute: see `PatchingOptions`.
        graddrop: AtP*'s GradDrop: one backward per layer l with the gradient
            through layer l's residual contributions (attention and MLP outputs)
            cut; the score is the mean over those layers of |estimate|. Costs L
            extra forward+backward passes.
    """

    graddrop: bool = False
    name: ClassVar[str] = "attribution_patching"

    def _estimate(self, model, batch: Batch, names, delta: dict, fwd_hooks=()) -> Tensor:
        """The estimated drop with ``fwd_hooks`` active during the backward's forward pass."""
        _, grads, _ = forward_backward(model, batch, names, get_metric(self.metric), fwd_hooks)
        return _drop(delta, grads, names)

    def attribute(self, model, task: Task, *, unit: str = DEFAULT_UNIT, batch_size: int = 32) -> NeuronScores:
        """Estimate, for every MLP neuron of ``model``, the drop in the metric on ``task`` when
        the neuron is patched to the baseline.

        Args:
            model (TransformerBridge): the model, as `tasklens.load_model` returns it.
            task (Task): the prompts and their answers (and ``corrupted_prompts`` for
                ``baseline="corrupted"``).
            unit (str, optional): the neuron activation patched: ``"hook_post"`` (default),
                ``"hook_pre"`` or ``"hook_pre_linear"`` (gated MLPs).
            batch_size (int, optional): prompts per forward and backward pass. Default: 32.

        Returns:
            NeuronScores: ``[n_layers, d_mlp]`` estimated drops summed over prompts (signed:
            high for neurons the metric needs; |drop| with ``absolute`` or ``graddrop``).

        Example:
            >>> import tasklens
            >>> from tasklens.scoring import AttributionPatching
            >>> model = tasklens.load_model("organism")
            >>> task = tasklens.load_builtin("continent_of", "detection").head(8)
            >>> scores = AttributionPatching().attribute(model, task)
            >>> scores.method, scores.shape, scores.params["baseline"]
            ('attribution_patching', (4, 512), 'zero')
            >>> [drop > 0 for layer, neuron, drop in scores.top(3)]
            [True, True, True]
        """
        info, names, metric, clean, corrupt, mean, total = self._inputs(model, task, unit, batch_size)
        n_tokens = 0
        corrupt_batches = corrupt.batches(batch_size) if corrupt is not None else None
        for batch in clean.batches(batch_size):
            acts, grads, _ = forward_backward(model, batch, names, metric)
            mask = batch.attention_mask[..., None].to(acts[names[0]].device)
            if self.baseline == "zero":
                delta = {n: -acts[n] for n in names}
            elif self.baseline == "mean":
                delta = {n: mean[layer].to(acts[n].device) - acts[n] for layer, n in enumerate(names)}
            else:
                c_batch = next(corrupt_batches)
                c_acts, _, _ = forward_backward(model, c_batch, names, metric)
                delta = {n: c_acts[n] - acts[n] for n in names}
            delta = {n: d * mask for n, d in delta.items()}
            if self.graddrop:
                per_layer = []
                for dropped in range(info.n_layers):
                    cut = [
                        (info.residual_names(dropped)["attn_out"], _detach),
                        (info.residual_names(dropped)["mlp_out"], _detach),
                    ]
                    per_layer.append(self._estimate(model, batch, names, delta, cut).abs())
                stacked = torch.stack(per_layer)  # [dropped, layer, batch, neuron]
                # a neuron's own layer cut gives it zero gradient: average over the other layers
                own = torch.eye(info.n_layers, dtype=torch.bool)[:, :, None, None]
                stacked = stacked.masked_fill(own, 0).sum(0) / max(info.n_layers - 1, 1)
                total += stacked.sum(1)
            else:
                drop = _drop(delta, grads, names)
                total += (drop.abs() if self.absolute else drop).sum(1)
            n_tokens += int(mask.sum())
        return make_scores(
            self, model, task, total, unit, len(clean), n_tokens, **self._provenance(task, clean)
        )
