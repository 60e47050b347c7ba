"""Gradient attribution R = |a * dLoss/da| (Leng & Xiong, COLING 2025).

First-order Taylor importance of every neuron for the language-modelling loss on
the task's answer tokens. The paper leaves the aggregation over positions and
prompts open; ``aggregate`` makes it explicit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from tasklens.data.neurons import NeuronScores
from tasklens.errors import check_choice
from tasklens.evaluation.metrics import get_metric
from tasklens.models import DEFAULT_UNIT, ModelInfo
from tasklens.scoring.base import SCORERS, make_scores
from tasklens.scoring.gradients import stream_gradients
from tasklens.tasks.task import Task
from tasklens.tasks.tokenize import POSITIONS, Positions

AGGREGATES = ("abs_of_sum", "sum_of_abs", "abs_of_total")


@SCORERS.register()
@dataclass
class GradientAttribution:
    """Score neurons by |activation x gradient of the answer loss|.

    Args:
        aggregate: how token and prompt terms a*g combine:
            ``"abs_of_sum"`` (default): per prompt, sum a*g over the positions,
            take the absolute value, sum over prompts;
            ``"sum_of_abs"``: sum |a*g| over every position of every prompt;
            ``"abs_of_total"``: |sum of a*g over everything|.
        positions: the positions summed over (default ``"all"``: every real token;
            activations after the last answer-predicting position get zero gradient).
        metric: the objective differentiated (default ``"loss"``: mean NLL of the answer).
    """

    aggregate: str = "abs_of_sum"
    positions: Positions = "all"
    metric: str = "loss"
    name: ClassVar[str] = "gradient_attribution"

    def __post_init__(self) -> None:
        check_choice("aggregate", self.aggregate, AGGREGATES)
        check_choice("positions", self.positions, POSITIONS)
        get_metric(self.metric)

    def attribute(self, model, task: Task, *, unit: str = DEFAULT_UNIT, batch_size: int = 32) -> NeuronScores:
        info = ModelInfo.of(model)
        names = info.hook_names(unit)
        total = torch.zeros(info.shape, dtype=torch.float64)
        n_prompts = n_tokens = 0
        for batch, acts, grads, _ in stream_gradients(
            model, task, names, get_metric(self.metric), batch_size
        ):
            mask = batch.position_mask(self.positions)[..., None].double()
            for layer, name in enumerate(names):
                ag = (acts[name].double() * grads[name].double()).cpu() * mask
                if self.aggregate == "abs_of_sum":
                    total[layer] += ag.sum(1).abs().sum(0)
                elif self.aggregate == "sum_of_abs":
                    total[layer] += ag.abs().sum((0, 1))
                else:
                    total[layer] += ag.sum((0, 1))
            n_prompts += batch.size
            n_tokens += int(mask.sum())
        reduction = "sum"
        if self.aggregate == "abs_of_total":
            total, reduction = total.abs(), "none"
        return make_scores(self, model, task, total, unit, n_prompts, n_tokens, reduction)
