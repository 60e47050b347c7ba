"""Average-precision expertise (Liu et al., EMNLP 2025, relation-specific neurons).

Positives: the task's prompts; negatives: ``negative_ratio`` x as many prompts
sampled from other tasks. Each prompt scores each neuron by its mean activation
over all the prompt's tokens (BOS included); a neuron's expertise is the average
precision of that score at separating positives from negatives.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from tasklens.data.neurons import NeuronScores
from tasklens.errors import TasklensError
from tasklens.models import DEFAULT_UNIT, ModelInfo
from tasklens.models.hooks import stream_activations
from tasklens.scoring.base import SCORERS, ScorerParams, make_scores
from tasklens.tasks.task import Task


def prompt_means(model, task: Task, unit: str, batch_size: int) -> Float[Tensor, "prompt layer neuron"]:
    """Mean activation over each prompt's tokens (BOS included)."""
    info = ModelInfo.of(model)
    names = info.hook_names(unit)
    out = []
    for batch, store in stream_activations(model, task, names, batch_size, with_answers=False):
        mask = batch.position_mask("prompt")[..., None].float()
        means = [(store[n].float().cpu() * mask).sum(1) / mask.sum(1) for n in names]
        out.append(torch.stack(means, dim=1))
    return torch.cat(out)


class PromptMeans:
    """Mean activations per prompt (`prompt_means`), computed once for one model and shared.

    The relation paper scores every relation against negatives drawn from the other
    relations, so the same prompts recur across relations and across split halves; give
    one `PromptMeans` to each `AveragePrecisionExpertise` of a run to compute each
    prompt's means once (a prompt's means do not depend on the other prompts of its
    batch, up to float rounding). It knows the model by identity only: make a new one
    after changing the weights, or around hooks that change activations.
    """

    def __init__(self) -> None:
        self._model_id: int | None = None
        self._store: dict[tuple[str, str], Tensor] = {}

    def __len__(self) -> int:
        return len(self._store)

    def __call__(self, model, task: Task, unit: str, batch_size: int) -> Float[Tensor, "prompt layer neuron"]:
        if self._model_id not in (None, id(model)):
            raise TasklensError("This PromptMeans holds another model's activations: make one per model")
        self._model_id = id(model)
        missing: dict[str, int] = {}  # prompt -> its first index in the task
        for i, prompt in enumerate(task.prompts):
            if (unit, prompt) not in self._store:
                missing.setdefault(prompt, i)
        if missing:
            fresh = task.subset(list(missing.values()))
            for prompt, row in zip(missing, prompt_means(model, fresh, unit, batch_size), strict=True):
                self._store[(unit, prompt)] = row
        return torch.stack([self._store[(unit, p)] for p in task.prompts])


