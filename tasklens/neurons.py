"""The data model: `NeuronScores` (a score per neuron) and `NeuronSet` (a mask of neurons).

Both are plain data over the grid ``[n_layers, d_mlp]`` of one model, saved as
safetensors (the tensor) + JSON (provenance), never pickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float
from safetensors.torch import load_file, save_file
from torch import Tensor

import tasklens
from tasklens.errors import TasklensError
from tasklens.io import atomic_path, write_json


def _paths(path: str | Path) -> tuple[Path, Path]:
    base = Path(path)
    if base.suffix in (".safetensors", ".json"):
        base = base.with_suffix("")
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


def _save(path: str | Path, tensor: Tensor, meta: dict[str, Any]) -> Path:
    tensor_path, json_path = _paths(path)
    with atomic_path(tensor_path) as tmp:
        save_file({"values": tensor.detach().cpu().contiguous()}, str(tmp))
    write_json(json_path, meta)
    return tensor_path


def _load(path: str | Path, kind: str) -> tuple[Tensor, dict[str, Any]]:
    tensor_path, json_path = _paths(path)
    for p in (tensor_path, json_path):
        if not p.is_file():
            raise TasklensError(f"Cannot load {kind}: {str(p)!r} does not exist (need .safetensors + .json)")
    meta = json.loads(json_path.read_text())
    if meta.get("kind") != kind:
        raise TasklensError(f"{str(json_path)!r} holds a {meta.get('kind')!r}, not a {kind}")
    return load_file(str(tensor_path))["values"], meta


def check_shape(tensor: Tensor, shape: tuple[int, int], what: str) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise TasklensError(
            f"{what} has shape {tuple(tensor.shape)} but the model's neuron grid is {tuple(shape)} "
            "(n_layers, d_mlp): it was made for another model; recompute it for this one"
        )


@dataclass
class NeuronScores:
    """A score for every MLP neuron of one model, for one task and method.

    Attributes:
        values: ``[n_layers, d_mlp]`` float scores (higher = more important).
        model: the model spec.
        task: task name.
        task_hash: `Task.data_hash` of the data scored.
        method: scorer name.
        params: the scorer's parameters.
        unit: neuron unit scored (``hook_post``, ``hook_pre``, ``hook_pre_linear``).
        n_prompts: prompts scored.
        n_tokens: token positions the statistic was taken over.
        version: tasklens version that produced it.
    """

    values: Float[Tensor, "layer neuron"]
    model: str
    task: str
    method: str
    task_hash: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    unit: str = "hook_post"
    n_prompts: int = 0
    n_tokens: int = 0
    version: str = tasklens.__version__

    def __post_init__(self) -> None:
        if self.values.ndim != 2:
            raise TasklensError(
                f"NeuronScores needs a [n_layers, d_mlp] tensor, got shape {tuple(self.values.shape)}"
            )
        bad = ~torch.isfinite(self.values)
        if bad.any():
            layers = sorted({int(i) for i in bad.nonzero()[:, 0]})
            raise TasklensError(
                f"Scores for task {self.task!r} ({self.method}) contain NaN or inf in layer(s) {layers}; "
                "check the model's numerics (dtype) and the task's answers"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.values.shape)  # type: ignore[return-value]

    def metadata(self) -> dict[str, Any]:
        return {
            "kind": "NeuronScores",
            "model": self.model,
            "task": self.task,
            "task_hash": self.task_hash,
            "method": self.method,
            "params": self.params,
            "unit": self.unit,
            "n_prompts": self.n_prompts,
            "n_tokens": self.n_tokens,
            "version": self.version,
            "shape": list(self.shape),
        }

    def save(self, path: str | Path) -> Path:
        """Write ``path.safetensors`` and ``path.json``; returns the tensor file's path."""
        return _save(path, self.values.float(), self.metadata())

    @classmethod
    def load(cls, path: str | Path, shape: tuple[int, int] | None = None) -> NeuronScores:
        """Load scores; with ``shape`` given, check they fit that model's neuron grid."""
        values, meta = _load(path, "NeuronScores")
        if shape is not None:
            check_shape(values, shape, f"Scores file {str(path)!r}")
        meta = {k: v for k, v in meta.items() if k not in ("kind", "shape")}
        return cls(values=values, **meta)

    def top(self, k: int) -> list[tuple[int, int, float]]:
        """The ``k`` highest-scoring neurons as (layer, index, score)."""
        flat = self.values.flatten()
        k = min(k, flat.numel())
        vals, idx = flat.topk(k)
        d = self.values.shape[1]
        return [(int(i) // d, int(i) % d, float(v)) for v, i in zip(vals, idx, strict=True)]


@dataclass
class NeuronSet:
    """A set of MLP neurons of one model: a boolean mask with set algebra.

    Attributes:
        mask: ``[n_layers, d_mlp]`` bool, True for members.
        name: label used in tables and plots.
        meta: provenance (the scores it was selected from, the selection rule).
    """

    mask: Bool[Tensor, "layer neuron"]
    name: str = "neurons"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mask.ndim != 2:
            raise TasklensError(
                f"NeuronSet needs a [n_layers, d_mlp] mask, got shape {tuple(self.mask.shape)}"
            )
        self.mask = self.mask.bool()

    @classmethod
    def from_pairs(cls, pairs, shape: tuple[int, int], name: str = "neurons") -> NeuronSet:
        """Build a set from (layer, index) pairs."""
        mask = torch.zeros(shape, dtype=torch.bool)
        for layer, index in pairs:
            if not (0 <= layer < shape[0] and 0 <= index < shape[1]):
                raise TasklensError(f"Neuron ({layer}, {index}) is outside the grid {shape}")
            mask[layer, index] = True
        return cls(mask, name)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mask.shape)  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(self.mask.sum())

    def __contains__(self, item: tuple[int, int]) -> bool:
        layer, index = item
        return bool(self.mask[layer, index])

    def _other(self, other: NeuronSet) -> Tensor:
        if other.shape != self.shape:
            raise TasklensError(
                f"Cannot combine neuron sets of shapes {self.shape} and {other.shape}: "
                "they belong to different models"
            )
        return other.mask

    def __or__(self, other: NeuronSet) -> NeuronSet:
        return NeuronSet(self.mask | self._other(other), f"{self.name}|{other.name}")

    def __and__(self, other: NeuronSet) -> NeuronSet:
        return NeuronSet(self.mask & self._other(other), f"{self.name}&{other.name}")

    def __sub__(self, other: NeuronSet) -> NeuronSet:
        return NeuronSet(self.mask & ~self._other(other), f"{self.name}-{other.name}")

    def union(self, other: NeuronSet) -> NeuronSet:
        return self | other

    def intersection(self, other: NeuronSet) -> NeuronSet:
        return self & other

    def difference(self, other: NeuronSet) -> NeuronSet:
        return self - other

    def counts_per_layer(self) -> list[int]:
        return [int(c) for c in self.mask.sum(dim=1)]

    def pairs(self) -> list[tuple[int, int]]:
        """Members as (layer, index) pairs, layer-major."""
        return [(int(a), int(b)) for a, b in self.mask.nonzero()]

    def renamed(self, name: str) -> NeuronSet:
        return NeuronSet(self.mask.clone(), name, dict(self.meta))

    def check_fits(self, shape: tuple[int, int]) -> NeuronSet:
        check_shape(self.mask, shape, f"Neuron set {self.name!r}")
        return self

    def save(self, path: str | Path) -> Path:
        meta = {
            "kind": "NeuronSet",
            "name": self.name,
            "meta": self.meta,
            "shape": list(self.shape),
            "size": len(self),
            "version": tasklens.__version__,
        }
        return _save(path, self.mask.to(torch.uint8), meta)

    @classmethod
    def load(cls, path: str | Path, shape: tuple[int, int] | None = None) -> NeuronSet:
        values, meta = _load(path, "NeuronSet")
        if shape is not None:
            check_shape(values, shape, f"Neuron set file {str(path)!r}")
        return cls(values.bool(), meta.get("name", "neurons"), meta.get("meta", {}))
