"""A forward pass that computes logits only where they are read.

The Hugging Face models behind a `TransformerBridge` take ``logits_to_keep`` (an int for the
last positions, a 1-D index tensor, or a ``[batch, pos]`` boolean mask), which spares most of
the unembedding: a fifth to over half of a small model's forward. A classic
``HookedTransformer``, or a model whose forward lacks the argument, runs in full.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tasklens.models.info import is_bridge


def forward_keeping(model, tokens, keep, **kwargs) -> tuple[object, bool]:
    """``model(tokens, **kwargs)`` with logits only at ``keep`` where the model allows it.

    Returns:
        ``(output, kept)``: ``kept`` is False when the model ran in full, so the caller reads
        ``keep``'s positions from full-length logits itself.

    Example:
        >>> import torch
        >>> from tasklens import load_model
        >>> model = load_model("organism")
        >>> logits, kept = forward_keeping(model, torch.tensor([[1, 5, 7, 9]]), 1)
        >>> kept, tuple(logits.shape[:2])
        (True, (1, 1))
    """
    if is_bridge(model):
        try:
            return model(tokens, logits_to_keep=keep, **kwargs), True
        except TypeError:  # a bridged model whose forward takes no logits_to_keep
            pass
    return model(tokens, **kwargs), False


def logits_at(
    model, tokens: Int[Tensor, "batch pos"], keep: Bool[Tensor, "batch pos"] | Int[Tensor, "batch k"]
) -> Float[Tensor, "... vocab"]:
    """The logits at ``keep``, computed only there where the model allows it (`forward_keeping`),
    else read off full logits: ``[n, vocab]`` for a boolean mask's n True positions (row-major),
    ``[batch, k, vocab]`` for ``k`` positions per row.

    Example:
        >>> import torch
        >>> from tasklens import load_model
        >>> model = load_model("organism")
        >>> tokens = torch.tensor([[1, 5, 7, 9], [1, 6, 8, 2]])
        >>> tuple(logits_at(model, tokens, torch.tensor([[1, 3], [0, 2]])).shape[:2])
        (2, 2)
    """
    expected = (int(keep.sum()),) if keep.dtype == torch.bool else tuple(keep.shape)
    logits, kept = forward_keeping(model, tokens, keep)
    if kept and tuple(logits.shape[:-1]) != expected:  # a transformers that reads ``keep`` otherwise
        logits, kept = model(tokens), False
    if kept:
        return logits
    if keep.dtype == torch.bool:
        return logits[keep]
    return logits.gather(1, keep[..., None].expand(-1, -1, logits.shape[-1]))
