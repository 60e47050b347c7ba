"""One forward and one backward pass, returning activations and metric gradients.

The gradient is taken with `torch.autograd.grad` w.r.t. the hooked activations
themselves, so parameter ``.grad`` is never touched and no parameter gradient is
computed beyond what the chain rule needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from tasklens.errors import TasklensError
from tasklens.models.hooks import owned_hooks
from tasklens.tasks.task import Task
from tasklens.tasks.tokenize import Batch, TokenizedTask

Objective = Callable[[Tensor, Batch], Tensor]


def forward_backward(
    model, batch: Batch, names: Sequence[str], objective: Objective, fwd_hooks: Sequence = ()
) -> tuple[
    dict[str, Float[Tensor, "batch pos neuron"]], dict[str, Float[Tensor, "batch pos neuron"]], Tensor
]:
    """Activations at ``names``, d(sum of objective)/d(activation) there, and the objective.

    Args:
        model: a TransformerLens bridge.
        batch: the tokens.
        names: hook names to read.
        objective: ``(logits, batch) -> [batch]`` per-prompt values (summed for backward).
        fwd_hooks: extra forward hooks active during the pass (e.g. an intervention).

    Returns:
        ``(activations, gradients, objective values)``, activations and gradients
        detached, keyed by the names asked for.
    """
    store: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(act: Tensor, hook) -> None:
            store[name] = act

        return hook

    with torch.enable_grad(), owned_hooks(model, [*fwd_hooks, *[(n, keep(n)) for n in names]]):
        logits = model(batch.tokens.to(model.cfg.device), return_type="logits")
        values = objective(logits, batch)
        grads = torch.autograd.grad(values.sum(), [store[n] for n in names], allow_unused=True)
    unreached = [n for n, g in zip(names, grads, strict=True) if g is None]
    # extra hooks may cut the gradient on purpose (GradDrop); without them every hook must be reached
    if unreached and values.requires_grad and (not fwd_hooks or len(unreached) == len(names)):
        raise TasklensError(
            f"The gradient of the objective does not reach {unreached[0]} on "
            f"{getattr(model.cfg, 'model_name', 'this model')!r} (nor {len(unreached) - 1} other hook(s)): "
            "TransformerLens hooks a copy of this family's MLP activations, so gradient scores would all "
            "be 0; use a scorer that needs no gradient (activation statistics, average precision, exact "
            "ablation) or a family of docs/conformance.md"
        )
    acts = {n: store[n].detach() for n in names}
    grads_out = {
        n: torch.zeros_like(acts[n]) if g is None else g.detach() for n, g in zip(names, grads, strict=True)
    }
    return acts, grads_out, values.detach()


def stream_gradients(
    model, task: Task, names: Sequence[str], objective: Objective, batch_size: int
) -> Iterator[tuple[Batch, dict[str, Tensor], dict[str, Tensor], Tensor]]:
    """`forward_backward` over a task in batches (prompt + answer tokens)."""
    tokenized = TokenizedTask.for_model(task, model)
    for batch in tokenized.batches(batch_size, with_answers=True):
        yield (batch, *forward_backward(model, batch, names, objective))
