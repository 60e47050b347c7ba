"""TransformerLens hooks owned by one thread (`owned_hooks`), and streaming a model's
activations through them a batch at a time.

What scorers, interventions and views all need; memory is one batch's activations,
whatever the number of prompts.

One model, one owner: a model's hooks are the model's, not a thread's, so while tasklens has
hooks on a model (an intervention's ``with`` block, a scorer's pass) the thread that put them
there owns it. Another thread's forward pass through that model (which would see the
intervention, or write into the scorer's activations) raises a `TasklensError`, and so does
another thread's attempt to put hooks on it; the owner's own nested blocks are fine. Load one
model per thread (`tasklens.load_model` again) to work in parallel.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from jaxtyping import Float
from torch import Tensor

from tasklens.errors import TasklensError
from tasklens.models.forward import forward_keeping
from tasklens.models.info import DEFAULT_UNIT, ModelInfo
from tasklens.tasks.task import Task
from tasklens.tasks.tokenize import Batch, TokenizedTask

#: model -> [owning thread's id, its name, how many tasklens hook blocks it has open]
_OWNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_OWNERS_LOCK = threading.Lock()


def _name(model) -> str:
    return str(getattr(getattr(model, "cfg", None), "model_name", "") or type(model).__name__)


def _in_use(model, owner: list) -> TasklensError:
    return TasklensError(
        f"Model {_name(model)!r} is in use by thread {owner[1]!r}, which has tasklens hooks on it (an "
        "intervention or a scorer's pass); a forward pass or hooks from this thread would mix with "
        "them. Load one model per thread (tasklens.load_model again), or run the calls one after another"
    )


def _guarded(function: Callable, model, owner: list) -> Callable:
    def guarded(act, hook):
        if threading.get_ident() != owner[0]:
            raise _in_use(model, owner)
        return function(act, hook=hook)

    return guarded


@contextmanager
def owned_hooks(model, fwd_hooks: Sequence[tuple[str, Callable]]) -> Iterator[None]:
    """``model.hooks(fwd_hooks=...)`` owned by the calling thread (see the module docstring): a
    second thread's forward pass through ``model`` or its own `owned_hooks` raises while the
    block is open. Nested blocks of the owner are fine; the hooks go on exit, even on error."""
    me = threading.get_ident()
    with _OWNERS_LOCK:
        owner = _OWNERS.get(model)
        if owner is not None and owner[2] > 0 and owner[0] != me:
            raise _in_use(model, owner)
        if owner is None or owner[2] == 0:
            owner = [me, threading.current_thread().name, 0]
            _OWNERS[model] = owner
        owner[2] += 1
    try:
        with model.hooks(fwd_hooks=[(name, _guarded(fn, model, owner)) for name, fn in fwd_hooks]):
            yield
    finally:
        with _OWNERS_LOCK:
            owner[2] -= 1


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
    with torch.no_grad(), owned_hooks(model, [(n, keep(n)) for n in names]):
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
