"""Several interventions in one forward pass, each on its own block of the batch's rows.

A batch of ``n x b`` rows holding the same ``b`` sequences ``n`` times (copy ``k`` in rows
``k*b .. k*b + b - 1``) is edited by ``interventions[k]`` in copy ``k``: what `Intervention.apply`
does to a whole batch, for ``n`` neuron sets in one pass. Each block's edit runs the same
operations on the same values as `Intervention.apply` would on that block alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import Tensor

from tasklens.errors import TasklensError
from tasklens.interventions.base import Intervention, resolve_positions
from tasklens.models import ModelInfo


@contextmanager
def apply_by_rows(model, interventions: Sequence[Intervention]) -> Iterator[None]:
    """Apply ``interventions`` (one kind, unit and positions; one neuron set each) to the
    consecutive equal blocks of every forward call's rows inside the block.

    A call whose rows do not split into ``len(interventions)`` equal blocks is refused.

    Example:
        >>> import torch
        >>> from tasklens import NeuronSet, load_model
        >>> from tasklens.interventions import Zero
        >>> model = load_model("organism")
        >>> sets = [NeuronSet.from_pairs([(1, n)], (4, 512)) for n in (3, 7)]
        >>> name = "blocks.1.mlp.hook_post"
        >>> with apply_by_rows(model, [Zero(s) for s in sets]):
        ...     _, cache = model.run_with_cache(torch.tensor([[1, 5, 7]] * 2), names_filter=name)
        >>> cache[name][0, :, 3].abs().max().item(), cache[name][1, :, 7].abs().max().item()
        (0.0, 0.0)
        >>> bool(cache[name][1, :, 3].abs().max() > 0)
        True
    """
    if not interventions:
        raise TasklensError("apply_by_rows needs at least one intervention")
    first = interventions[0]
    for spec in interventions:
        if (type(spec), spec.unit, spec.positions) != (type(first), first.unit, first.positions):
            raise TasklensError(
                "apply_by_rows applies one kind of intervention with one unit and positions to every "
                f"block; got {spec.label} on {spec.unit} beside {first.label} on {first.unit}"
            )
        if spec.neurons is None:
            raise TasklensError(f"This {spec.label} has no neurons; give each intervention its neuron set")
        spec.check(model)
    edits = [spec.prepared(model).edit_for(model) for spec in interventions]
    info, n = ModelInfo.of(model), len(interventions)
    hooks = []
    for layer in range(info.n_layers):
        idx = [spec.neurons.mask[layer].nonzero().flatten() for spec in interventions]
        if all(i.numel() == 0 for i in idx):
            continue

        def hook(act: Tensor, hook, layer=layer, idx=idx) -> Tensor:
            if act.shape[0] % n:
                raise TasklensError(
                    f"A forward call of {act.shape[0]} rows does not split into {n} equal blocks, one per "
                    "intervention; repeat the batch once per intervention"
                )
            act = act.clone()
            rows = act.shape[0] // n
            length = act.shape[1]
            where = slice(None) if first.positions is None else resolve_positions(first.positions, length)
            for k, (edit, own) in enumerate(zip(edits, idx, strict=True)):
                if own.numel() == 0:
                    continue
                block = act[k * rows : (k + 1) * rows]
                i = own.to(act.device)
                view = block[:, where]
                view[..., i] = edit(layer, own, view[..., i]).to(act.device, act.dtype)
                block[:, where] = view
            return act

        hooks.append((info.hook_name(layer, first.unit), hook))
    with model.hooks(fwd_hooks=hooks):
        yield
