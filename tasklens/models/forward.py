"""A forward pass that computes logits only where they are read.

The Hugging Face models behind a `TransformerBridge` take ``logits_to_keep`` (an int for the
last positions, a 1-D index tensor, or a ``[batch, pos]`` boolean mask), which spares most of
the unembedding: a fifth to over half of a small model's forward. A classic
``HookedTransformer``, or a model whose forward lacks the argument, runs in full.
"""

from __future__ import annotations

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
