"""Generic units: MLP neurons whose activation at position 0 dwarfs the rest.

Neurons that fire hugely on the first token (the BOS state every prompt shares: the
massive-activation and attention-sink units of Sun et al. 2024) matter to every task, so a
set that holds them hurts everything when ablated. `position_zero_profile` reports each
neuron's mean |activation| at position 0 against the other prompt positions; `generic_units`
flags those above a ratio, as a `NeuronSet` a user can exclude (``neurons - generic``) and
test a verdict with and without.
"""

from __future__ import annotations

import pandas as pd
import torch

from tasklens.data.neurons import NeuronSet
from tasklens.models import DEFAULT_UNIT, ModelInfo
from tasklens.models.hooks import position_means
from tasklens.tasks.task import Task


def position_zero_profile(
    model, task: Task, neurons: NeuronSet | None = None, unit: str = DEFAULT_UNIT, batch_size: int = 32
) -> pd.DataFrame:
    """Each neuron's mean |activation| at position 0 and over the other prompt positions.

    Args:
        task: the prompts read (their answers are not run).
        neurons: only these neurons (default: every neuron).

    Returns:
        One row per neuron: ``layer``, ``neuron``, ``position_0``, ``other_positions`` and
        ``ratio`` (position 0 over the others), largest ratio first.

    Example:
        >>> import tasklens
        >>> model = tasklens.load_model("organism")
        >>> task = tasklens.load_builtin("continent_of", "detection").head(8)
        >>> profile = position_zero_profile(model, task)
        >>> len(profile), list(profile.columns)
        (2048, ['layer', 'neuron', 'position_0', 'other_positions', 'ratio'])
    """
    info = ModelInfo.of(model)
    first, rest = position_means(model, task, unit, batch_size, absolute=True, with_answers=False)
    first, rest = first.double(), rest.double()
    pairs = (
        neurons.pairs()
        if neurons is not None
        else [(a, b) for a in range(info.shape[0]) for b in range(info.shape[1])]
    )
    layer = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    index = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    frame = pd.DataFrame(
        {
            "layer": layer.numpy(),
            "neuron": index.numpy(),
            "position_0": first[layer, index].numpy(),
            "other_positions": rest[layer, index].numpy(),
        }
    )
    frame["ratio"] = frame["position_0"] / frame["other_positions"].where(frame["other_positions"] > 0)
    return frame.sort_values("ratio", ascending=False, ignore_index=True)


def generic_units(
    model, task: Task, ratio: float = 10.0, unit: str = DEFAULT_UNIT, batch_size: int = 32
) -> NeuronSet:
    """The neurons whose mean |activation| at position 0 is at least ``ratio`` times their mean
    over the other prompt positions, as a `NeuronSet` named ``"generic"``.

    Example:
        >>> import tasklens
        >>> model = tasklens.load_model("organism")
        >>> task = tasklens.load_builtin("continent_of", "detection").head(8)
        >>> generic = generic_units(model, task)
        >>> generic.name, generic.shape
        ('generic', (4, 512))
    """
    profile = position_zero_profile(model, task, unit=unit, batch_size=batch_size)
    flagged = profile[profile["ratio"] >= ratio]
    info = ModelInfo.of(model)
    mask = torch.zeros(info.shape, dtype=torch.bool)
    mask[torch.tensor(flagged["layer"].tolist()), torch.tensor(flagged["neuron"].tolist())] = True
    return NeuronSet(mask, "generic", {"selection": f"position 0 |activation| >= {ratio:g} x the rest"})
