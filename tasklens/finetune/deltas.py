"""Trainable changes to the parameters of a neuron set, and nothing else.

`NeuronDeltas` holds, for the neurons of a `NeuronSet`, one zero-initialised
tensor per layer and projection: ``[k, d_model]`` for the neurons' rows of the
input projections (and ``[k]`` for their bias entries) and for their columns of
the output projection. While `applied`, forward hooks on the Hugging Face
projections add them to the projections' outputs:

    in / gate:  y[..., idx] += x @ D.T + d_bias         out:  y += x[..., idx] @ D

which is the forward of the weights with the deltas added to those rows, with a
gradient for the deltas only (the frozen weights get none, and an optimizer over
`tensors` keeps state for the selected rows only). `merge` writes the deltas
into the weights (the bridge's ``W_in``, ``W_out`` then show them) and `restore`
puts the original rows back bit for bit. A coefficient per example scales the
deltas, which is how W-NCFT mixes several tasks' deltas per input.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from jaxtyping import Float
from torch import Tensor

from tasklens.data.neurons import NeuronSet
from tasklens.errors import TasklensError
from tasklens.finetune.projections import Projection, mlp_projections
from tasklens.models import ModelInfo


def _scale(add: Tensor, coefficient: Tensor | None) -> Tensor:
    if coefficient is None:
        return add
    c = coefficient.to(add.device, add.dtype)
    if c.ndim == 0:
        return add * c
    if c.shape[0] != add.shape[0]:
        raise TasklensError(
            f"W-NCFT coefficients are given for {c.shape[0]} examples but the batch has {add.shape[0]}"
        )
    return add * c.view(-1, *([1] * (add.ndim - 1)))


class NeuronDeltas:
    """The trainable parameters of a neuron set's neurons, as deltas on the model's weights.

    Args:
        model: a TransformerLens bridge (its Hugging Face module is edited).
        neurons: the neurons whose parameters train.
        bias: also train the neurons' bias entries of the input projections (where the
            model has them: GPT-2, GPT-NeoX).

    Attributes:
        tensors: name -> trainable tensor, e.g. ``"2.gate"`` ``[k, d_model]``, ``"2.in_bias"``
            ``[k]``, ``"2.out"`` ``[k, d_model]`` for the k selected neurons of layer 2.
        index: per layer, the selected neuron indices (ascending).
    """

    def __init__(self, model, neurons: NeuronSet, bias: bool = True) -> None:
        info = ModelInfo.of(model)
        neurons.check_fits(info.shape)
        if len(neurons) == 0:
            raise TasklensError(f"Neuron set {neurons.name!r} is empty; select at least one neuron to train")
        self.model = model
        self.neurons = neurons
        self.projections = mlp_projections(model)
        self.index = [neurons.mask[layer].nonzero().flatten() for layer in range(info.n_layers)]
        dtype = self.projections[0]["in"].weight.dtype
        device = self.projections[0]["in"].weight.device
        d_model = int(model.cfg.d_model)
        self.tensors: dict[str, Tensor] = {}
        for layer, roles in enumerate(self.projections):
            k = len(self.index[layer])
            if k == 0:
                continue
            for role, projection in roles.items():
                self.tensors[f"{layer}.{role}"] = torch.zeros(k, d_model, dtype=dtype, device=device)
                if bias and projection.has_neuron_bias:
                    self.tensors[f"{layer}.{role}_bias"] = torch.zeros(k, dtype=dtype, device=device)
        for tensor in self.tensors.values():
            tensor.requires_grad_(True)
        self._saved: dict[str, Tensor] | None = None

    # --- reading -----------------------------------------------------------------------
    def parameters(self) -> list[Tensor]:
        """The trainable tensors (what an optimizer updates)."""
        return list(self.tensors.values())

    def n_parameters(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    def layers(self) -> Iterator[tuple[int, Tensor, dict[str, Projection]]]:
        for layer, roles in enumerate(self.projections):
            if len(self.index[layer]):
                yield layer, self.index[layer], roles

    def load_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Set the deltas from saved tensors (same neurons, same shapes)."""
        if set(tensors) != set(self.tensors):
            raise TasklensError(
                f"Saved deltas hold {sorted(tensors)} but this neuron set needs {sorted(self.tensors)}; "
                "they were trained for another neuron set or model"
            )
        with torch.no_grad():
            for name, value in tensors.items():
                if value.shape != self.tensors[name].shape:
                    raise TasklensError(
                        f"Saved delta {name!r} has shape {tuple(value.shape)}, expected "
                        f"{tuple(self.tensors[name].shape)}"
                    )
                self.tensors[name].copy_(value)

    # --- the forward with the deltas -------------------------------------------------------
    @contextmanager
    def applied(self, coefficient: float | Float[Tensor, " batch"] | None = None) -> Iterator[NeuronDeltas]:
        """Add the deltas to every forward pass inside the block (hooks removed on exit).

        Args:
            coefficient: None (weight 1), a number, or one weight per example of every
                batch run inside the block (W-NCFT's per-input mixing).
        """
        if self._saved is not None:
            raise TasklensError("These deltas are merged into the weights already; restore() them first")
        coef = None if coefficient is None else torch.as_tensor(coefficient)
        with ExitStack() as stack:
            for layer, idx, roles in self.layers():
                for role, projection in roles.items():
                    handle = projection.module.register_forward_hook(self._hook(layer, role, idx, coef))
                    stack.callback(handle.remove)
            yield self

    def _hook(self, layer: int, role: str, idx: Tensor, coefficient: Tensor | None):
        delta = self.tensors[f"{layer}.{role}"]
        bias = self.tensors.get(f"{layer}.{role}_bias")

        if role == "out":

            def hook_out(module, args, output):
                x = args[0]
                return output + _scale(x[..., idx.to(x.device)] @ delta, coefficient)

            return hook_out

        def hook_in(module, args, output):
            add = args[0] @ delta.T
            if bias is not None:
                add = add + bias
            return output.index_add(-1, idx.to(output.device), _scale(add, coefficient))

        return hook_in

    # --- writing into the weights ------------------------------------------------------
    def merge(self) -> None:
        """Add the deltas to the model's weights in place; `restore` undoes it bit for bit."""
        if self._saved is not None:
            raise TasklensError("These deltas are merged already")
        saved: dict[str, Tensor] = {}
        with torch.no_grad():
            for layer, idx, roles in self.layers():
                for role, projection in roles.items():
                    saved[f"{layer}.{role}"] = projection.neuron_rows(idx).clone()
                    projection.add_to_neurons(idx, self.tensors[f"{layer}.{role}"].detach())
                    bias = self.tensors.get(f"{layer}.{role}_bias")
                    if bias is not None:
                        saved[f"{layer}.{role}_bias"] = projection.bias.detach()[idx].clone()
                        projection.bias.index_add_(0, idx.to(projection.bias.device), bias.detach())
        self._saved = saved

    def restore(self) -> None:
        """Put back the weights `merge` changed (a no-op when nothing is merged)."""
        if self._saved is None:
            return
        with torch.no_grad():
            for layer, idx, roles in self.layers():
                for role, projection in roles.items():
                    projection.set_neurons(idx, self._saved[f"{layer}.{role}"])
                    if f"{layer}.{role}_bias" in self._saved:
                        projection.bias.index_copy_(0, idx, self._saved[f"{layer}.{role}_bias"])
        self._saved = None

    @property
    def merged(self) -> bool:
        return self._saved is not None

    def __repr__(self) -> str:
        return (
            f"NeuronDeltas({self.neurons.name!r}, {len(self.neurons)} neurons, "
            f"{self.n_parameters():,} parameters, merged={self.merged})"
        )
