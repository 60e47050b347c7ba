"""W-NCFT's routing: which task's neuron parameters an input should use, from its features.

The feature of an input is the final residual stream (``blocks.{L-1}.hook_resid_post``,
before the final norm) at its last prompt token, computed on the model *before*
continual fine-tuning (the base model), so routing does not drift as tasks are
learned. A task's feature is the mean feature of its training prompts. An input's
weight for task t is

    alpha_t(x) = softmax_t( cos(f(x), mean_t) / temperature )

over the tasks learned so far: a low temperature routes almost all weight to the
most similar task, a high one averages the tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from tasklens.errors import TasklensError
from tasklens.models import ModelInfo
from tasklens.models.hooks import owned_hooks
from tasklens.tasks.task import Task
from tasklens.tasks.tokenize import Batch, TokenizedTask

#: default softmax temperature on cosine similarities (see `TaskRouter`)
TEMPERATURE = 0.05


def feature_hook_name(model) -> str:
    """The hook whose value is the input's feature: the last block's output residual stream."""
    return ModelInfo.of(model).residual_names(ModelInfo.of(model).n_layers - 1)["resid_post"]


@torch.no_grad()
def batch_features(model, batch: Batch) -> Float[Tensor, "batch d_model"]:
    """The feature of every prompt of a batch: the final residual stream at its last prompt token."""
    store: dict[str, Tensor] = {}

    def capture(value: Tensor, hook) -> None:
        store["resid"] = value.detach()

    with owned_hooks(model, [(feature_hook_name(model), capture)]):
        model(batch.tokens.to(model.cfg.device))
    rows = torch.arange(batch.size)
    return store["resid"][rows, batch.last_prompt.to(store["resid"].device)].float().cpu()


def task_features(model, task: Task, batch_size: int = 64) -> Float[Tensor, "prompt d_model"]:
    """Features of a task's prompts (prompt tokens only)."""
    tokenized = TokenizedTask.for_model(task, model)
    parts = [batch_features(model, batch) for batch in tokenized.batches(batch_size, with_answers=False)]
    return torch.cat(parts)


@dataclass
class TaskRouter:
    """Per-input weights over tasks from cosine similarity to each task's mean feature.

    Attributes:
        tasks: task names, in the order of ``means``.
        means: ``[n_tasks, d_model]`` mean feature of each task's training prompts.
        temperature: softmax temperature on the cosine similarities.
    """

    tasks: list[str]
    means: Float[Tensor, "task d_model"]
    temperature: float = TEMPERATURE

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise TasklensError(f"The W-NCFT temperature must be positive, got {self.temperature}")
        if len(self.tasks) != self.means.shape[0]:
            raise TasklensError(f"{len(self.tasks)} task names for {self.means.shape[0]} mean features")

    @classmethod
    def fit(
        cls,
        model,
        tasks: Mapping[str, Task],
        temperature: float = TEMPERATURE,
        n_prompts: int = 64,
        batch_size: int = 64,
    ) -> TaskRouter:
        """Mean features of each task's prompts (a seeded sample of ``n_prompts``) on ``model``."""
        names = list(tasks)
        means = torch.stack(
            [task_features(model, tasks[n].sample(n_prompts), batch_size).mean(0) for n in names]
        )
        return cls(names, means, temperature)

    def similarities(self, features: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch task"]:
        return torch.nn.functional.cosine_similarity(features[:, None, :], self.means[None, :, :], dim=-1)

    def weights(
        self, features: Float[Tensor, "batch d_model"], among: Sequence[str] | None = None
    ) -> Float[Tensor, "batch chosen"]:
        """Softmax weights over ``among`` (default all tasks), in that order."""
        among = list(among or self.tasks)
        unknown = [t for t in among if t not in self.tasks]
        if unknown:
            raise TasklensError(f"The router has no mean feature for {unknown}; fit it on those tasks too")
        columns = [self.tasks.index(t) for t in among]
        return (self.similarities(features)[:, columns] / self.temperature).softmax(-1)
