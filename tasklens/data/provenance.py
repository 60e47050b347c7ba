"""Provenance as plain data: what produced an artifact, in a form JSON can hold.

`plain` turns the values that appear in scorer parameters and intervention
records (tasks, neuron sets, tensors, paths, dataclasses) into JSON-able data by
construction, so writing an artifact's sidecar can never fail half-way.
`model_fingerprint` identifies a model's weights, so an artifact made on one model
is not silently applied to another with the same neuron grid.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tasklens.models import mlp_weight


def tensor_hash(tensor: Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    t = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def plain(value: Any) -> Any:
    """``value`` as JSON-able data (dicts, lists, strings, numbers, booleans, None).

    Objects with a ``provenance()`` method (tasks, neuron scores and sets) become what it
    returns, tensors ``{"shape", "dtype", "sha256"}`` (scalars their value), callables
    their qualified name; anything else its ``repr``.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if callable(getattr(value, "provenance", None)) and not isinstance(value, type):
        return value.provenance()
    if isinstance(value, Tensor):
        if value.numel() == 1:
            return plain(value.item())
        return {"shape": list(value.shape), "dtype": str(value.dtype), "sha256": tensor_hash(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return plain(value.item())
    if callable(value):
        return getattr(value, "__qualname__", None) or repr(value)
    return repr(value)


def model_fingerprint(model) -> str:
    """A short hash of a model's architecture and a few weight slices.

    Two loads of the same weights give the same fingerprint; a model with the same
    neuron grid but other weights (another checkpoint, random init) does not.
    """
    cfg = model.cfg
    digest = hashlib.sha256(
        json.dumps([int(cfg.n_layers), int(cfg.d_mlp), int(cfg.d_model), int(cfg.d_vocab)]).encode()
    )
    with torch.no_grad():
        for weights in (
            mlp_weight(model, 0, "W_out")[:4],
            mlp_weight(model, -1, "W_out")[-4:],
            mlp_weight(model, 0, "W_in")[:, :4],
        ):
            digest.update(weights.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
