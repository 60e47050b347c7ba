"""A fine-tuning checkpoint: a folder written whole or not at all.

    checkpoint.json          provenance: model, task hash, neuron set, hyperparameters,
                             step, losses, optimizer and RNG description, file hashes
    deltas.safetensors       the trained tensors: for neuron fine-tuning the deltas of the
                             selected rows (and the neuron indices), never the whole model
    optimizer.safetensors    AdamW's moments and step per trained tensor, and the RNG state

The folder is replaced atomically (`tasklens.io.atomic_dir`), so a run killed
while writing leaves the previous checkpoint; the JSON names the tensor files'
SHA-256, and each tensor file's metadata names the step and the SHA-256 of the
JSON's content, so a reader never mixes files of two checkpoints nor trusts an
edited JSON.
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

from tasklens import io
from tasklens.errors import TasklensError
from tasklens.io import atomic_dir, check_own_folder

META = "checkpoint.json"
TRAINED = "deltas.safetensors"
OPTIMIZER = "optimizer.safetensors"
KIND = "FinetuneCheckpoint"
WHAT = "a fine-tuning checkpoint"


def _meta_hash(meta: dict[str, Any]) -> str:
    """SHA-256 of the provenance's content (not of its formatting), without the file hashes."""
    content = {k: v for k, v in meta.items() if k != "files"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, allow_nan=False).encode()).hexdigest()


def _bytes(tensors: dict[str, Tensor], binding: dict[str, str]) -> bytes:
    return save_tensors(
        {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, metadata=binding
    )


def _binding(blob: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file: its header is an 8-byte length and JSON."""
    try:
        size = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8 : 8 + size])
        return dict(header.get("__metadata__") or {})
    except (ValueError, AttributeError):
        return {}


def write_checkpoint(
    folder: str | Path, trained: dict[str, Tensor], optimizer: dict[str, Tensor], meta: dict[str, Any]
) -> Path:
    """Write (or atomically replace) the checkpoint folder; returns its path."""
    folder = Path(folder)
    meta = {"kind": KIND, **meta}
    binding = {"kind": KIND, "step": str(meta["step"]), "checkpoint_sha256": _meta_hash(meta)}
    data = {TRAINED: _bytes(trained, binding), OPTIMIZER: _bytes(optimizer, binding)}
    meta["files"] = {name: hashlib.sha256(blob).hexdigest() for name, blob in data.items()}
    text = json.dumps(meta, indent=2, allow_nan=False) + "\n"
    with atomic_dir(folder, WHAT, foreign=foreign_files) as tmp:
        for name, blob in data.items():
            (tmp / name).write_bytes(blob)
        (tmp / META).write_text(text, encoding="utf-8")
    return folder


def has_checkpoint(folder: str | Path) -> bool:
    return (Path(folder) / META).is_file()


def foreign_files(folder: str | Path) -> list[str]:
    """What in ``folder`` is not the checkpoint's: ``checkpoint.json`` lists the tensor files with
    their hashes (and binds itself to them), so it is the folder's marker (`tasklens.io.foreign_files`)."""
    try:
        files = read_meta(folder).get("files")
    except TasklensError:
        return io.foreign_files(folder, {})
    files = files if isinstance(files, dict) else {}
    listed = {name: files.get(name) for name in (TRAINED, OPTIMIZER) if isinstance(files.get(name), str)}
    return io.foreign_files(folder, {META: None, **listed})


def is_checkpoint_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a tasklens fine-tuning checkpoint and nothing else (so replacing
    it loses nothing of the user's)."""
    return has_checkpoint(folder) and not foreign_files(folder)


def check_checkpoint_dir(folder: str | Path) -> Path:
    """``folder`` (resolved) if checkpoints may be written there: missing, empty, or a tasklens
    fine-tuning checkpoint and nothing else; raises a `TasklensError` naming the user's files
    before any training otherwise."""
    return check_own_folder(folder, WHAT, foreign=foreign_files)


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
    recover = f"restore {META} as it was, or delete the folder and train again"
    out = []
    for name in (TRAINED, OPTIMIZER):
        blob = (folder / name).read_bytes() if (folder / name).is_file() else b""
        if hashlib.sha256(blob).hexdigest() != meta.get("files", {}).get(name):
            raise TasklensError(
                f"{str(folder / name)!r} is missing or does not match {META} (hash differs); "
                "the checkpoint is damaged: delete the folder and train again"
            )
        binding = _binding(blob)
        if binding.get("step") != str(meta.get("step")):
            raise TasklensError(
                f"{META} in {str(folder)!r} says step {meta.get('step')!r} but {name} was written at step "
                f"{binding.get('step', 'unknown')}: the checkpoint was edited or mixed from two; {recover}"
            )
        if binding.get("checkpoint_sha256") != _meta_hash(meta):
            raise TasklensError(
                f"{META} in {str(folder)!r} was edited after the checkpoint was written (its content no "
                f"longer matches {name}); {recover}"
            )
        try:
            out.append(load_tensors(blob))
        except (SafetensorError, ValueError, RuntimeError) as error:
            raise TasklensError(
                f"{str(folder / name)!r} is not a readable safetensors file ({error})"
            ) from error
    return out[0], out[1], meta
