"""What every layer needs to know about a model's MLP neurons: `ModelInfo`.

It answers the shape questions (layers, MLP width, gated or not, neuron units) and is the
only place that spells TransformerLens hook names.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from tasklens.errors import TasklensError, check_choice

#: Neuron units: the per-neuron MLP tensors tasklens can score and intervene on.
#: ``hook_post`` is the activation multiplied into W_out (default everywhere);
#: ``hook_pre`` the (gate) pre-activation; ``hook_pre_linear`` the up projection
#: of gated (SwiGLU) MLPs.
UNITS = ("hook_post", "hook_pre", "hook_pre_linear")
DEFAULT_UNIT = "hook_post"


@dataclass(frozen=True)
class ModelInfo:
    """Plain description of a model's MLP neurons.

    Attributes:
        name: the spec the model was loaded from (``"organism"``, a folder, a hub name).
        n_layers: number of transformer blocks L.
        d_mlp: MLP hidden width F (neurons per layer).
        gated: whether the MLP is gated (SwiGLU: gate, up and down projections).
        n_ctx: context length in tokens.
        device: torch device string.
        dtype: torch dtype name.
    """

    name: str
    n_layers: int
    d_mlp: int
    gated: bool
    n_ctx: int
    device: str
    dtype: str
    bridge: bool = True

    @classmethod
    def of(cls, model) -> ModelInfo:
        """The facts about ``model``: a `TransformerBridge` (TransformerLens 3.9 or 4) or a
        classic ``HookedTransformer`` (TransformerLens 3), used as it is, never copied. The MLP
        width is read from the blocks' own weights (`mlp_width`), not from the config."""
        check_model(model)
        cfg = model.cfg
        return cls(
            name=str(getattr(cfg, "model_name", "") or "unknown"),
            n_layers=int(cfg.n_layers),
            d_mlp=mlp_width(model),
            gated=mlp_gated(model),
            n_ctx=int(cfg.n_ctx),
            device=str(cfg.device),
            dtype=str(cfg.dtype).removeprefix("torch."),
            bridge=is_bridge(model),
        )

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_layers, d_mlp)``: the shape of every per-neuron tensor in tasklens."""
        return (self.n_layers, self.d_mlp)

    @property
    def n_neurons(self) -> int:
        return self.n_layers * self.d_mlp

    @property
    def units(self) -> tuple[str, ...]:
        """The neuron units this model has (``hook_pre_linear`` only when gated)."""
        return UNITS if self.gated else ("hook_post", "hook_pre")

    def check_unit(self, unit: str) -> str:
        check_choice("neuron unit", unit, UNITS)
        if unit not in self.units:
            raise TasklensError(
                f"Neuron unit {unit!r} exists only in gated (SwiGLU) MLPs and {self.name!r} "
                f"is not gated; use one of {list(self.units)}"
            )
        return unit

    def hook_name(self, layer: int, unit: str = DEFAULT_UNIT) -> str:
        """TransformerLens name of a neuron unit, e.g. ``blocks.1.mlp.hook_post``."""
        self.check_unit(unit)
        if not 0 <= layer < self.n_layers:
            raise TasklensError(f"Layer {layer} out of range for {self.name!r} (0..{self.n_layers - 1})")
        return f"blocks.{layer}.mlp.{unit}"

    def hook_names(self, unit: str = DEFAULT_UNIT) -> list[str]:
        return [self.hook_name(layer, unit) for layer in range(self.n_layers)]

    def mlp_input_name(self, layer: int) -> str:
        """The normalised input of layer ``layer``'s MLP (what W_in / W_up multiply).

        On a classic HookedTransformer this hook holds the input before the norm's own
        weight: `mlp_input` turns it into what the MLP reads."""
        return f"blocks.{layer}.mlp.hook_in" if self.bridge else f"blocks.{layer}.ln2.hook_normalized"

    def mlp_output_name(self, layer: int) -> str:
        """The output of layer ``layer``'s down projection, before any post-MLP norm (on a classic
        HookedTransformer, which hooks no such point, the MLP's write to the residual stream)."""
        return f"blocks.{layer}.mlp.hook_out" if self.bridge else f"blocks.{layer}.hook_mlp_out"

    def residual_names(self, layer: int) -> dict[str, str]:
        """Layer ``layer``'s writes to the residual stream and its output:
        ``attn_out``, ``mlp_out`` and ``resid_post``."""
        return {
            "attn_out": f"blocks.{layer}.hook_attn_out",
            "mlp_out": f"blocks.{layer}.hook_mlp_out",
            "resid_post": f"blocks.{layer}.hook_resid_post",
        }

    @property
    def unembed_input_name(self) -> str:
        """The input of the unembedding (after the final norm)."""
        return "unembed.hook_in" if self.bridge else "ln_final.hook_normalized"


