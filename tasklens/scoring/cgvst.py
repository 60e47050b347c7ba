"""CGVST: Causal Gradient Variation with Special Tokens (Song et al., EMNLP 2024).

The loss is the cross-entropy of predicting the prompt-format marker tokens,
each from the position before it; the first ``n_demo`` marker positions (the
few-shot demonstrations) and the rest (the query) are averaged separately and
the two means added. A neuron's score is the magnitude of the gradient of that
loss w.r.t. its row of the up projection, summed over the row:

    S[l, j] = sum_n | sum_k dLoss_n / dW_up[l][j, k] | = sum_n | sum_t g[t, j] * sum_k x[t, k] |

with g the gradient at the up projection's output and x the MLP input. The hook
form needs no parameter gradients. Non-gated MLPs use W_in (``hook_pre``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from tasklens.data.neurons import NeuronScores
from tasklens.errors import TasklensError
from tasklens.models import DEFAULT_UNIT, ModelInfo, mlp_input, weights_folded
from tasklens.scoring.base import SCORERS, ScorerParams, make_scores
from tasklens.scoring.gradients import forward_backward
from tasklens.tasks.task import Task
from tasklens.tasks.tokenize import Batch, TokenizedTask, marker_positions


def marker_loss(logits: Tensor, batch: Batch, positions: list[list[int]], n_demo: int) -> Tensor:
    """Per prompt: mean CE over the first ``n_demo`` marker tokens + mean CE over the rest.

    The log-softmax runs only on the rows that predict a marker: on a real vocabulary the
    full ``[batch, pos, vocab]`` log-softmax (and its backward) costs as much as the model."""
    rows, predicting, weights = [], [], []
    for row, index in enumerate(batch.indices):
        targets = [t for t in positions[index] if t >= 1]
        for group in (targets[:n_demo], targets[n_demo:]):
            for t in group:
                rows.append(row)
                predicting.append(t - 1)
                weights.append(1.0 / len(group))
    rows_t, at = torch.tensor(rows, dtype=torch.long), torch.tensor(predicting, dtype=torch.long)
    targets_t = batch.tokens[rows_t, at + 1].to(logits.device)
    rows_t, at = rows_t.to(logits.device), at.to(logits.device)
    nll = -logits[rows_t, at].log_softmax(-1).gather(-1, targets_t[:, None])[:, 0]
    weighted = nll * torch.tensor(weights, dtype=nll.dtype, device=nll.device)
    return logits.new_zeros(len(batch.indices)).index_add(0, rows_t, weighted)


@SCORERS.register()
@dataclass
class CGVST(ScorerParams):
    """Score neurons by the gradient of the marker-token loss w.r.t. their W_up row.

    Args:
        n_demo: marker positions counted as the demonstrations' (averaged apart
            from the rest); 28 in the public implementation (Llama-2-chat,
            few-shot prompts).

    The task needs ``markers``. Weights must be unfolded (HF numerics): a bridge
    in compatibility mode is refused, since folding changes W_up and x. The score
    belongs to the up projection's rows, so the scores record that unit
    (``hook_pre_linear``, or ``hook_pre`` for non-gated MLPs) whatever ``unit`` is asked.
    """

    n_demo: int = 28
    name: ClassVar[str] = "cgvst"

    def attribute(self, model, task: Task, *, unit: str = DEFAULT_UNIT, batch_size: int = 32) -> NeuronScores:
        """Score every MLP neuron of ``model`` by the CGVST gradient on ``task``'s marker tokens.

        Args:
            model (TransformerBridge): the model, as `tasklens.load_model` returns it
                (weights not folded).
            task (Task): prompts with ``markers`` (e.g. ``"Q:"``, ``"A:"``); the answers are
                not used.
            unit (str, optional): leave at its default: the scores always belong to the up
                projection (``"hook_pre_linear"``, or ``"hook_pre"`` for non-gated MLPs), and
                naming that unit is accepted too.
            batch_size (int, optional): prompts per forward and backward pass. Default: 32.

        Returns:
            NeuronScores: ``[n_layers, d_mlp]`` non-negative scores, summed over prompts,
            with ``unit`` the up projection and ``n_tokens`` the marker tokens.

        Example:
            >>> import tasklens
            >>> from tasklens.scoring import CGVST
            >>> model = tasklens.load_model("organism")
            >>> task = tasklens.load_builtin("addition", "detection").head(8)
            >>> scores = CGVST(n_demo=1).attribute(model, task)
            >>> scores.method, scores.unit, scores.shape, scores.n_prompts
            ('cgvst', 'hook_pre_linear', (4, 512), 8)
            >>> bool((scores.values >= 0).all()), bool(scores.values.max() > 0)
            (True, True)
        """
        info = ModelInfo.of(model)
        if weights_folded(model):
            raise TasklensError(
                "CGVST reads the up-projection weights, which folding the norms changes "
                "(enable_compatibility_mode(), or a HookedTransformer loaded with fold_ln): load the "
                "model with load_model(), or HookedTransformer.from_pretrained_no_processing"
            )
        up_unit = "hook_pre_linear" if info.gated else "hook_pre"
        if unit not in (DEFAULT_UNIT, up_unit):
            raise TasklensError(
                f"CGVST scores the rows of the up projection ({up_unit}), not {unit!r}; neuron j is the "
                "same neuron in every unit, so leave unit at its default (the scores record "
                f"{up_unit!r})"
            )
        grad_names = info.hook_names(up_unit)
        input_names = [info.mlp_input_name(layer) for layer in range(info.n_layers)]
        positions = marker_positions(
            task, model.tokenizer, bool(getattr(model.cfg, "default_prepend_bos", True))
        )
        total = torch.zeros(info.shape, dtype=torch.float64)
        tokenized = TokenizedTask.for_model(task, model)
        n_markers = 0
        for batch in tokenized.batches(batch_size, with_answers=False):
            acts, grads, _ = forward_backward(
                model,
                batch,
                grad_names + input_names,
                lambda logits, b: marker_loss(logits, b, positions, self.n_demo),
            )
            for layer in range(info.n_layers):
                x = mlp_input(model, layer, acts[input_names[layer]])
                x_sum = x.double().sum(-1, keepdim=True)  # [batch, pos, 1]
                row_grad = (grads[grad_names[layer]].double() * x_sum).sum(1)  # [batch, neuron]
                total[layer] += row_grad.abs().sum(0).cpu()
            n_markers += sum(len(positions[i]) for i in batch.indices)
        return make_scores(self, model, task, total, up_unit, len(task), n_markers)
