"""The built-in intervention kinds, one small class each, registered by name.

``zero``, ``mean`` and ``resample`` ablate (replace the neurons' values by 0, by a mean,
by values drawn from real tokens); ``amplify`` scales them, ``clamp`` sets them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from tasklens.errors import TasklensError
from tasklens.interventions.base import SUMMARY, Edit, Intervention, check_mean, register
from tasklens.models import ModelInfo
from tasklens.models.hooks import mean_activations, position_means, stream_activations
from tasklens.tasks.task import Task


@register("zero")
@dataclass(frozen=True, eq=False)
class Zero(Intervention):
    """Set the neurons to 0 (zero ablation, the papers' default).

    Examples:
        >>> from tasklens import NeuronSet, load_model
        >>> from tasklens.interventions import Zero
        >>> model = load_model("organism")
        >>> neurons = NeuronSet.from_pairs([(1, 3), (1, 200)], (4, 512), "two")
        >>> with Zero(neurons).apply(model):
        ...     _, cache = model.run_with_cache("Paris is in", names_filter="blocks.1.mlp.hook_post")
        >>> cache["blocks.1.mlp.hook_post"][..., [3, 200]].abs().max().item()
        0.0
    """

    pointwise = True

    @property
    def label(self) -> str:
        return "zero ablation"

    def edit(self, layer: int, idx: Tensor, current: Tensor) -> Tensor:
        return torch.zeros_like(current)


@register("mean")
@dataclass(frozen=True, eq=False, kw_only=True)
class Mean(Intervention):
    """Replace the neurons by their mean activation over ``source``'s tokens, or by ``mean``.

    Args:
        source: the task whose mean activation (over its real tokens) is used.
        mean: a ``[n_layers, d_mlp]`` tensor used instead of ``source``.

    Examples:
        >>> import torch
        >>> from tasklens import NeuronSet, load_model
        >>> from tasklens.interventions import Mean
        >>> model = load_model("organism")
        >>> neurons = NeuronSet.from_pairs([(1, 3)], (4, 512), "one")
        >>> mean = torch.zeros(4, 512)
        >>> mean[1, 3] = 0.5
        >>> with Mean(neurons, mean=mean).apply(model):
        ...     _, cache = model.run_with_cache("Paris is in", names_filter="blocks.1.mlp.hook_post")
        >>> cache["blocks.1.mlp.hook_post"][0, :, 3].unique().tolist()
        [0.5]
    """

    pointwise = True
    source: Task | None = field(default=None, metadata=SUMMARY)
    mean: Float[Tensor, "layer neuron"] | None = field(default=None, metadata=SUMMARY)

    @property
    def label(self) -> str:
        return "mean ablation"

    def prepared(self, model) -> Mean:
        if self.mean is None and self.source is not None:
            return dataclasses.replace(self, mean=mean_activations(model, self.source, self.unit))
        return self

    def check(self, model) -> Mean:
        super().check(model)
        if self.mean is not None:
            check_mean(self.mean, ModelInfo.of(model).shape)
        return self

    def edit_for(self, model) -> Edit:
        if self.mean is None:
            raise TasklensError(
                "Mean ablation needs source= (the Task whose mean activation is used) or mean= "
                "(a [n_layers, d_mlp] tensor)"
            )
        mean = check_mean(self.mean, ModelInfo.of(model).shape).detach()
        return lambda layer, idx, current: (
            mean[layer, idx].to(current.device, current.dtype).expand_as(current)
        )


@register("position_mean")
@dataclass(frozen=True, eq=False, kw_only=True)
class PositionMean(Intervention):
    """Mean ablation with position 0 apart: the neurons take their mean at position 0 there
    and their mean over the other tokens elsewhere, both measured on ``source``.

    A plain mean over every token mixes the BOS state, where some neurons take values they take
    nowhere else, into every position. Take ``source`` from prompts that are not evaluated, so
    the replacement carries no information about the evaluated answers. The sequence must be run
    whole (position 0 is its first token), so it applies to teacher-forced metrics.

    Args:
        source: the task whose position-0 and other-token means are used.
        first: a ``[n_layers, d_mlp]`` tensor of position-0 means used instead of ``source``'s.
        rest: likewise, the means over the other positions.

    Examples:
        >>> import torch
        >>> from tasklens import NeuronSet, load_model
        >>> from tasklens.interventions import PositionMean
        >>> model = load_model("organism")
        >>> neurons = NeuronSet.from_pairs([(1, 3)], (4, 512), "one")
        >>> first, rest = torch.zeros(4, 512), torch.zeros(4, 512)
        >>> first[1, 3], rest[1, 3] = 2.0, 0.5
        >>> with PositionMean(neurons, first=first, rest=rest).apply(model):
        ...     _, cache = model.run_with_cache("Paris is in", names_filter="blocks.1.mlp.hook_post")
        >>> cache["blocks.1.mlp.hook_post"][0, :, 3].tolist()
        [2.0, 0.5, 0.5, 0.5, 0.5, 0.5]
    """

    source: Task | None = field(default=None, metadata=SUMMARY)
    first: Float[Tensor, "layer neuron"] | None = field(default=None, metadata=SUMMARY)
    rest: Float[Tensor, "layer neuron"] | None = field(default=None, metadata=SUMMARY)

    @property
    def label(self) -> str:
        return "mean ablation, position 0 apart"

    def prepared(self, model) -> PositionMean:
        if (self.first is None or self.rest is None) and self.source is not None:
            first, rest = position_means(model, self.source, self.unit)
            return dataclasses.replace(self, first=first, rest=rest)
        return self

    def check(self, model) -> PositionMean:
        super().check(model)
        if self.positions is not None:
            raise TasklensError(
                "position_mean edits every position (position 0 apart) and takes no positions=; "
                "use mean ablation to edit chosen positions"
            )
        for means in (self.first, self.rest):
            if means is not None:
                check_mean(means, ModelInfo.of(model).shape)
        return self

    def edit_for(self, model) -> Edit:
        if self.first is None or self.rest is None:
            raise TasklensError(
                "Position-matched mean ablation needs source= (the Task whose means are used, not the "
                "evaluated prompts) or both first= and rest= ([n_layers, d_mlp] tensors)"
            )
        shape = ModelInfo.of(model).shape
        first, rest = check_mean(self.first, shape).detach(), check_mean(self.rest, shape).detach()

        def edit(layer: int, idx: Tensor, current: Tensor) -> Tensor:
            out = rest[layer, idx].to(current.device, current.dtype).expand_as(current).clone()
            out[:, :1] = first[layer, idx].to(current.device, current.dtype)
            return out

        return edit


@register("resample")
@dataclass(frozen=True, eq=False, kw_only=True)
class Resample(Intervention):
    """Replace each position's values by those the neurons took on a random token of ``source``.

    Args:
        source: the task whose activations are drawn (over its real tokens).
        seed: the random seed of the draws.

    Examples:
        >>> from tasklens import NeuronSet, Task, load_model
        >>> from tasklens.interventions import Resample
        >>> model = load_model("organism")
        >>> neurons = NeuronSet.from_pairs([(1, 3)], (4, 512), "one")
        >>> source = Task.from_lists("src", ["copy: x y ->"], [" x y"])
        >>> _, clean = model.run_with_cache("copy: x y -> x y", names_filter="blocks.1.mlp.hook_post")
        >>> pool = set(clean["blocks.1.mlp.hook_post"][0, :, 3].tolist())
        >>> with Resample(neurons, source=source, seed=1).apply(model):
        ...     _, cache = model.run_with_cache("Paris is in", names_filter="blocks.1.mlp.hook_post")
        >>> drawn = cache["blocks.1.mlp.hook_post"][0, :, 3].tolist()
        >>> all(min(abs(v - p) for p in pool) < 1e-5 for v in drawn)
        True
    """

    source: Task | None = field(default=None, metadata=SUMMARY)
    seed: int = 0

    @property
    def label(self) -> str:
        return "resample ablation"

    def edit_for(self, model) -> Edit:
        if self.source is None:
            raise TasklensError("Resample ablation needs source=: the Task whose activations are drawn")
        names = ModelInfo.of(model).hook_names(self.unit)
        mask = self.neurons.mask
        pools: list[list[Tensor]] = [[] for _ in names]
        for batch, store in stream_activations(model, self.source, names, 32):
            real = batch.attention_mask.bool()
            for layer, name in enumerate(names):
                idx = mask[layer].nonzero().flatten().to(store[name].device)
                pools[layer].append(store[name][real][:, idx].cpu())
        pool = [torch.cat(p) for p in pools]
        generator = torch.Generator().manual_seed(self.seed)

        def edit(layer: int, idx: Tensor, current: Tensor) -> Tensor:
            draw = torch.randint(len(pool[layer]), current.shape[:-1], generator=generator)
            return pool[layer][draw]

        return edit


@register("amplify")
@dataclass(frozen=True, eq=False, kw_only=True)
class Amplify(Intervention):
    """Multiply the neurons by ``factor`` (2.0: the knowledge-neuron convention; 0 ablates).

    Args:
        factor: the factor (a finite number).

    Examples:
        >>> import torch
        >>> from tasklens import NeuronSet, load_model
        >>> from tasklens.interventions import Amplify
        >>> model = load_model("organism")
        >>> neurons = NeuronSet.from_pairs([(2, 5)], (4, 512), "one")
        >>> _, clean = model.run_with_cache("Paris is in", names_filter="blocks.2.mlp.hook_post")
        >>> with Amplify(neurons, factor=3.0).apply(model):
        ...     _, cache = model.run_with_cache("Paris is in", names_filter="blocks.2.mlp.hook_post")
        >>> name = "blocks.2.mlp.hook_post"
        >>> torch.allclose(cache[name][..., 5], 3 * clean[name][..., 5])
        True
    """

    pointwise = True
    factor: float = 2.0

    @property
    def label(self) -> str:
        return f"amplify x{self.factor:g}"

    def edit(self, layer: int, idx: Tensor, current: Tensor) -> Tensor:
        return current * self.factor


@register("clamp")
@dataclass(frozen=True, eq=False, kw_only=True)
class Clamp(Intervention):
    """Set the neurons to ``value`` (e.g. to steer generation with one neuron).

    Args:
        value: the value (a finite number).

    Examples:
        >>> from tasklens import NeuronSet, load_model
        >>> from tasklens.interventions import Clamp
        >>> model = load_model("organism")
        >>> neurons = NeuronSet.from_pairs([(0, 7)], (4, 512), "one")
        >>> with Clamp(neurons, positions=(-1,), value=4.0).apply(model):
        ...     _, cache = model.run_with_cache("Paris is in", names_filter="blocks.0.mlp.hook_post")
        >>> acts = cache["blocks.0.mlp.hook_post"][0, :, 7]
        >>> acts[-1].item(), bool(acts[0] == 4.0)
        (4.0, False)
    """

    pointwise = True
    value: float = 0.0

    @property
    def label(self) -> str:
        return f"clamp = {self.value:g}"

    def edit(self, layer: int, idx: Tensor, current: Tensor) -> Tensor:
        return torch.full_like(current, self.value)


__all__ = ["Amplify", "Clamp", "Mean", "Resample", "Zero"]
