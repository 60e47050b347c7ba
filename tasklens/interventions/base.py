"""The `Intervention` base class, the registry of kinds, and the hook machinery under them all.

Each kind of intervention is one small frozen dataclass (a subclass of `Intervention`)
that owns its parameters: `tasklens.interventions.kinds` holds the built-in ones.
``Intervention("amplify", neurons, factor=3.0)`` builds the class registered under
``"amplify"``; `register` adds a kind of your own, which then works by name from Python,
the CLI (``--intervention``, ``--intervention-param k=v``) and a run's TOML.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from tasklens.data.neurons import NeuronSet, check_shape
from tasklens.data.provenance import plain
from tasklens.errors import TasklensError
from tasklens.models import DEFAULT_UNIT, ModelInfo
from tasklens.models.hooks import owned_hooks
from tasklens.registry import Registry
from tasklens.tasks.tokenize import RUNNING

#: ``edit(layer, idx, current) -> new``: ``current`` is ``[..., len(idx)]`` (the selected
#: neurons at the edited positions); the result has the same shape.
Edit = Callable[[int, Tensor, Tensor], Tensor]
INTERVENTIONS: Registry[type[Intervention]] = Registry("intervention")

#: the fields every kind has; the others are the kind's own parameters
COMMON = ("neurons", "unit", "positions")
#: field metadata of a parameter `to_dict` records only as a summary (a task, a tensor):
#: `from_dict` leaves it at its default
SUMMARY = {"summary": True}
#: keywords of the single intervention dataclass tasklens had before kinds owned their parameters;
#: building by name accepts them for every kind and drops them where the kind has no such parameter
SHARED_KEYWORDS = ("factor", "value", "source", "mean", "seed")


class _ByName(type):
    """``Intervention(kind, ...)`` builds the class registered as ``kind``; a kind's own class
    (``Amplify(neurons, factor=3.0)``) is built as any dataclass."""

    def __call__(cls, *args, **kwargs):
        if cls is Intervention:
            return build(*args, **kwargs)
        return super().__call__(*args, **kwargs)


@dataclass(frozen=True, eq=False)
class Intervention(metaclass=_ByName):
    """What to do to which neurons, as plain data; each kind is a subclass owning its parameters.

    ``Intervention(kind, neurons, unit, positions, **parameters)`` builds the kind registered
    as ``kind`` (``"zero"``, ``"mean"``, ``"resample"``, ``"amplify"``, ``"clamp"`` or your
    own); ``INTERVENTIONS.get(kind)`` is its class.

    Args:
        neurons: the neurons (None for a template applied to many sets, see `on`).
        unit: the neuron unit edited.
        positions: token positions edited in each forward call; None edits every position.
            Negative positions count from the end of the call's sequence: in greedy decoding
            (left-padded prompts, cached steps) ``(-1,)`` is the newest token at each step.
            In a teacher-forced evaluation (``exact_match`` and the other teacher-forced
            metrics are one forward pass over BOS + prompt + answer, right-padded) positions
            count within that pass: 0 is BOS, and ``(-1,)`` is the last position of the padded
            batch, not the prompt's. A position past the real tokens of some sequence of such a
            batch (it would edit only padding there) raises a `TasklensError`.

    A kind of your own is a frozen dataclass subclass with its parameters as fields (give them
    defaults, or use ``kw_only=True``) and an `edit` method (or `edit_for` where the edit needs
    the model); register it with `tasklens.register_intervention`. Set ``pointwise = True`` on
    it when its edit at each position depends only on the values there: evaluation then runs a
    prefix the prompts share once (`runs_in_pieces`).

    Examples:
        >>> import torch
        >>> from tasklens import Intervention, NeuronSet, load_model
        >>> model = load_model("organism")
        >>> neurons = NeuronSet.from_pairs([(1, 3), (1, 200)], (4, 512), "two")
        >>> spec = Intervention("clamp", neurons, value=5.0)
        >>> type(spec).__name__, spec.label, spec.to_dict()["value"]
        ('Clamp', 'clamp = 5', 5.0)
        >>> with spec.apply(model):
        ...     _, cache = model.run_with_cache("Paris is in", names_filter="blocks.1.mlp.hook_post")
        >>> bool(torch.all(cache["blocks.1.mlp.hook_post"][..., [3, 200]] == 5.0))
        True
    """

    neurons: NeuronSet | None = None
    unit: str = DEFAULT_UNIT
    positions: tuple[int, ...] | None = None

    #: the name the kind is registered under (set by `register`)
    name: ClassVar[str | None] = None
    #: whether the edit at each position depends only on the values there (no random draws,
    #: no other positions); see `runs_in_pieces`
    pointwise: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.positions is not None:
            if isinstance(self.positions, str) or not isinstance(self.positions, Iterable):
                raise TasklensError(
                    f"positions must be a list of whole numbers (e.g. [3], or [-1] for the last token), got "
                    f"{type(self.positions).__name__} {self.positions!r}"
                )
            positions = tuple(self.positions)
            if not positions or not all(isinstance(p, int) and not isinstance(p, bool) for p in positions):
                raise TasklensError(
                    f"positions must be a non-empty list of whole numbers (None edits every position), got "
                    f"{list(positions)}"
                )
            object.__setattr__(self, "positions", positions)
        if self.neurons is not None and not isinstance(self.neurons, NeuronSet):
            raise TasklensError(
                f"neurons must be a NeuronSet, got {type(self.neurons).__name__}; "
                "select one with tasklens.selection or NeuronSet.from_pairs"
            )
        for f in _parameter_fields(type(self)):
            number = getattr(self, f.name)
            if _is_float(f) and (
                isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number)
            ):
                raise TasklensError(f"The intervention's {f.name} must be a finite number, got {number!r}")

    # --- what it is -------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """The name the kind is registered under (``"amplify"``...)."""
        return _kind_name(type(self))

    @property
    def label(self) -> str:
        """Short human name (``zero ablation``, ``amplify x2``...); the kind's name unless it says more."""
        return self.kind

    @property
    def runs_in_pieces(self) -> bool:
        """Whether a sequence run in pieces (a prefix shared by a batch once, then each row's
        rest on its key-value cache) is edited exactly as when run whole: a `pointwise` kind
        editing every position."""
        return type(self).pointwise and self.positions is None

    def parameters(self) -> dict[str, Any]:
        """The kind's own parameters (its fields other than neurons, unit and positions)."""
        return {f.name: getattr(self, f.name) for f in _parameter_fields(type(self))}

    def on(self, neurons: NeuronSet) -> Intervention:
        """The same intervention on other neurons."""
        return dataclasses.replace(self, neurons=neurons)

    # --- as plain data ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Everything the intervention does, as plain data (neurons and tasks as summaries)."""
        data = {"kind": self.kind, "unit": self.unit, "positions": self.positions}
        if self.neurons is not None:
            data["neurons"] = self.neurons.summary()
        return plain({**data, **self.parameters()})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], neurons: NeuronSet | None = None) -> Intervention:
        """Rebuild from `to_dict` data: its kind is looked up by name, the neurons (and any
        source task) are given back as objects. Parameters recorded only as summaries (a
        tensor's hash, a task's provenance) are left at their defaults."""
        kind = data.get("kind", "zero") if cls is Intervention else cls
        kind_cls = kind_class(kind) if isinstance(kind, str) else kind
        summaries = {f.name for f in dataclasses.fields(kind_cls) if f.metadata.get("summary")}
        given = {
            k: v
            for k, v in data.items()
            if k not in (*COMMON, "kind") and k not in summaries and v is not None
        }
        positions = data.get("positions")
        return kind_cls.with_parameters(
            given,
            neurons=neurons,
            unit=data.get("unit", DEFAULT_UNIT),
            positions=None if positions is None else tuple(positions),
        )

    @classmethod
    def with_parameters(cls, parameters: Mapping[str, Any], **common: Any) -> Intervention:
        """This kind built from loosely typed ``parameters`` (a CLI's or TOML's ``key = value``):
        whole numbers become floats where the parameter is a float; the old shared keywords
        (``factor``, ``value``, ``source``, ``mean``, ``seed``) are dropped where the kind has no
        such parameter; any other unknown name is a `TasklensError` listing the kind's parameters."""
        fields_ = {f.name: f for f in _parameter_fields(cls)}
        if "params" not in fields_ and isinstance(parameters.get("params"), Mapping):
            # a user kind's parameters as the single dataclass held them: params={...}
            parameters = {**parameters["params"], **{k: v for k, v in parameters.items() if k != "params"}}
        given = {k: v for k, v in parameters.items() if k in fields_ or k not in SHARED_KEYWORDS}
        unknown = sorted(set(given) - set(fields_))
        if unknown:
            raise TasklensError(
                f"Intervention {_kind_name(cls)!r} has no parameter {unknown}; "
                f"its parameters: {sorted(fields_) or 'none'}"
            )
        missing = sorted(
            name
            for name, f in fields_.items()
            if name not in given
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        if missing:
            example = " ".join(f"--intervention-param {name}=..." for name in missing)
            raise TasklensError(
                f"Intervention {_kind_name(cls)!r} needs the parameter(s) {missing}; give them (in "
                f"Python as keywords, on the CLI as {example}, in a run's TOML under [intervention_params])"
            )
        for name, value in given.items():
            if _is_float(fields_[name]) and isinstance(value, int) and not isinstance(value, bool):
                given[name] = float(value)
        return cls(**common, **given)

    # --- on a model -------------------------------------------------------------------------
    def prepared(self, model) -> Intervention:
        """The same intervention with its data-dependent parts computed once for ``model``
        (e.g. the mean of a source task), for applying it to many sets."""
        return self

    def check(self, model) -> Intervention:
        """Refuse, before any forward pass, what cannot be applied to ``model``: an empty set, a
        set of another grid or found on another model, an unknown unit."""
        ModelInfo.of(model).check_unit(self.unit)
        if self.neurons is not None:
            if len(self.neurons) == 0:
                raise TasklensError(f"Neuron set {self.neurons.name!r} is empty; select at least one neuron")
            self.neurons.check_model(model)
        return self

    def edit(self, layer: int, idx: Tensor, current: Tensor) -> Tensor:
        """The new values of the neurons ``idx`` of ``layer``, given their ``current`` values
        (``[..., len(idx)]``, the edited positions); the result has the same shape."""
        raise TasklensError(
            f"Intervention kind {self.kind!r} ({type(self).__name__}) defines no edit; give its class an "
            "edit(self, layer, idx, current) method (or edit_for(self, model) returning one)"
        )

    def edit_for(self, model) -> Edit:
        """The edit applied on ``model``: `edit`, unless the kind needs the model to build it."""
        return self.edit

    @contextmanager
    def apply(self, model) -> Iterator[Intervention]:
        """Apply to ``model`` inside a ``with`` block; hooks are removed on exit, even on error."""
        if self.neurons is None:
            raise TasklensError(
                f"This {self.label} has no neurons; give neurons=, or use .on(neurons) to apply it to a set"
            )
        self.check(model)
        edit = self.prepared(model).edit_for(model)
        with edit_neurons(model, self.neurons, edit, self.unit, self.positions):
            yield self


@dataclass(frozen=True, eq=False)
class FunctionKind(Intervention):
    """A kind registered as a function ``(model, intervention) -> edit``; its parameters are
    the mapping ``params`` (``intervention.params["k"]``)."""

    params: Mapping[str, Any] = field(default_factory=dict)

    #: the registered function
    function: ClassVar[Callable[[Any, Intervention], Edit]]

    @classmethod
    def with_parameters(cls, parameters: Mapping[str, Any], **common: Any) -> Intervention:
        given = {k: v for k, v in parameters.items() if k != "params" and k not in SHARED_KEYWORDS}
        return cls(**common, params={**dict(parameters.get("params") or {}), **given})

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        if not self.params:
            del data["params"]
        return data

    def edit_for(self, model) -> Edit:
        return type(self).function(model, self)


# --- building by name and registering -------------------------------------------------------------
def build(
    kind: str = "zero",
    neurons: NeuronSet | None = None,
    unit: str = DEFAULT_UNIT,
    positions: Sequence[int] | None = None,
    **parameters: Any,
) -> Intervention:
    """The intervention of the kind registered as ``kind`` (what ``Intervention(kind, ...)`` does)."""
    if not isinstance(kind, str):
        raise TasklensError(
            f"An intervention's kind is a registered name such as 'zero' or 'amplify', got {kind!r}"
        )
    positions = None if positions is None else tuple(positions)
    return kind_class(kind).with_parameters(parameters, neurons=neurons, unit=unit, positions=positions)


_wrapped: dict[Any, type[FunctionKind]] = {}


def kind_class(kind: str) -> type[Intervention]:
    """The class of the kind registered as ``kind`` (a function registered straight into
    `INTERVENTIONS` is wrapped in a `FunctionKind` class)."""
    item = INTERVENTIONS.get(kind)
    if isinstance(item, type) and issubclass(item, Intervention):
        if item.__dict__.get("name") is None:
            item.name = kind
        return item
    if kind not in _wrapped or _wrapped[kind].function is not item:
        _wrapped[kind] = _function_kind(kind, item)
    return _wrapped[kind]


def _function_kind(name: str, function: Callable) -> type[FunctionKind]:
    if not callable(function):
        raise TasklensError(
            f"Intervention {name!r} is registered as {function!r}, which is neither an Intervention "
            "subclass nor a function (model, intervention) -> edit; register one of those"
        )
    doc = (getattr(function, "__doc__", None) or "").strip() or f"The intervention {name!r}."
    namespace = {"name": name, "function": staticmethod(function), "__doc__": doc}
    cls = _ByName(name, (FunctionKind,), namespace)
    return dataclass(frozen=True, eq=False)(cls)


def register(name: str | Any = None, obj: Any = None, *, overwrite: bool = False):
    """Register an intervention kind under ``name`` (a decorator without ``obj``).

    ``obj`` is a frozen dataclass subclass of `Intervention` owning its parameters (the
    usual way), or a function ``(model, intervention) -> edit(layer, idx, current)`` whose
    parameters arrive in ``intervention.params``. Returns ``obj`` unchanged.
    """
    if name is not None and not isinstance(name, str):
        name, obj = None, name

    def add(item: Any) -> Any:
        if isinstance(item, type) and issubclass(item, Intervention):
            own = item.__dict__.get("name")
            key = name or own or item.__name__
            if own is not None and own != key:
                raise TasklensError(
                    f"Intervention class {item.__name__} is named {own!r}; register it under that name "
                    f"or set its name to {key!r}"
                )
            INTERVENTIONS.register(key, item, overwrite=overwrite)
            item.name = key
            return item
        key = name or getattr(item, "__name__", None)
        kind = _function_kind(key, item)
        INTERVENTIONS.register(key, kind, overwrite=overwrite)
        return item

    return add if obj is None else add(obj)


def _kind_name(cls: type) -> str:
    own = cls.__dict__.get("name")
    if own:
        return own
    for key, item in INTERVENTIONS.items():
        if item is cls:
            return key
    return cls.__name__


def _parameter_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.name not in COMMON]


