"""`FinetuneConfig`: the hyperparameters of one fine-tuning run (plain data)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from tasklens.errors import TasklensError

#: settings `tasklens finetune` takes as options
CLI_OPTIONS = ("steps", "lr", "batch_size", "seed", "checkpoint_every")


@dataclass
class FinetuneConfig:
    """Hyperparameters of a fine-tuning run; everything that decides the result besides the data.

    Attributes:
        steps: optimizer steps.
        lr: AdamW learning rate (after warm-up).
        batch_size: prompts per step, drawn without replacement within a step from a
            generator seeded by (``seed``, step), so the data order is a function of the step.
        weight_decay: AdamW weight decay (on the deltas, i.e. towards the original weights,
            for neuron fine-tuning).
        beta1, beta2, eps: AdamW's other parameters.
        warmup: steps of linear learning-rate warm-up.
        grad_clip: clip the gradient's global norm to this (0: no clipping).
        seed: seed of the data order.
        checkpoint_every: write a checkpoint every this many steps (0: only at the end);
            only when the run has a checkpoint folder.
        bias: neuron fine-tuning also trains the neurons' input-projection bias entries
            (models with MLP biases: GPT-2, GPT-NeoX).
    """

    steps: int = 300
    lr: float = 1e-3
    batch_size: int = 16
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    warmup: int = 0
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 0
    bias: bool = True

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> FinetuneConfig:
        """Raise a `TasklensError` naming the first setting out of range (and its range)."""

        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                option = f"--{name.replace('_', '-')}" if name in CLI_OPTIONS else f"{name}="
                raise TasklensError(
                    f"FinetuneConfig.{name} must be {what}, got {getattr(self, name)!r}; "
                    f"pass a value in that range ({option})"
                )

        def integer(name: str) -> bool:
            value = getattr(self, name)
            return isinstance(value, int) and not isinstance(value, bool)

        def number(name: str) -> bool:
            value = getattr(self, name)
            return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

        for name in ("steps", "batch_size"):
            need(integer(name) and getattr(self, name) >= 1, name, "a positive integer")
        for name in ("warmup", "checkpoint_every", "seed"):
            need(integer(name) and getattr(self, name) >= 0, name, "an integer >= 0")
        for name in ("lr", "eps"):
            need(number(name) and getattr(self, name) > 0, name, "a finite number > 0")
        for name in ("weight_decay", "grad_clip"):
            need(number(name) and getattr(self, name) >= 0, name, "a finite number >= 0 (0: none)")
        for name in ("beta1", "beta2"):
            need(number(name) and 0 <= getattr(self, name) < 1, name, "a number in [0, 1)")
        need(isinstance(self.bias, bool), "bias", "True or False")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise TasklensError(f"Unknown fine-tuning option(s) {unknown}; the options are {sorted(names)}")
        return cls(**data)

    def same_run(self, other: FinetuneConfig) -> bool:
        """Whether two configs train the same way (only ``steps`` and ``checkpoint_every`` may differ),
        so a checkpoint of one can be resumed by the other."""
        ignore = {"steps", "checkpoint_every"}
        a, b = self.to_dict(), other.to_dict()
        return all(a[k] == b[k] for k in a if k not in ignore)
