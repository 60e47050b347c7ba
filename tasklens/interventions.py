"""Causal interventions on neuron sets: plain data, applied as context managers.

An `Intervention` says what to do (its ``kind`` and parameters) to which neurons
(a `NeuronSet`), at which unit and positions. It is plain data: `to_dict` records
exactly what a run did, and ``with intervention.apply(model):`` makes every
forward pass inside the block (including each step of greedy decoding) see the
change. Interventions nest; each removes exactly its own hooks on exit, even when
an exception is raised.

Kinds are registered in `INTERVENTIONS` (``zero``, ``mean``, ``resample``,
``amplify``, ``clamp``); a kind is a function ``(model, intervention) -> edit``
where ``edit(layer, idx, current) -> new`` returns the new values of the selected
neurons. Register your own with `tasklens.register_intervention`.

`ablate`, `amplify` and `clamp` are the short forms:
``with ablate(model, neurons):`` is ``with Intervention("zero", neurons).apply(model):``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tasklens.data.neurons import NeuronSet, check_shape
from tasklens.data.provenance import plain
from tasklens.errors import TasklensError
from tasklens.models import DEFAULT_UNIT, ModelInfo
from tasklens.models.hooks import mean_activations, stream_activations
from tasklens.registry import Registry
from tasklens.tasks.task import Task

#: ``edit(layer, idx, current) -> new``: ``current`` is ``[..., len(idx)]`` (the selected
#: neurons at the edited positions); the result has the same shape.
Edit = Callable[[int, Tensor, Tensor], Tensor]
Kind = Callable[[Any, "Intervention"], Edit]
INTERVENTIONS: Registry[Kind] = Registry("intervention")


@dataclass(frozen=True, eq=False)
class Intervention:
    """What to do to which neurons, as plain data.

    Args:
        kind: a registered kind: ``"zero"`` (ablation, the papers' default),
            ``"mean"`` (replace by the mean activation over ``source``'s tokens, or
            by ``mean``), ``"resample"`` (by activations of random tokens of
            ``source``), ``"amplify"`` (multiply by ``factor``), ``"clamp"`` (set to
            ``value``).
        neurons: the neurons (None for a template applied to many sets, see `on`).
        unit: the neuron unit edited.
        positions: token positions edited in each forward call (negative counts
            from the end: ``(-1,)`` is the newest token, also during cached
            generation); None edits every position.
        factor: ``amplify``'s factor (2.0: the knowledge-neuron convention).
        value: ``clamp``'s value.
        source: ``mean`` / ``resample``: the task whose activations are used.
        mean: ``mean``: a ``[n_layers, d_mlp]`` tensor to use instead of ``source``.
        seed: ``resample``'s random seed.
        params: parameters of a user-registered kind.
    """

    kind: str = "zero"
    neurons: NeuronSet | None = None
    unit: str = DEFAULT_UNIT
    positions: tuple[int, ...] | None = None
    factor: float = 2.0
    value: float = 0.0
    source: Task | None = None
    mean: Float[Tensor, "layer neuron"] | None = None
    seed: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        INTERVENTIONS.get(self.kind)
        if self.positions is not None:
            positions = tuple(self.positions)
            if not all(isinstance(p, int) and not isinstance(p, bool) for p in positions):
                raise TasklensError(f"positions must be whole numbers, got {list(positions)}")
            object.__setattr__(self, "positions", positions)
        for name in ("factor", "value"):
            number = getattr(self, name)
            if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
                raise TasklensError(f"The intervention's {name} must be a finite number, got {number!r}")
        if self.neurons is not None and not isinstance(self.neurons, NeuronSet):
            raise TasklensError(
                f"neurons must be a NeuronSet, got {type(self.neurons).__name__}; "
                "select one with tasklens.selection or NeuronSet.from_pairs"
            )

    def on(self, neurons: NeuronSet) -> Intervention:
        """The same intervention on other neurons."""
        return dataclasses.replace(self, neurons=neurons)

    def prepared(self, model) -> Intervention:
        """The same intervention with its data-dependent parts computed once for ``model``
        (the ``mean`` of ``source``), for applying it to many sets."""
        if self.kind == "mean" and self.mean is None and self.source is not None:
            return dataclasses.replace(self, mean=mean_activations(model, self.source, self.unit))
        return self

    @property
    def label(self) -> str:
        """Short human name: ``zero ablation``, ``amplify x2``, ``clamp = 5``..."""
        if self.kind == "amplify":
            return f"amplify x{self.factor:g}"
        if self.kind == "clamp":
            return f"clamp = {self.value:g}"
        if self.kind in ("zero", "mean", "resample"):
            return f"{self.kind} ablation"
        return self.kind

    def to_dict(self) -> dict[str, Any]:
        """Everything the intervention does, as plain data (neurons and tasks as summaries)."""
        data = {"kind": self.kind, "unit": self.unit, "positions": self.positions}
        if self.neurons is not None:
            data["neurons"] = self.neurons.summary()
        if self.kind == "amplify":
            data["factor"] = self.factor
        if self.kind == "clamp":
            data["value"] = self.value
        if self.kind in ("mean", "resample"):
            data["source"] = plain(self.source)
            data["mean"] = plain(self.mean)
        if self.kind == "resample":
            data["seed"] = self.seed
        if self.params:
            data["params"] = plain(dict(self.params))
        return plain(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], neurons: NeuronSet | None = None) -> Intervention:
        """Rebuild from `to_dict` data (the neurons and source task are given back as objects)."""
        keep = {"kind", "unit", "positions", "factor", "value", "seed", "params"}
        fields_ = {k: v for k, v in data.items() if k in keep and v is not None}
        if "positions" in fields_:
            fields_["positions"] = tuple(fields_["positions"])
        return cls(**fields_, neurons=neurons)

    def check(self, model) -> Intervention:
        """Refuse, before any forward pass, what cannot be applied to ``model``: an empty set, a
        set of another grid or found on another model, a ``mean`` of another shape or with NaN."""
        info = ModelInfo.of(model)
        info.check_unit(self.unit)
        if self.neurons is not None:
            if len(self.neurons) == 0:
                raise TasklensError(f"Neuron set {self.neurons.name!r} is empty; select at least one neuron")
            self.neurons.check_model(model)
        if self.kind == "mean" and self.mean is not None:
            check_mean(self.mean, info.shape)
        return self

    @contextmanager
    def apply(self, model) -> Iterator[Intervention]:
        """Apply to ``model`` inside a ``with`` block; hooks are removed on exit, even on error."""
        if self.neurons is None:
            raise TasklensError(
                f"This {self.label} has no neurons; give neurons=, or use .on(neurons) to apply it to a set"
            )
        self.check(model)
        edit = INTERVENTIONS.get(self.kind)(model, self)
        with edit_neurons(model, self.neurons, edit, self.unit, self.positions):
            yield self


@contextmanager
def edit_neurons(
    model,
    neurons: NeuronSet,
    edit: Edit,
    unit: str = DEFAULT_UNIT,
    positions: Sequence[int] | None = None,
) -> Iterator[None]:
    """The one mechanism under every intervention: hooks that replace the selected
    neurons' activations ``current`` by ``edit(layer, idx, current)``."""
    info = ModelInfo.of(model)
    hooks = []
    for layer in range(info.n_layers):
        idx = neurons.mask[layer].nonzero().flatten()
        if idx.numel() == 0:
            continue

        def hook(act: Tensor, hook, layer=layer, idx=idx) -> Tensor:
            act = act.clone()
            i = idx.to(act.device)
            where = slice(None) if positions is None else _positions(positions, act.shape[1])
            view = act[:, where]
            view[..., i] = edit(layer, idx, view[..., i]).to(act.device, act.dtype)
            act[:, where] = view
            return act

        hooks.append((info.hook_name(layer, unit), hook))
    with model.hooks(fwd_hooks=hooks):
        yield


def _positions(positions: Sequence[int], length: int) -> Tensor:
    bad = [p for p in positions if not -length <= p < length]
    if bad:
        raise TasklensError(
            f"Positions {bad} are outside this forward pass's {length} tokens; give positions within "
            f"the prompt (0..{length - 1}, or negative counting from the end)"
        )
    return torch.tensor(list(positions))


def check_mean(mean: Any, shape: tuple[int, int]) -> Tensor:
    """``mean`` if it is a finite tensor of the model's neuron grid ``shape``."""
    if not isinstance(mean, Tensor):
        raise TasklensError(
            f"mean must be a torch tensor of shape {tuple(shape)} (n_layers, d_mlp), got "
            f"{type(mean).__name__}; convert it with torch.as_tensor"
        )
    check_shape(mean, shape, "The mean for mean ablation")
    bad = ~torch.isfinite(mean)
    if bad.any():
        raise TasklensError(
            f"The mean for mean ablation holds NaN or inf at {int(bad.sum())} neurons (first: layer, "
            f"neuron {tuple(bad.nonzero()[0].tolist())}); recompute it (or give source= to compute it)"
        )
    return mean


# --- the built-in kinds ---------------------------------------------------------------
@INTERVENTIONS.register("zero")
def _zero(model, intervention: Intervention) -> Edit:
    """Set the neurons to 0 (zero ablation)."""
    return lambda layer, idx, current: torch.zeros_like(current)


@INTERVENTIONS.register("amplify")
def _amplify(model, intervention: Intervention) -> Edit:
    """Multiply the neurons by ``factor``."""
    return lambda layer, idx, current: current * intervention.factor


@INTERVENTIONS.register("clamp")
def _clamp(model, intervention: Intervention) -> Edit:
    """Set the neurons to ``value``."""
    return lambda layer, idx, current: torch.full_like(current, intervention.value)


@INTERVENTIONS.register("mean")
def _mean(model, intervention: Intervention) -> Edit:
    """Replace the neurons by their mean over ``source``'s tokens (or by ``mean``)."""
    mean = intervention.prepared(model).mean
    if mean is None:
        raise TasklensError(
            "Mean ablation needs source= (the Task whose mean activation is used) or mean= "
            "(a [n_layers, d_mlp] tensor)"
        )
    mean = check_mean(mean, ModelInfo.of(model).shape).detach()
    return lambda layer, idx, current: mean[layer, idx].to(current.device, current.dtype).expand_as(current)


@INTERVENTIONS.register("resample")
def _resample(model, intervention: Intervention) -> Edit:
    """Replace each position's values by those of a random token of ``source``."""
    if intervention.source is None:
        raise TasklensError("Resample ablation needs source=: the Task whose activations are drawn")
    info = ModelInfo.of(model)
    names = info.hook_names(intervention.unit)
    mask = intervention.neurons.mask
    pools: list[list[Tensor]] = [[] for _ in names]
    for batch, store in stream_activations(model, intervention.source, names, 32):
        real = batch.attention_mask.bool()
        for layer, name in enumerate(names):
            idx = mask[layer].nonzero().flatten().to(store[name].device)
            pools[layer].append(store[name][real][:, idx].cpu())
    pool = [torch.cat(p) for p in pools]
    generator = torch.Generator().manual_seed(intervention.seed)

    def edit(layer: int, idx: Tensor, current: Tensor) -> Tensor:
        draw = torch.randint(len(pool[layer]), current.shape[:-1], generator=generator)
        return pool[layer][draw]

    return edit


# --- the short forms ----------------------------------------------------------------------
@contextmanager
def ablate(
    model,
    neurons: NeuronSet,
    mode: str = "zero",
    mean: Float[Tensor, "layer neuron"] | None = None,
    source: Task | None = None,
    unit: str = DEFAULT_UNIT,
    positions: Sequence[int] | None = None,
    seed: int = 0,
) -> Iterator[Intervention]:
    """Ablate ``neurons``: ``mode`` ``"zero"`` (default, as in the three papers),
    ``"mean"`` (by ``mean`` or the mean over ``source``) or ``"resample"`` (from ``source``)."""
    if mode not in ("zero", "mean", "resample"):
        raise TasklensError(f"Unknown ablation mode {mode!r}; choose 'zero', 'mean' or 'resample'")
    positions = None if positions is None else tuple(positions)
    spec = Intervention(mode, neurons, unit, positions, mean=mean, source=source, seed=seed)
    with spec.apply(model):
        yield spec


@contextmanager
def amplify(
    model,
    neurons: NeuronSet,
    factor: float = 2.0,
    unit: str = DEFAULT_UNIT,
    positions: Sequence[int] | None = None,
) -> Iterator[Intervention]:
    """Multiply the selected activations by ``factor`` (2.0: the knowledge-neuron convention)."""
    positions = None if positions is None else tuple(positions)
    with Intervention("amplify", neurons, unit, positions, factor=factor).apply(model) as spec:
        yield spec


@contextmanager
def clamp(
    model,
    neurons: NeuronSet,
    value: float,
    unit: str = DEFAULT_UNIT,
    positions: Sequence[int] | None = None,
) -> Iterator[Intervention]:
    """Set the selected activations to ``value`` (e.g. to steer generation with one neuron)."""
    positions = None if positions is None else tuple(positions)
    with Intervention("clamp", neurons, unit, positions, value=value).apply(model) as spec:
        yield spec


__all__ = ["INTERVENTIONS", "Intervention", "ablate", "amplify", "clamp", "edit_neurons"]
