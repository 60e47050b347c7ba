"""Models: loading them as TransformerLens bridges (`loading`), the ones tasklens knows by
name and downloads (`zoo`), what every layer needs to know about their neurons (`info`),
and streaming their activations and gradients through hooks (`hooks`)."""

from tasklens.models.forward import forward_keeping, logits_at
from tasklens.models.info import DEFAULT_UNIT, UNITS, ModelInfo, is_bridge, mlp_weight
from tasklens.models.loading import (
    cache_filled,
    cached_calls,
    enable_kv_cache,
    load_model,
    mlp_input,
    model_folder,
    weights_folded,
)
from tasklens.models.zoo import ORGANISM, ORGANISM_DIR

__all__ = [
    "DEFAULT_UNIT",
    "ORGANISM",
    "ORGANISM_DIR",
    "UNITS",
    "ModelInfo",
    "cache_filled",
    "cached_calls",
    "enable_kv_cache",
    "forward_keeping",
    "is_bridge",
    "load_model",
    "logits_at",
    "mlp_input",
    "mlp_weight",
    "model_folder",
    "weights_folded",
]