def mlp_weight(model, layer: int, name: str) -> Tensor:
    """Layer ``layer``'s MLP weight ``name`` (``W_in``, ``W_gate`` or ``W_out``), read from its
    block: the model-wide ``model.W_out`` and its kin stack every layer on each access."""
    return getattr(model.blocks[layer].mlp, name)


def check_model(model) -> None:
    """Refuse, naming what was given, anything that is not a TransformerLens model."""
    if not (hasattr(model, "cfg") and hasattr(model, "blocks") and callable(model)):
        raise TasklensError(
            f"Expected a model loaded with tasklens.load_model (a TransformerBridge or HookedTransformer), "
            f"got {type(model).__name__} {model!r:.60}; load one with load_model('organism') or "
            "load_model(folder)"
        )


#: each model's MLP width and whether it is gated (`mlp_width`, `mlp_gated`), read once
_MLPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def mlp_width(model) -> int:
    """The number of neurons in each layer's MLP, from the blocks' weights: the rows of each
    layer's down projection ``W_out``, which must agree with the columns of its input ``W_in``
    in every layer (the config's ``d_mlp`` is wrong for some families: OPT's ``ffn_dim``)."""
    return _mlp(model)[0]


def mlp_gated(model) -> bool:
    """Whether the MLP is gated (SwiGLU), from its modules: every layer's MLP has a ``W_gate``."""
    return _mlp(model)[1]


def _mlp(model) -> tuple[int, bool]:
    try:
        return _MLPS[model]
    except (KeyError, TypeError):
        pass
    widths, gates = set(), set()
    for layer, block in enumerate(model.blocks):
        try:
            w_in, w_out = block.mlp.W_in, block.mlp.W_out
        except AttributeError as error:
            raise TasklensError(
                f"tasklens cannot find the MLP of layer {layer} of {getattr(model.cfg, 'model_name', '?')!r} "
                f"({type(block).__name__} has no mlp.W_in / mlp.W_out: {error}); its family is not one "
                "tasklens supports (docs/conformance.md lists those it does)"
            ) from error
        if w_in.shape[-1] != w_out.shape[0]:
            raise TasklensError(
                f"Layer {layer}'s MLP reads into {w_in.shape[-1]} neurons but writes from {w_out.shape[0]}; "
                "tasklens cannot tell its width: this family is not one tasklens supports"
            )
        widths.add(int(w_out.shape[0]))
        gates.add(_has_gate(block.mlp, int(w_out.shape[0])))
    if len(widths) != 1 or len(gates) != 1:
        what = f"widths {sorted(widths)}" if len(widths) != 1 else "gated and ungated MLPs"
        raise TasklensError(
            f"The layers of {getattr(model.cfg, 'model_name', '?')!r} have MLPs of different shapes "
            f"({what}); tasklens needs one grid of layers x neurons, the same MLP in every layer"
        )
    found = (widths.pop(), gates.pop())
    try:
        _MLPS[model] = found
    except TypeError:
        pass
    return found


def _has_gate(mlp, width: int) -> bool:
    try:
        gate = mlp.W_gate
    except AttributeError:
        return False
    return gate is not None and gate.shape[-1] == width


def is_bridge(model) -> bool:
    """Whether ``model`` is a `TransformerBridge` (else a classic ``HookedTransformer``)."""
    return isinstance(model, TransformerBridge)