def average_precision(
    scores: Float[Tensor, "sample neuron"], labels: Bool[Tensor, " sample"], chunk: int = 65536
) -> Float[Tensor, " neuron"]:
    """Average precision of each column of ``scores`` at ranking the positive samples first.

    As ``sklearn.metrics.average_precision_score``: AP = sum over distinct score
    thresholds of (recall gained there) x (precision there), so tied samples count
    as one threshold. A constant (e.g. dead) neuron scores the base rate, not 1.
    """
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == len(labels):
        raise TasklensError("average precision needs both positive and negative samples")
    rank = torch.arange(1, len(labels) + 1, dtype=torch.float64)[:, None]
    width = max(1, min(chunk, 2**24 // len(labels)))  # working tensors stay under 2**24 elements
    out = []
    for start in range(0, scores.shape[1], width):
        block = scores[:, start : start + width]
        order = block.argsort(dim=0, descending=True, stable=True)
        ordered = block.gather(0, order)
        true_pos = labels[order].double().cumsum(0)  # [sample, neuron]
        # a threshold ends where the next sample scores lower (or at the last sample)
        last = torch.ones_like(ordered, dtype=torch.bool)
        last[:-1] = ordered[:-1] != ordered[1:]
        at_last = torch.where(last, true_pos, torch.zeros_like(true_pos))
        before = torch.cat([torch.zeros_like(at_last[:1]), at_last.cummax(0).values[:-1]])
        gained = torch.where(last, true_pos - before, torch.zeros_like(true_pos))
        out.append((gained * true_pos / rank).sum(0) / n_pos)
    return torch.cat(out)


@SCORERS.register()
@dataclass
class AveragePrecisionExpertise(ScorerParams):
    """Score neurons by how well their mean activation picks the task's prompts out.

    Args:
        negatives: tasks the negative prompts are sampled from (e.g. the other relations).
        negative_ratio: negatives per positive (4 in the paper).
        seed: sampling seed.
        means: a `PromptMeans` shared by the scorers of one run, so each prompt's mean
            activations are computed once (a cache: not a parameter of the method).
    """

    negatives: Sequence[Task] = field(default_factory=list)
    negative_ratio: int = 4
    seed: int = 0
    means: PromptMeans | None = field(default=None, repr=False, compare=False, metadata={"record": False})
    name: ClassVar[str] = "average_precision"

    def attribute(self, model, task: Task, *, unit: str = DEFAULT_UNIT, batch_size: int = 32) -> NeuronScores:
        """Score every MLP neuron of ``model`` by the average precision of its mean activation
        at telling ``task``'s prompts from the negatives.

        Args:
            model (TransformerBridge): the model, as `tasklens.load_model` returns it.
            task (Task): the positive prompts (the answers are not used); a task of the
                same name among ``negatives`` is left out of them.
            unit (str, optional): the neuron activation read: ``"hook_post"`` (default),
                ``"hook_pre"`` or ``"hook_pre_linear"`` (gated MLPs).
            batch_size (int, optional): prompts per forward pass. Default: 32.

        Returns:
            NeuronScores: ``[n_layers, d_mlp]`` average precisions in [0, 1]
            (``reduction="none"``); ``params["n_negatives"]`` is the number of negatives drawn.

        Example:
            >>> import tasklens
            >>> from tasklens.scoring import AveragePrecisionExpertise
            >>> model = tasklens.load_model("organism")
            >>> task = tasklens.load_builtin("continent_of", "detection").head(8)
            >>> negatives = [
            ...     tasklens.load_builtin("capital_of", "detection").head(16),
            ...     tasklens.load_builtin("currency_of", "detection").head(16),
            ... ]
            >>> scorer = AveragePrecisionExpertise(negatives=negatives, negative_ratio=2)
            >>> scores = scorer.attribute(model, task)
            >>> scores.method, scores.shape, scores.params["n_negatives"]
            ('average_precision', (4, 512), 16)
            >>> bool(((scores.values >= 0) & (scores.values <= 1)).all())
            True
        """
        others = [t for t in self.negatives if t.name != task.name]
        if not others:
            raise TasklensError(
                "AveragePrecisionExpertise needs negatives: pass negatives=[other tasks] "
                "(the relation paper samples them from the other relations)"
            )
        pool = [(t, i) for t in others for i in range(len(t))]
        n_neg = min(len(pool), self.negative_ratio * len(task))
        picked = random.Random(self.seed).sample(pool, n_neg)
        negative = Task(
            name=f"negatives({task.name})",
            prompts=tuple(t.prompts[i] for t, i in picked),
            answers=tuple(t.answers[i] for t, i in picked),
        )
        means = self.means if self.means is not None else PromptMeans()
        pos = means(model, task, unit, batch_size)
        neg = means(model, negative, unit, batch_size)
        scores = torch.cat([pos, neg]).flatten(1)
        labels = torch.cat([torch.ones(len(pos), dtype=torch.bool), torch.zeros(len(neg), dtype=torch.bool)])
        ap = average_precision(scores, labels).view(pos.shape[1:])
        return make_scores(self, model, task, ap, unit, len(task), 0, "none", n_negatives=n_neg)
