"""A fine-tuning checkpoint: a folder written whole or not at all.

    checkpoint.json          provenance: model, task hash, neuron set, hyperparameters,
                             step, losses, optimizer and RNG description, file hashes
    deltas.safetensors       the trained tensors: for neuron fine-tuning the deltas of the
                             selected rows (and the neuron indices), never the whole model
    optimizer.safetensors    AdamW's moments and step per trained tensor, and the RNG state

The folder is replaced atomically (`tasklens.io.atomic_dir`), so a run killed
while writing leaves the previous checkpoint; the JSON names the tensor files'
SHA-256, so a reader never mixes files of two checkpoints.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor

from tasklens.errors import TasklensError
from tasklens.io import atomic_dir

META = "checkpoint.json"
TRAINED = "deltas.safetensors"
OPTIMIZER = "optimizer.safetensors"
KIND = "FinetuneCheckpoint"


def _bytes(tensors: dict[str, Tensor]) -> bytes:
    return save_tensors({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()})


def write_checkpoint(
    folder: str | Path, trained: dict[str, Tensor], optimizer: dict[str, Tensor], meta: dict[str, Any]
) -> Path:
    """Write (or atomically replace) the checkpoint folder; returns its path."""
    folder = Path(folder)
    data = {TRAINED: _bytes(trained), OPTIMIZER: _bytes(optimizer)}
    meta = {
        "kind": KIND,
        **meta,
        "files": {name: hashlib.sha256(blob).hexdigest() for name, blob in data.items()},
    }
    with atomic_dir(folder, has_checkpoint, "fine-tuning checkpoint") as tmp:
        for name, blob in data.items():
            (tmp / name).write_bytes(blob)
        (tmp / META).write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return folder


def has_checkpoint(folder: str | Path) -> bool:
    return (Path(folder) / META).is_file()


def read_meta(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / META
    if not path.is_file():
        raise TasklensError(f"{str(folder)!r} holds no fine-tuning checkpoint (no {META})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise TasklensError(
            f"{str(path)!r} is not valid JSON ({error}); the checkpoint is damaged"
        ) from error
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise TasklensError(f"{str(path)!r} is not a tasklens fine-tuning checkpoint")
    return meta


def read_checkpoint(folder: str | Path) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Any]]:
    """The trained tensors, the optimizer/RNG tensors and the provenance of a checkpoint."""
    folder = Path(folder)
    meta = read_meta(folder)
    out = []
    for name in (TRAINED, OPTIMIZER):
        blob = (folder / name).read_bytes() if (folder / name).is_file() else b""
        if hashlib.sha256(blob).hexdigest() != meta.get("files", {}).get(name):
            raise TasklensError(
                f"{str(folder / name)!r} is missing or does not match {META} (hash differs); "
                "the checkpoint is damaged: delete the folder and train again"
            )
        try:
            out.append(load_tensors(blob))
        except (SafetensorError, ValueError, RuntimeError) as error:
            raise TasklensError(
                f"{str(folder / name)!r} is not a readable safetensors file ({error})"
            ) from error
    return out[0], out[1], meta
