"""Norms that compute once: `lean_norms`.

TransformerLens 4's normalization bridge computes every norm twice on its native path: once
by hand to give ``hook_scale`` and ``hook_normalized`` their values, then again by the wrapped
Hugging Face module, whose output it returns when no hook edits those values. On a small model
the norms are a large share of a forward pass (the organism's exact ablation spends about as
long in them as in its MLPs). `lean_norms` lets each norm bridge of a model call the wrapped
module alone whenever none of its hook points has a hook, which returns the very same tensor;
with any hook there (``run_with_cache``, an intervention on a norm, a backward hook) the
bridge's own forward runs as before.
"""

from __future__ import annotations

import types

import torch

from tasklens.models.info import is_bridge

_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_POINTS = ("hook_in", "hook_scale", "hook_normalized", "hook_out")


def _hooked(module) -> bool:
    return bool(getattr(module, "fwd_hooks", None) or getattr(module, "bwd_hooks", None)) or any(
        getattr(module, name, None) for name in _HOOKS
    )


def _global_hooks() -> bool:
    from torch.nn.modules import module

    names = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks")
    return any(getattr(module, name, None) for name in names)


def _lean_forward(self, hidden_states: torch.Tensor, **kwargs):
    points = [getattr(self, name, None) for name in _POINTS]
    if kwargs or any(p is None or _hooked(p) for p in points) or _global_hooks():
        return type(self).forward(self, hidden_states, **kwargs)
    result = self.original_component(hidden_states)
    return result if result.dtype == hidden_states.dtype else result.to(hidden_states.dtype)


def lean_norms(model) -> int:
    """Let ``model``'s norm bridges run the wrapped norm alone while no hook watches them (see the
    module's docstring); returns how many were changed. Idempotent; a classic HookedTransformer,
    or a TransformerLens whose norm bridge is not the one described, is left as it is."""
    if not is_bridge(model):
        return 0
    try:
        from transformer_lens.model_bridge.generalized_components.normalization import NormalizationBridge
    except ImportError:
        return 0
    changed = 0
    for module in model.modules():
        own = isinstance(module, NormalizationBridge) and type(module).forward is NormalizationBridge.forward
        if not own or "forward" in module.__dict__:
            continue
        native = module.use_native_layernorm_autograd or getattr(module.config, "layer_norm_folding", False)
        if not native or not hasattr(NormalizationBridge, "_hf_autograd_forward_with_hooks"):
            continue  # the hand-written norm is what this bridge returns: leave it
        if module.original_component is None:
            continue
        # into the instance's own __dict__: a bridge passes attribute assignments on to the module it wraps
        module.__dict__["forward"] = types.MethodType(_lean_forward, module)
        changed += 1
    return changed
