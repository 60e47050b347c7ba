"""The data model: `NeuronScores` (a score per neuron) and `NeuronSet` (a mask of neurons).

Both are plain data over the grid ``[n_layers, d_mlp]`` of one model, saved as
safetensors (the tensor) + JSON (provenance), never pickled. The JSON sidecar
carries the SHA-256 of the tensor file, so a reader never accepts a tensor with
another run's provenance.
"""

from __future__ import annotations

import dataclasses
import html
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import torch
from jaxtyping import Float, Int, Shaped
from torch import Tensor

from tasklens._version import __version__
from tasklens.data.provenance import plain, tensor_hash
from tasklens.errors import TasklensError, TasklensWarning
from tasklens.io import load_artifact, save_artifact

#: how a score combines over prompts, for `NeuronScores.__add__`
REDUCTIONS = ("sum", "mean", "none")
#: a set's meta key: the fingerprint of the model it was loaded for with ``allow_other_model=True``
ALLOWED_ON = "allowed_on_model_fingerprint"


def check_shape(tensor: Tensor, shape: tuple[int, int], what: str) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise TasklensError(
            f"{what} has shape {tuple(tensor.shape)} but the model's neuron grid is {tuple(shape)} "
            "(n_layers, d_mlp): it was made for another model; recompute it for this one"
        )


def _check_model(
    meta: dict[str, Any],
    model,
    what: str,
    allow_other_model: bool,
    anyway: str = "pass allow_other_model=True to use it anyway",
) -> bool:
    """Compare an artifact's recorded model with ``model``: True when it is the same, False
    (with a warning) when another model is allowed; otherwise an error ending in ``anyway``."""
    from tasklens.data.provenance import model_fingerprint
    from tasklens.models import ModelInfo

    info = ModelInfo.of(model)
    recorded, name = meta.get("model_fingerprint"), meta.get("model")
    if recorded:
        same = recorded == model_fingerprint(model)
    else:  # files written before fingerprints: compare the model specs
        same = name in (None, "", info.name)
    if same:
        return True
    message = (
        f"{what} was made on model {name!r} but is being used with {info.name!r}, a model with other "
        f"weights; recompute it on this model, or {anyway}"
    )
    if not allow_other_model:
        raise TasklensError(message)
    warnings.warn(message, TasklensWarning, stacklevel=3)
    return False


def _load_checked(
    path: str | Path, kind: str, shape, model, allow_other_model: bool, check_values
) -> tuple[Tensor, dict[str, Any]]:
    """`tasklens.io.load_artifact`, then ``check_values(values, meta)``, then the grid and the
    model it was made on.

    The model's identity is read from the sidecar (a set keeps it in its ``meta``)."""
    values, meta = load_artifact(path, kind)
    check_values(values, meta)
    if model is not None:
        from tasklens.models import ModelInfo

        shape = ModelInfo.of(model).shape
    what = f"{kind} file {str(path)!r}"
    if shape is not None:
        check_shape(values, shape, what)
    if model is not None:
        recorded = meta.get("meta", meta) if kind == "NeuronSet" else meta
        if not _check_model(recorded, model, what, allow_other_model) and kind == "NeuronSet":
            from tasklens.data.provenance import model_fingerprint

            # interventions accept the set on this model, as its loader allowed
            meta.setdefault("meta", {})[ALLOWED_ON] = model_fingerprint(model)
    return values, meta


def _whole(value) -> int | None:
    """``value`` as an int if it is a whole number (a Python, numpy or 0-d torch integer), else None."""
    import numbers

    if isinstance(value, Tensor) and value.ndim == 0 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def _grid(shape) -> tuple[int, int]:
    values = tuple(shape) if isinstance(shape, tuple | list | torch.Size) else None
    numbers_ = [_whole(v) for v in values] if values is not None else []
    if values is None or len(values) != 2 or any(v is None or v < 1 for v in numbers_):
        raise TasklensError(
            f"A neuron grid is (n_layers, d_mlp), two positive whole numbers, got {shape!r}; use "
            "ModelInfo.of(model).shape"
        )
    return (numbers_[0], numbers_[1])


def _pair(pair) -> tuple[int, int]:
    items = tuple(pair.tolist() if isinstance(pair, Tensor) else pair) if hasattr(pair, "__len__") else ()
    whole = [_whole(v) for v in items]
    if len(items) != 2 or None in whole:
        raise TasklensError(
            f"A neuron is a (layer, index) pair of whole numbers, got {pair!r}; e.g. "
            "from_pairs([(1, 3)], shape)"
        )
    return whole[0], whole[1]


