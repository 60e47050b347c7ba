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
from tasklens.scoring.base import SCORERS, ScorerParams, make_scores
from tasklens.scoring.gradients import stream_gradients
from tasklens.tasks.task import Task
from tasklens.tasks.tokenize import POSITIONS, Positions

AGGREGATES = ("abs_of_sum", "sum_of_abs", "abs_of_total")


@SCORERS.register()
@dataclass
class GradientAttribution(ScorerParams):
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
        """Score every MLP neuron of ``model`` by |activation x gradient| on ``task``.

        Args:
            model (TransformerBridge): the model, as `tasklens.load_model` returns it.
            task (Task): the prompts and their answers (the metric is taken on the answers).
            unit (str, optional): the neuron activation read and differentiated:
                ``"hook_post"`` (default), ``"hook_pre"`` or ``"hook_pre_linear"`` (gated MLPs).
            batch_size (int, optional): prompts per forward and backward pass. Default: 32.

        Returns:
            NeuronScores: ``[n_layers, d_mlp]`` non-negative scores, summed over prompts
            (``reduction="sum"``; ``"none"`` for ``aggregate="abs_of_total"``).

        Example:
            >>> import tasklens
            >>> from tasklens.scoring import GradientAttribution
            >>> model = tasklens.load_model("organism")
            >>> task = tasklens.load_builtin("continent_of", "detection").head(8)
            >>> scores = GradientAttribution().attribute(model, task)
            >>> scores.method, scores.shape, scores.n_prompts
            ('gradient_attribution', (4, 512), 8)
            >>> bool((scores.values >= 0).all()), bool(scores.values.max() > 0)
            (True, True)
        """
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
