"""Running a float32 model's matrix products in bfloat16: `reduced_precision`.

Inside ``with reduced_precision(model, "bfloat16"):`` every linear layer and attention product
of ``model`` runs under `torch.autocast` in bfloat16 (products accumulate in float32; each
layer's output is rounded to bfloat16), while the residual stream, the norms and the
unembedding stay float32, so the logits, and every metric read off them, are float32. The
weights are cast once per block (autocast keeps the casts of parameters for the block's
length), not once per call. The model itself is never changed.

The conformance suite (``tests/integration/test_conformance_precision.py``) bounds what this
changes per prompt on every family, against the same model in float32.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

from tasklens.errors import TasklensError, check_choice

#: the precisions a forward pass may run in: ``float32`` as the model is, ``bfloat16`` products
PRECISIONS = ("float32", "bfloat16")
#: largest difference per prompt from float32 the conformance suite allows under ``bfloat16``,
#: by metric: a log-probability (nats), and the share of prompts whose 0/1 exact match may flip
#: (the prompts whose top two logits lie within bfloat16's rounding of each other)
TOLERANCE = {"logprob": 0.25, "exact_match_flips": 0.05}


@contextmanager
def reduced_precision(model, precision: str = "float32") -> Iterator[None]:
    """Forward passes of ``model`` inside the block in ``precision`` (see the module's docstring).

    Args:
        model: a TransformerLens bridge (or HookedTransformer) in float32.
        precision: ``"float32"`` (nothing changes) or ``"bfloat16"``.

    Example:
        >>> import torch
        >>> from tasklens import load_model
        >>> model = load_model("organism")
        >>> tokens = torch.tensor([[1, 5, 7, 9]])
        >>> with torch.no_grad():
        ...     full = model(tokens)
        ...     with reduced_precision(model, "bfloat16"):
        ...         reduced = model(tokens)
        >>> reduced.dtype, bool((reduced - full).abs().max() < 0.5)
        (torch.float32, True)
    """
    check_choice("precision", precision, PRECISIONS)
    if precision == "float32":
        yield
        return
    device = torch.device(str(model.cfg.device)).type
    if device not in ("cpu", "cuda"):
        raise TasklensError(
            f"precision 'bfloat16' runs on the CPU or CUDA, not on {device!r}; use precision='float32'"
        )
    unembed = getattr(model, "unembed", None)
    if unembed is None:
        raise TasklensError(
            f"{type(model).__name__} has no unembed module to keep in float32; use precision='float32'"
        )
    suspended: list[torch.autocast] = []

    def full_precision(module, args) -> tuple:
        suspended.append(torch.autocast(device, enabled=False))
        suspended[-1].__enter__()
        return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)

    def resume(module, args, output) -> None:
        suspended.pop().__exit__(None, None, None)

    with ExitStack() as stack:
        handles = [unembed.register_forward_pre_hook(full_precision), unembed.register_forward_hook(resume)]
        stack.callback(lambda: [h.remove() for h in handles])
        stack.enter_context(torch.autocast(device, dtype=torch.bfloat16))
        yield
