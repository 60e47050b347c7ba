"""Full fine-tuning's trainable parameters: every weight of the Hugging Face module.

The baseline beside `NeuronDeltas`, with the same interface (``tensors``,
``parameters``, ``applied``, ``merge``, ``restore``), so the trainer and the
experiments treat both alike. The weights train in place, so `restore` needs a
copy of the original weights: it costs one model's worth of memory (measured in
`FullParameters.snapshot_bytes`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from tasklens.errors import TasklensError


class FullParameters:
    """Every parameter of ``model.original_model``, trained in place.

    Args:
        model: a TransformerLens bridge.
        keep_original: keep a copy of the weights for `restore` (one model's worth of memory);
            without it `restore` raises (sequential fine-tuning that never goes back).

    Attributes:
        tensors: Hugging Face parameter name -> the parameter itself (tied weights once).
    """

    def __init__(self, model, keep_original: bool = True) -> None:
        self.model = model
        self.tensors: dict[str, Tensor] = {}
        seen: set[int] = set()
        for name, parameter in model.original_model.named_parameters(remove_duplicate=False):
            if id(parameter) in seen:
                continue
            seen.add(id(parameter))
            self.tensors[name.replace("._original_component", "")] = parameter
        self._original = (
            {name: p.detach().clone() for name, p in self.tensors.items()} if keep_original else None
        )
        self._changed = False
        self._restored = False

    def parameters(self) -> list[Tensor]:
        return list(self.tensors.values())

    def n_parameters(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    @property
    def snapshot_bytes(self) -> int:
        """Memory held by the copy of the original weights that `restore` needs."""
        return sum(t.numel() * t.element_size() for t in (self._original or {}).values())

    @contextmanager
    def applied(self, coefficient=None) -> Iterator[FullParameters]:
        """Make the parameters trainable inside the block (their flags are put back on exit)."""
        if coefficient is not None:
            raise TasklensError(
                "Full fine-tuning has no per-example coefficients; W-NCFT mixes neuron deltas"
            )
        flags = {name: p.requires_grad for name, p in self.tensors.items()}
        for p in self.tensors.values():
            p.requires_grad_(True)
        self._changed = True
        try:
            yield self
        finally:
            for name, p in self.tensors.items():
                p.requires_grad_(flags[name])

    def load_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Set the parameters to saved values (a checkpoint of this model)."""
        if set(tensors) != set(self.tensors):
            missing = sorted(set(self.tensors) ^ set(tensors))[:5]
            raise TasklensError(f"Saved weights do not match this model's parameters (e.g. {missing})")
        with torch.no_grad():
            for name, value in tensors.items():
                self.tensors[name].copy_(value)
        self._changed, self._restored = True, False

    def merge(self) -> None:
        """Nothing to do: full fine-tuning trains the weights themselves (after `restore` the
        trained weights are gone, and merging again raises)."""
        if self._restored:
            raise TasklensError(
                "restore() put the original weights back and discarded the fully fine-tuned ones; "
                "train again (or save a checkpoint before restoring and load it)"
            )

    def restore(self) -> None:
        """Put every parameter back to its value when this object was made."""
        if self._original is None:
            raise TasklensError(
                "These full fine-tuning parameters kept no copy of the original weights "
                "(keep_original=False), so they cannot be restored"
            )
        with torch.no_grad():
            for name, p in self.tensors.items():
                p.copy_(self._original[name])
        self._restored = self._changed or self._restored
        self._changed = False

    @property
    def merged(self) -> bool:
        return self._changed

    def __repr__(self) -> str:
        return f"FullParameters({self.n_parameters():,} parameters)"


@contextmanager
def preserved(model) -> Iterator[FullParameters]:
    """Every weight of ``model`` is put back on exit, whatever happened inside (costs one copy)."""
    snapshot = FullParameters(model)
    try:
        yield snapshot
    finally:
        snapshot.restore()