def _is_float(f: dataclasses.Field) -> bool:
    return f.type in (float, "float")


# --- the hooks ----------------------------------------------------------------------------------
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
            where = slice(None) if positions is None else _positions(positions, act.shape[1], act.shape[0])
            view = act[:, where]
            view[..., i] = edit(layer, idx, view[..., i]).to(act.device, act.dtype)
            act[:, where] = view
            return act

        hooks.append((info.hook_name(layer, unit), hook))
    with owned_hooks(model, hooks):
        yield


def _positions(positions: Sequence[int], length: int, rows: int | None = None) -> Tensor:
    bad = [p for p in positions if not -length <= p < length]
    if bad:
        raise TasklensError(
            f"Positions {bad} are outside this forward pass's {length} tokens; give positions within "
            f"the prompt (0..{length - 1}, or negative counting from the end)"
        )
    lengths = RUNNING.get()
    if lengths is not None and rows == len(lengths) and length == max(lengths) and min(lengths) < length:
        # a right-padded batch of tasklens's: a position past a row's real tokens edits its padding
        shortest = min(lengths)
        beyond = [p for p in positions if (p if p >= 0 else length + p) >= shortest]
        if beyond:
            n_short = sum(1 for n in lengths if any((p if p >= 0 else length + p) >= n for p in beyond))
            raise TasklensError(
                f"Positions {beyond} lie past the real tokens of {n_short} of this batch's {rows} sequences "
                f"(the shortest has {shortest}, the batch is padded to {length}): those would be left "
                f"unedited; give positions every sequence has (0..{shortest - 1}), or evaluate sequences "
                "of one length together"
            )
    return torch.tensor(list(positions))


#: ``positions`` (negative ones counting from the end) as indices into a call of ``length`` tokens
resolve_positions = _positions


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