def _known(cls, meta: dict[str, Any]) -> dict[str, Any]:
    """The sidecar keys ``cls`` takes; unknown keys (from newer versions) are ignored."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in meta.items() if k in names}


def ranking(values: Float[Tensor, "layer neuron"]) -> Int[Tensor, " n"]:
    """Flat neuron indices from the highest score down; ties keep index order.

    The one ordering every top-k in tasklens uses (selection, cumulativity bands,
    benchmarks), so a set and the curve that removes it agree.
    """
    flat = values.detach().flatten()
    if not torch.isfinite(flat).all():
        raise TasklensError(
            "Scores contain NaN or inf (changed after they were made?); they cannot be ranked: recompute them"
        )
    return flat.argsort(descending=True, stable=True)


class _Artifact:
    """Loading shared by `NeuronScores` and `NeuronSet` (a tensor + JSON sidecar pair)."""

    kind: ClassVar[str]

    @classmethod
    def load(
        cls,
        path: str | Path,
        shape: tuple[int, int] | None = None,
        *,
        model=None,
        allow_other_model: bool = False,
    ):
        """Load from ``path`` (.safetensors + .json); with ``model`` (or ``shape``) given, check
        it was made for that model (an error, or a warning with ``allow_other_model=True``)."""

        def check(values: Tensor, meta: dict[str, Any]) -> None:
            cls._check_values(path, values, meta)

        values, meta = _load_checked(path, cls.kind, shape, model, allow_other_model, check)
        return cls._from_file(values, meta)


@dataclass
class NeuronScores(_Artifact):
    """A score for every MLP neuron of one model, for one task and method.

    Attributes:
        values: ``[n_layers, d_mlp]`` float scores (higher = more important).
        model: the model spec.
        task: task name.
        method: scorer name.
        task_hash: `Task.data_hash` of the data scored.
        params: the scorer's parameters (plain data).
        unit: neuron unit scored (``hook_post``, ``hook_pre``, ``hook_pre_linear``).
        n_prompts: prompts scored.
        n_tokens: token positions the statistic was taken over.
        reduction: how the score combines over prompts: ``"sum"`` (a sum over prompts,
            the gradient and patching scores), ``"mean"`` (a mean over ``n_tokens``
            tokens) or ``"none"`` (cannot be combined, e.g. average precision).
        model_fingerprint: `tasklens.data.provenance.model_fingerprint` of the model.
        version: tasklens version that produced it.

    Scores of the same model, method and unit add up with ``+`` (e.g. two halves of
    a task's prompts): sums add, means are weighted by their token counts.
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
    reduction: str = "sum"
    model_fingerprint: str = ""
    version: str = __version__

    kind: ClassVar[str] = "NeuronScores"

    def __post_init__(self) -> None:
        if not isinstance(self.values, Tensor) or self.values.ndim != 2:
            shape = (
                tuple(self.values.shape) if isinstance(self.values, Tensor) else type(self.values).__name__
            )
            raise TasklensError(f"NeuronScores needs a [n_layers, d_mlp] tensor, got {shape}")
        if not self.values.is_floating_point():
            self.values = self.values.float()
        if self.reduction not in REDUCTIONS:
            raise TasklensError(f"Unknown reduction {self.reduction!r}; choose one of {list(REDUCTIONS)}")
        self.params = plain(dict(self.params))
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

    def provenance(self) -> dict[str, Any]:
        """How the scores appear in another artifact's provenance: task, method, tensor hash."""
        return {"scores": self.task, "method": self.method, "sha256": tensor_hash(self.values)}

    def metadata(self) -> dict[str, Any]:
        meta = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "values"}
        return {"kind": self.kind, **meta, "shape": list(self.shape)}

    def save(self, path: str | Path) -> Path:
        """Write ``path.safetensors`` and ``path.json``; returns the tensor file's path."""
        return save_artifact(path, self.values.float(), self.metadata())

    @staticmethod
    def _check_values(path, values: Tensor, meta: dict[str, Any]) -> None:
        if not values.is_floating_point():
            raise TasklensError(f"{str(path)!r} holds {values.dtype} values, not scores; recompute them")

    @classmethod
    def _from_file(cls, values: Tensor, meta: dict[str, Any]) -> NeuronScores:
        return cls(values=values, **_known(cls, meta))

    # --- reading ------------------------------------------------------------------
    def ranking(self) -> Int[Tensor, " n"]:
        """Flat neuron indices, best first, ties in index order (see `ranking`)."""
        return ranking(self.values)

    def top(self, k: int) -> list[tuple[int, int, float]]:
        """The ``k`` highest-scoring neurons as (layer, index, score), ties by index."""
        d = self.values.shape[1]
        flat = self.values.flatten()
        return [(int(i) // d, int(i) % d, float(flat[i])) for i in self.ranking()[:k]]

    def to_frame(self, k: int | None = None) -> pd.DataFrame:
        """The top ``k`` neurons (all when None) as a frame: rank, layer, neuron, score."""
        top = self.top(self.values.numel() if k is None else k)
        frame = pd.DataFrame(top, columns=["layer", "neuron", "score"])
        frame.insert(0, "rank", range(1, len(frame) + 1))
        return frame

    def per_layer(self, k: int) -> list[int]:
        """How many of the top ``k`` neurons each layer holds."""
        counts = torch.zeros(self.shape[0], dtype=torch.long)
        layers = self.ranking()[:k] // self.shape[1]
        counts.index_add_(0, layers, torch.ones_like(layers))
        return counts.tolist()

    def show(self, k: int = 10):
        """Display the summary in a notebook (or return it as text elsewhere)."""
        try:
            from IPython.display import HTML, display
        except ImportError:
            return repr(self)
        display(HTML(self._repr_html_(k)))
        return None

    def _repr_html_(self, k: int = 10) -> str:
        head = (
            f"<b>NeuronScores</b> {html.escape(self.method)} on <b>{html.escape(self.task)}</b> "
            f"({self.n_prompts} prompts), model {html.escape(str(self.model))}, unit {self.unit}, "
            f"shape {list(self.shape)}"
        )
        one_percent = max(1, round(0.01 * self.values.numel()))
        layers = ", ".join(str(c) for c in self.per_layer(one_percent))
        top = self.to_frame(k).to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0)
        return f"<div>{head}<br>top 1 % ({one_percent}) per layer: [{layers}]{top}</div>"

    def __repr__(self) -> str:
        return (
            f"NeuronScores(method={self.method!r}, task={self.task!r}, model={self.model!r}, "
            f"unit={self.unit!r}, shape={list(self.shape)}, n_prompts={self.n_prompts})"
        )

    # --- combining ------------------------------------------------------------------
    def __add__(self, other: NeuronScores) -> NeuronScores:
        if isinstance(other, int) and other == 0:  # sum([...]) starts from 0
            return self
        if not isinstance(other, NeuronScores):
            return NotImplemented
        for name in ("shape", "method", "unit", "reduction", "params"):
            if getattr(self, name) != getattr(other, name):
                raise TasklensError(
                    f"Cannot add scores with different {name}: {getattr(self, name)!r} and "
                    f"{getattr(other, name)!r}; only scores of one method, unit and model add up"
                )
        if (
            self.model_fingerprint
            and other.model_fingerprint
            and self.model_fingerprint != other.model_fingerprint
        ):
            raise TasklensError(f"Cannot add scores of different models ({self.model!r}, {other.model!r})")
        if self.reduction == "none":
            raise TasklensError(
                f"{self.method} scores do not add up over prompts (reduction 'none'); "
                "score the combined prompts in one call instead"
            )
        if self.reduction == "sum":
            values = self.values + other.values
        else:
            total = max(self.n_tokens + other.n_tokens, 1)
            values = (self.values * self.n_tokens + other.values * other.n_tokens) / total
        task = self.task if self.task == other.task else f"{self.task}+{other.task}"
        return dataclasses.replace(
            self,
            values=values,
            task=task,
            task_hash=f"{self.task_hash}+{other.task_hash}",
            n_prompts=self.n_prompts + other.n_prompts,
            n_tokens=self.n_tokens + other.n_tokens,
        )

    __radd__ = __add__


@dataclass
class NeuronSet(_Artifact):
    """A set of MLP neurons of one model: a boolean mask with set algebra.

    Attributes:
        mask: ``[n_layers, d_mlp]`` bool, True for members (a 0/1 tensor of another dtype is
            converted).
        name: label used in tables and plots.
        meta: provenance (the scores it was selected from, the selection rule).
    """

    mask: Shaped[Tensor, "layer neuron"]
    name: str = "neurons"
    meta: dict[str, Any] = field(default_factory=dict)

    kind: ClassVar[str] = "NeuronSet"

    def __post_init__(self) -> None:
        if not isinstance(self.mask, Tensor) or self.mask.ndim != 2:
            shape = tuple(self.mask.shape) if isinstance(self.mask, Tensor) else type(self.mask).__name__
            raise TasklensError(f"NeuronSet needs a [n_layers, d_mlp] mask, got {shape}")
        if self.mask.dtype != torch.bool:
            values = self.mask.unique()
            if not bool(((values == 0) | (values == 1)).all()):
                raise TasklensError(
                    f"NeuronSet {self.name!r} needs a 0/1 mask, got values such as "
                    f"{values[:5].tolist()}; select neurons from scores with tasklens.selection"
                )
            self.mask = self.mask.bool()
        self.meta = plain(dict(self.meta))

    @classmethod
    def from_pairs(cls, pairs, shape: tuple[int, int], name: str = "neurons") -> NeuronSet:
        """Build a set from (layer, index) pairs on the grid ``shape`` (``(n_layers, d_mlp)``, e.g.
        ``ModelInfo.of(model).shape``)."""
        shape = _grid(shape)
        mask = torch.zeros(shape, dtype=torch.bool)
        for pair in pairs:
            layer, index = _pair(pair)
            if not (0 <= layer < shape[0] and 0 <= index < shape[1]):
                raise TasklensError(
                    f"Neuron ({layer}, {index}) is outside the grid {shape}: layers 0..{shape[0] - 1}, "
                    f"neurons 0..{shape[1] - 1} (negative numbers do not count from the end)"
                )
            mask[layer, index] = True
        return cls(mask, name)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mask.shape)  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(self.mask.sum())

    def __contains__(self, item: tuple[int, int]) -> bool:
        layer, index = item
        if not (0 <= layer < self.shape[0] and 0 <= index < self.shape[1]):
            return False
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

    def check_model(self, model) -> NeuronSet:
        """Refuse ``model`` unless it has the set's grid and is the model the set was found on
        (as its ``meta`` records; a set without that record fits any model of its grid)."""
        from tasklens.data.provenance import model_fingerprint
        from tasklens.models import ModelInfo

        self.check_fits(ModelInfo.of(model).shape)
        if ALLOWED_ON in self.meta and self.meta[ALLOWED_ON] == model_fingerprint(model):
            return self
        anyway = (
            "to use it anyway, load it with allow_other_model=True or drop its provenance: "
            "NeuronSet(neurons.mask, neurons.name)"
        )
        _check_model(self.meta, model, f"Neuron set {self.name!r}", False, anyway)
        return self

    def provenance(self) -> dict[str, Any]:
        """How the set appears in another artifact's provenance: its `summary`."""
        return self.summary()

    def summary(self) -> dict[str, Any]:
        """Plain-data identity of the set (for provenance): name, size, per-layer counts, hash."""
        return {
            "name": self.name,
            "size": len(self),
            "per_layer": self.counts_per_layer(),
            "sha256": tensor_hash(self.mask),
        }

    def _repr_html_(self) -> str:
        return (
            f"<div><b>NeuronSet</b> {html.escape(self.name)}: {len(self)} of {self.mask.numel()} neurons; "
            f"per layer {self.counts_per_layer()}</div>"
        )

    def __repr__(self) -> str:
        return f"NeuronSet(name={self.name!r}, size={len(self)}, shape={list(self.shape)})"

    def save(self, path: str | Path) -> Path:
        meta = {
            "kind": self.kind,
            "name": self.name,
            "meta": self.meta,
            "shape": list(self.shape),
            "size": len(self),
            "version": __version__,
        }
        return save_artifact(path, self.mask.to(torch.uint8), meta)

    @staticmethod
    def _check_values(path, values: Tensor, meta: dict[str, Any]) -> None:
        if values.dtype not in (torch.uint8, torch.bool) or not bool((values <= 1).all()):
            raise TasklensError(
                f"{str(path)!r} holds {values.dtype} values {values.flatten()[:4].tolist()}..., not a "
                "0/1 neuron mask (a scores tensor saved as a set?); select a set with tasklens.selection"
            )
        claims = {"shape": list(values.shape), "size": int(values.sum())}
        for key, actual in claims.items():
            if key in meta and meta[key] != actual:
                raise TasklensError(
                    f"{str(path)!r}: the sidecar says {key} {meta[key]} but the mask has {actual}; "
                    "the pair does not belong together: recompute the set"
                )

    @classmethod
    def _from_file(cls, values: Tensor, meta: dict[str, Any]) -> NeuronSet:
        return cls(values.bool(), meta.get("name", "neurons"), meta.get("meta", {}))
