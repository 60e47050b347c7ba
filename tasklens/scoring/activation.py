"""Activation statistics: mean activation, mean |activation|, firing probability.

Accumulates per-neuron sum(a), sum(a^2), sum(|a|) and count(fires) batch by
batch over the chosen positions. "Fires" means the (gate) pre-activation is
positive, ``hook_pre > 0``: for SwiGLU that is act(gate) > 0, for GELU/ReLU MLPs
it is ``hook_post > 0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from tasklens.data.neurons import NeuronScores
from tasklens.errors import TasklensError, check_choice
from tasklens.models import DEFAULT_UNIT, ModelInfo
from tasklens.models.hooks import stream_activations
from tasklens.scoring.base import SCORERS, ScorerParams, make_scores
from tasklens.tasks.task import Task
from tasklens.tasks.tokenize import POSITIONS, Positions

STATISTICS = ("mean", "mean_abs", "std", "firing_rate")
#: the running sums each statistic reads
NEEDS = {"mean": ("sum",), "mean_abs": ("sum_abs",), "std": ("sum", "sum_sq"), "firing_rate": ("fires",)}
SUMS = ("sum", "sum_sq", "sum_abs", "fires")


@dataclass
class ActivationSums:
    """Running sums over token positions, ``[n_layers, d_mlp]`` each."""

    sum: Float[Tensor, "layer neuron"]
    sum_sq: Float[Tensor, "layer neuron"]
    sum_abs: Float[Tensor, "layer neuron"]
    fires: Float[Tensor, "layer neuron"]
    n_tokens: int = 0
    n_prompts: int = 0

    def statistic(self, statistic: str) -> Float[Tensor, "layer neuron"]:
        n = max(self.n_tokens, 1)
        if statistic == "mean":
            return self.sum / n
        if statistic == "mean_abs":
            return self.sum_abs / n
        if statistic == "std":
            return (self.sum_sq / n - (self.sum / n) ** 2).clamp_min(0).sqrt()
        if statistic == "firing_rate":
            return self.fires / n
        raise TasklensError(f"Unknown statistic {statistic!r}; choose one of {list(STATISTICS)}")


@SCORERS.register()
@dataclass
class ActivationStats(ScorerParams):
    """Score neurons by an activation statistic over a task's tokens.

    Args:
        statistic: ``"mean"`` (default), ``"mean_abs"``, ``"std"`` or ``"firing_rate"``.
        positions: which tokens: ``"prompt"`` (all prompt tokens, BOS included;
            default), ``"last_prompt"``, ``"answer"`` or ``"all"``.
    """

    statistic: str = "mean"
    positions: Positions = "prompt"
    name: ClassVar[str] = "activation_stats"

    def __post_init__(self) -> None:
        check_choice("statistic", self.statistic, STATISTICS)
        check_choice("positions", self.positions, POSITIONS)

    def accumulate(
        self,
        model,
        task: Task,
        *,
        unit: str = DEFAULT_UNIT,
        batch_size: int = 32,
        sums: tuple[str, ...] = SUMS,
    ) -> ActivationSums:
        """The running sums ``sums`` for ``task`` (all by default: every statistic can be read from
        them); a sum not asked for is NaN."""
        for name in sums:
            check_choice("running sum", name, SUMS)
        info = ModelInfo.of(model)
        acts = info.hook_names(unit)
        gates = info.hook_names("hook_pre") if "fires" in sums else []
        zeros = torch.zeros(info.shape, dtype=torch.float64)
        out = ActivationSums(
            *(zeros.clone() if n in sums else torch.full_like(zeros, torch.nan) for n in SUMS)
        )
        with_answers = self.positions in ("answer", "all")
        for batch, store in stream_activations(
            model, task, sorted(set(acts + gates)), batch_size, with_answers
        ):
            mask = batch.position_mask(self.positions).to(store[acts[0]].device)
            for layer, a_name in enumerate(acts):
                # selected tokens only; one batch's sums in float32, the running sums in float64
                a = store[a_name][mask].float() if set(sums) - {"fires"} else None  # [tokens, neuron]
                if "sum" in sums:
                    out.sum[layer] += a.sum(0).double().cpu()
                if "sum_sq" in sums:
                    out.sum_sq[layer] += (a * a).sum(0).double().cpu()
                if "sum_abs" in sums:
                    out.sum_abs[layer] += a.abs().sum(0).double().cpu()
                if "fires" in sums:
                    out.fires[layer] += (store[gates[layer]][mask] > 0).sum(0).double().cpu()
            out.n_tokens += int(mask.sum())
            out.n_prompts += batch.size
        return out

    def attribute(self, model, task: Task, *, unit: str = DEFAULT_UNIT, batch_size: int = 32) -> NeuronScores:
        """Score every MLP neuron of ``model`` by the statistic over ``task``'s tokens.

        Args:
            model (TransformerBridge): the model, as `tasklens.load_model` returns it.
            task (Task): the prompts (and answers, for ``positions="answer"`` or ``"all"``).
            unit (str, optional): the neuron activation read: ``"hook_post"`` (default),
                ``"hook_pre"`` or ``"hook_pre_linear"`` (gated MLPs).
            batch_size (int, optional): prompts per forward pass. Default: 32.

        Returns:
            NeuronScores: ``[n_layers, d_mlp]`` values of the statistic, with ``n_tokens``
            the token positions it was taken over (``reduction="mean"``, or ``"none"`` for
            ``"std"``).

        Example:
            >>> import tasklens
            >>> from tasklens.scoring import ActivationStats
            >>> model = tasklens.load_model("organism")
            >>> task = tasklens.load_builtin("continent_of", "detection").head(8)
            >>> scores = ActivationStats("firing_rate").attribute(model, task)
            >>> scores.method, scores.shape, scores.n_prompts
            ('activation_stats', (4, 512), 8)
            >>> bool(((scores.values >= 0) & (scores.values <= 1)).all())
            True
        """
        sums = self.accumulate(model, task, unit=unit, batch_size=batch_size, sums=NEEDS[self.statistic])
        reduction = "none" if self.statistic == "std" else "mean"
        return make_scores(
            self, model, task, sums.statistic(self.statistic), unit, sums.n_prompts, sums.n_tokens, reduction
        )
