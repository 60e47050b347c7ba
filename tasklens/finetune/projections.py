"""The MLP projections of a model, found on the Hugging Face module under the bridge.

A neuron j of layer l owns row j of the input projections (W_in / up, and W_gate
in a SwiGLU MLP), their bias entry j where they have a bias, and column j of the
output projection (W_out / down). The bridge wraps each projection; its
``original_component`` is the Hugging Face module (``nn.Linear`` for Llama's
gate_proj / up_proj / down_proj and GPT-NeoX's dense_h_to_4h / dense_4h_to_h,
``Conv1D`` with the transposed ``[in, out]`` weight for GPT-2's c_fc / c_proj).
Editing those modules is editing ``model.original_model``, which the bridge runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tasklens.errors import TasklensError
from tasklens.models import ModelInfo

#: the projections a neuron owns a slice of: "gate" (gated MLPs only), "in" and "out"
ROLES = ("gate", "in", "out")


@dataclass(frozen=True)
class Projection:
    """One MLP projection of one layer.

    Attributes:
        layer: the block index.
        role: ``"gate"``, ``"in"`` (read the residual stream, one output feature per
            neuron) or ``"out"`` (writes it, one input feature per neuron).
        module: the Hugging Face module (``nn.Linear`` or ``Conv1D``).
        name: its name in ``model.original_model`` with the bridge's wrappers removed
            (e.g. ``model.layers.0.mlp.gate_proj``).
        transposed: the weight is stored ``[in, out]`` (``Conv1D``) rather than ``[out, in]``.
    """

    layer: int
    role: str
    module: torch.nn.Module
    name: str
    transposed: bool

    @property
    def weight(self) -> Tensor:
        return self.module.weight

    @property
    def bias(self) -> Tensor | None:
        return getattr(self.module, "bias", None)

    @property
    def has_neuron_bias(self) -> bool:
        """Whether each neuron owns a bias entry here (input projections with a bias)."""
        return self.role != "out" and self.bias is not None

    def neuron_rows(self, index: Int[Tensor, " k"]) -> Float[Tensor, "k d_model"]:
        """The selected neurons' parameter vectors in this projection, one row per neuron."""
        w = self.weight.detach()
        by_output = self.role != "out"
        if by_output != self.transposed:
            return w[index]
        return w[:, index].T

    def add_to_neurons(self, index: Int[Tensor, " k"], rows: Float[Tensor, "k d_model"]) -> None:
        """Add ``rows`` to the selected neurons' parameters in place (no other entry is touched)."""
        by_output = self.role != "out"
        dim = 0 if by_output != self.transposed else 1
        source = rows if dim == 0 else rows.T
        with torch.no_grad():
            self.weight.index_add_(dim, index.to(self.weight.device), source.to(self.weight.dtype))

    def set_neurons(self, index: Int[Tensor, " k"], rows: Float[Tensor, "k d_model"]) -> None:
        """Overwrite the selected neurons' parameters with ``rows`` (no other entry is touched)."""
        by_output = self.role != "out"
        dim = 0 if by_output != self.transposed else 1
        source = rows if dim == 0 else rows.T
        with torch.no_grad():
            self.weight.index_copy_(dim, index.to(self.weight.device), source.to(self.weight.dtype))


def _hf_name(model, module: torch.nn.Module) -> str:
    for name, candidate in model.original_model.named_modules():
        if candidate is module:
            return name.replace("._original_component", "")
    return "?"


def _is_transposed(module: torch.nn.Module, d_in: int, d_out: int) -> bool:
    if isinstance(module, torch.nn.Linear):
        return False
    shape = tuple(module.weight.shape)
    if type(module).__name__ == "Conv1D" and shape == (d_in, d_out):
        return True
    raise TasklensError(
        f"Cannot fine-tune an MLP projection of type {type(module).__name__} with weight shape {shape}: "
        "tasklens.finetune knows nn.Linear ([out, in]) and Hugging Face Conv1D ([in, out]) projections"
    )


def mlp_projections(model) -> list[dict[str, Projection]]:
    """Per layer, the MLP's projections by role (``"gate"`` only in gated MLPs).

    Raises:
        TasklensError: when the bridge runs processed (folded) weights, which bypass the
            Hugging Face projections, or a projection's shape does not fit the neuron grid.
    """
    info = ModelInfo.of(model)
    d_model = int(model.cfg.d_model)
    layers = []
    for layer in range(info.n_layers):
        mlp = model.blocks[layer].mlp
        if getattr(mlp, "_use_processed_weights", False):
            raise TasklensError(
                "The model runs TransformerLens's processed (folded) weights "
                "(enable_compatibility_mode), which bypass the Hugging Face projections that "
                "tasklens.finetune trains; load it with tasklens.load_model (Hugging Face numerics)"
            )
        roles = {}
        for role in ROLES:
            bridge = getattr(mlp, role, None)
            if bridge is None:
                continue
            module = getattr(bridge, "original_component", None)
            if module is None or not hasattr(module, "weight"):
                raise TasklensError(
                    f"Layer {layer}'s MLP has no Hugging Face module behind its {role!r} projection"
                )
            d_in, d_out = (info.d_mlp, d_model) if role == "out" else (d_model, info.d_mlp)
            transposed = _is_transposed(module, d_in, d_out)
            expected = (d_in, d_out) if transposed else (d_out, d_in)
            if tuple(module.weight.shape) != expected:
                raise TasklensError(
                    f"Layer {layer}'s {role!r} projection has weight shape {tuple(module.weight.shape)}, "
                    f"expected {expected} for d_model={d_model}, d_mlp={info.d_mlp}"
                )
            roles[role] = Projection(layer, role, module, _hf_name(model, module), transposed)
        if "in" not in roles or "out" not in roles or info.gated != ("gate" in roles):
            raise TasklensError(
                f"Layer {layer}'s MLP exposes the projections {sorted(roles)}; tasklens.finetune needs "
                "'in' and 'out' (and 'gate' for gated MLPs)"
            )
        layers.append(roles)
    return layers
