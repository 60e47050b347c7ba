"""Streaming a model's activations through TransformerLens hooks, a batch at a time.

What scorers, interventions and views all need; memory is one batch's activations,
whatever the number of prompts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from tasklens.models.forward import forward_keeping
from tasklens.models.info import DEFAULT_UNIT, ModelInfo
from tasklens.tasks.task import Task
from tasklens.tasks.tokenize import Batch, TokenizedTask


def stream_activations(
    model, task: Task, names: Sequence[str], batch_size: int, with_answers: bool = True
) -> Iterator[tuple[Batch, dict[str, Float[Tensor, "batch pos neuron"]]]]:
    """Forward passes over ``task`` in batches, yielding the named activations.

    Memory is one batch's activations, whatever the number of prompts.
    """
    tokenized = TokenizedTask.for_model(task, model)
    store: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(act: Tensor, hook) -> None:
            store[name] = act.detach()

        return hook

    # the blocks' activations need no logits: unembed one position only where the model allows it
    blocks_only = all(n.startswith("blocks.") for n in names)
    with torch.no_grad(), model.hooks(fwd_hooks=[(n, keep(n)) for n in names]):
        for batch in tokenized.batches(batch_size, with_answers=with_answers):
            store.clear()
            tokens = batch.tokens.to(model.cfg.device)
            if blocks_only:
                forward_keeping(model, tokens, 1, return_type=None)
            else:
                model(tokens, return_type=None)
            yield batch, dict(store)


def mean_activations(
    model, task: Task, unit: str = DEFAULT_UNIT, batch_size: int = 32
) -> Float[Tensor, "layer neuron"]:
    """Each neuron's mean activation over every real token (prompt and answer) of ``task``."""
    info = ModelInfo.of(model)
    names = info.hook_names(unit)
    total = torch.zeros(info.shape, dtype=torch.float64)
    count = 0
    for batch, store in stream_activations(model, task, names, batch_size):
        real = batch.attention_mask.bool().to(store[names[0]].device)
        for layer, name in enumerate(names):
            total[layer] += store[name][real].double().sum(0).cpu()
        count += int(real.sum())
    return (total / max(count, 1)).float()


def position_means(
    model,
    task: Task,
    unit: str = DEFAULT_UNIT,
    batch_size: int = 32,
    *,
    absolute: bool = False,
    with_answers: bool = True,
) -> tuple[Float[Tensor, "layer neuron"], Float[Tensor, "layer neuron"]]:
    """Each neuron's mean activation at position 0 (the BOS state every prompt shares) and its
    mean over every other real token of ``task``: ``(first, rest)``; of ``|activation|`` with
    ``absolute``, over the prompts alone without ``with_answers``.

    Position 0 is kept apart because some neurons take values there that they never take
    elsewhere (massive activations); a mean over every token would mix the two.
    """
    info = ModelInfo.of(model)
    names = info.hook_names(unit)
    first = torch.zeros(info.shape, dtype=torch.float64)
    rest = torch.zeros(info.shape, dtype=torch.float64)
    n_first = n_rest = 0
    for batch, store in stream_activations(model, task, names, batch_size, with_answers=with_answers):
        real = batch.attention_mask.bool().to(store[names[0]].device).clone()
        real[:, 0] = False
        for layer, name in enumerate(names):
            values = store[name].abs() if absolute else store[name]
            first[layer] += values[:, 0].double().sum(0).cpu()
            rest[layer] += values[real].double().sum(0).cpu()
        n_first += batch.size
        n_rest += int(real.sum())
    return (first / max(n_first, 1)).float(), (rest / max(n_rest, 1)).float()
