"""The answer tokens' loss and correctness, with logits computed only where they are read.

Fine-tuning and evaluation read the logits at the positions whose next token is an
answer token (a few per prompt). The Hugging Face models behind the bridge take
``logits_to_keep`` (a ``[batch, pos]`` boolean mask), so the unembedding, about a
fifth of a small model's compute, runs at those positions only; the values are the
same as `tasklens.evaluation.metrics.answer_loss` and `tasklens.evaluation.metrics.next_token_correct` on
full logits (checked in the tests). Models without ``logits_to_keep`` get full
logits, read at the same positions.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tasklens.models import logits_at
from tasklens.tasks.tokenize import Batch


def answer_logits(
    model, batch: Batch
) -> tuple[Float[Tensor, "n vocab"], Int[Tensor, " n"], Int[Tensor, " n"]]:
    """Logits at every answer-predicting position, their batch rows and the tokens they predict.

    Returns:
        ``(logits [n, vocab], rows [n], targets [n])`` for the n positions of
        `Batch.target_mask`, in row-major order.
    """
    mask = batch.target_mask()
    device = model.cfg.device
    tokens = batch.tokens.to(device)
    rows, pos = mask.nonzero(as_tuple=True)
    targets = batch.tokens[rows, pos + 1]
    logits = logits_at(model, tokens, mask.to(device))
    return logits, rows.to(logits.device), targets.to(logits.device)


def _per_prompt(values: Tensor, rows: Tensor, size: int) -> Tensor:
    return torch.zeros(size, dtype=values.dtype, device=values.device).index_add(0, rows, values)


def answer_loss(model, batch: Batch) -> Float[Tensor, " batch"]:
    """Per prompt, the mean negative log-probability of its answer tokens (teacher forcing)."""
    logits, rows, targets = answer_logits(model, batch)
    nll = -logits.log_softmax(-1).gather(-1, targets[:, None])[:, 0]
    counts = _per_prompt(torch.ones_like(nll), rows, batch.size).clamp_min(1)
    return _per_prompt(nll, rows, batch.size) / counts


def answer_correct(model, batch: Batch) -> Float[Tensor, " batch"]:
    """Per prompt, 1.0 when every answer token is the argmax given the correct prefix."""
    logits, rows, targets = answer_logits(model, batch)
    wrong = (logits.argmax(-1) != targets).to(logits.dtype)
    return (_per_prompt(wrong, rows, batch.size) == 0).to(logits.dtype)
