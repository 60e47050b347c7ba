"""The fine-tuning loop: answer-token LM loss, AdamW over the trained tensors only, checkpoints, resume.

`finetune(model, task, neurons)` trains, then merges the result into the model's
weights (the bridge sees the new weights) and returns a `FinetuneRun`; its
`restore()` (or leaving ``with finetune(...) as run:``) puts the original
weights back bit for bit. ``neurons`` is a `NeuronSet` (neuron-level
fine-tuning: only those neurons' rows and columns train) or ``"full"`` (every
parameter trains).

Determinism: the batch of step s is drawn from a generator seeded by
(config.seed, s), the optimizer state and the RNG state are checkpointed, so on
CPU with the same thread count a run resumed from a checkpoint ends with the
same weights, bit for bit, as one that never stopped.
"""

from __future__ import annotations

import math
import time
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tasklens._version import __version__
from tasklens.data.neurons import NeuronSet
from tasklens.data.provenance import model_fingerprint
from tasklens.errors import TasklensError
from tasklens.finetune.checkpoint import (
    check_checkpoint_dir,
    has_checkpoint,
    read_checkpoint,
    read_meta,
    write_checkpoint,
)
from tasklens.finetune.config import FinetuneConfig
from tasklens.finetune.deltas import NeuronDeltas
from tasklens.finetune.full import FullParameters
from tasklens.finetune.objective import answer_loss
from tasklens.models import ModelInfo
from tasklens.tasks.task import Task
from tasklens.tasks.tokenize import Batch, TokenizedTask

FULL = "full"
Trainable = NeuronDeltas | FullParameters


@contextmanager
def frozen(model) -> Iterator[None]:
    """No parameter of the model requires a gradient inside the block (flags put back on exit)."""
    params = list(model.original_model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def make_trainable(model, neurons: NeuronSet | str, bias: bool = True, restorable: bool = True) -> Trainable:
    """`NeuronDeltas` for a neuron set, `FullParameters` for ``"full"`` (with a copy of the
    weights for `restore` when ``restorable``)."""
    if isinstance(neurons, str):
        if neurons != FULL:
            raise TasklensError(f"neurons must be a NeuronSet or 'full' (every parameter), got {neurons!r}")
        return FullParameters(model, keep_original=restorable)
    if not isinstance(neurons, NeuronSet):
        raise TasklensError(f"neurons must be a NeuronSet or 'full', got {type(neurons).__name__}")
    return NeuronDeltas(model, neurons, bias=bias)


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The prompts of step ``step``: ``batch_size`` distinct indices (all ``n`` when fewer),
    a function of (seed, step) only."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return sorted(torch.randperm(n, generator=generator)[: min(batch_size, n)].tolist())


class FinetuneRun:
    """One fine-tuning run on one task: its trainable tensors, optimizer, step and losses.

    Args:
        model: a TransformerLens bridge.
        task: the training prompts and answers.
        neurons: a `NeuronSet` (train only its neurons) or ``"full"``.
        config: hyperparameters.
        checkpoint_dir: folder for checkpoints: missing, empty or a checkpoint of tasklens's
            (anything else raises a `TasklensError` before training); when it holds a
            checkpoint of this same run (model, task, neurons, hyperparameters), training
            resumes from it.
        restorable: full fine-tuning keeps a copy of the original weights for `restore`
            (neuron deltas are always restorable, at the cost of their own rows).

    Attributes:
        trainable: the `NeuronDeltas` or `FullParameters` being trained.
        step: optimizer steps taken; losses: the mean answer loss of each step's batch.
        seconds: training wall time (summed over resumed parts).
    """

    def __init__(
        self,
        model,
        task: Task,
        neurons: NeuronSet | str,
        config: FinetuneConfig | None = None,
        checkpoint_dir: str | Path | None = None,
        restorable: bool = True,
    ) -> None:
        self.model = model
        self.task = task
        self.config = (config or FinetuneConfig()).check()
        self.neurons = neurons
        self.scope = FULL if isinstance(neurons, str) else "neurons"
        self.checkpoint_dir = None if checkpoint_dir is None else check_checkpoint_dir(checkpoint_dir)
        self.fingerprint = model_fingerprint(model)
        self.tokenized = TokenizedTask.for_model(task, model)
        self.trainable = make_trainable(model, neurons, self.config.bias, restorable)
        c = self.config
        largest = min((torch.finfo(p.dtype).max for p in self.trainable.parameters()), default=math.inf)
        if c.lr > largest:
            raise TasklensError(
                f"FinetuneConfig.lr {c.lr:g} is larger than the trained weights' type can hold "
                f"({largest:g}); pass a far smaller learning rate (--lr), e.g. 1e-3"
            )
        self.optimizer = torch.optim.AdamW(
            self.trainable.parameters(),
            lr=c.lr,
            betas=(c.beta1, c.beta2),
            eps=c.eps,
            weight_decay=c.weight_decay,
            foreach=False,
        )
        self.step = 0
        self.losses: list[float] = []
        self.seconds = 0.0
        if self.checkpoint_dir is not None and has_checkpoint(self.checkpoint_dir):
            self._resume()

    # --- provenance -----------------------------------------------------------------------
    def provenance(self) -> dict[str, Any]:
        """What this run is: model, task, neurons, hyperparameters (plain data)."""
        info = ModelInfo.of(self.model)
        neurons = None if self.scope == FULL else self.neurons.summary()
        return {
            "model": info.name,
            "model_fingerprint": self.fingerprint,
            "task": self.task.name,
            "task_hash": self.task.data_hash(),
            "n_prompts": len(self.task),
            "scope": self.scope,
            "neurons": neurons,
            "n_trained_parameters": self.trainable.n_parameters(),
            "config": self.config.to_dict(),
            "tasklens_version": __version__,
        }

    def _check_same(self, meta: dict[str, Any]) -> None:
        mine = self.provenance()
        for key in ("model_fingerprint", "task_hash", "scope", "neurons"):
            if meta.get(key) != mine[key]:
                raise TasklensError(
                    f"The checkpoint in {str(self.checkpoint_dir)!r} belongs to another run ({key} differs: "
                    f"{meta.get(key)!r} there, {mine[key]!r} here); use another folder or delete it"
                )
        if not FinetuneConfig.from_dict(meta["config"]).same_run(self.config):
            raise TasklensError(
                f"The checkpoint in {str(self.checkpoint_dir)!r} was trained with other hyperparameters "
                f"({meta['config']}); only steps and checkpoint_every may change when resuming"
            )
        if meta["step"] > self.config.steps:
            raise TasklensError(
                f"The checkpoint in {str(self.checkpoint_dir)!r} is at step {meta['step']}, past the "
                f"{self.config.steps} steps asked for"
            )

    # --- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, folder: str | Path | None = None) -> Path:
        """Write the current state (trained tensors, AdamW state, RNG state, provenance)."""
        folder = Path(folder) if folder is not None else self.checkpoint_dir
        if folder is None:
            raise TasklensError("No checkpoint folder: pass one here or as checkpoint_dir")
        trained = dict(self.trainable.tensors)
        if isinstance(self.trainable, NeuronDeltas):
            trained.update({f"index.{layer}": idx for layer, idx, _ in self.trainable.layers()})
        state: dict[str, Tensor] = {"rng.torch": torch.get_rng_state()}
        for name, tensor in self.trainable.tensors.items():
            for key, value in self.optimizer.state.get(tensor, {}).items():
                state[f"{name}::{key}"] = value
        group = self.optimizer.param_groups[0]
        meta = {
            **self.provenance(),
            "step": self.step,
            "losses": self.losses,
            "seconds": round(self.seconds, 3),
            "threads": torch.get_num_threads(),
            "optimizer": {
                "type": "AdamW",
                "lr": group["lr"],
                "betas": list(group["betas"]),
                "eps": group["eps"],
                "weight_decay": group["weight_decay"],
                "state": "optimizer.safetensors: <tensor>::exp_avg, ::exp_avg_sq, ::step",
            },
            "rng": {
                "data_order": f"step s: torch.Generator seeded {self.config.seed} * 1000003 + s",
                "next_step": self.step,
                "torch_rng_state": "optimizer.safetensors: rng.torch",
            },
        }
        return write_checkpoint(folder, trained, state, meta)

    def _resume(self) -> None:
        assert self.checkpoint_dir is not None
        self._check_same(read_meta(self.checkpoint_dir))
        trained, state, meta = read_checkpoint(self.checkpoint_dir)
        self.trainable.load_tensors({k: v for k, v in trained.items() if not k.startswith("index.")})
        for name, tensor in self.trainable.tensors.items():
            keys = {k.split("::", 1)[1]: v for k, v in state.items() if k.startswith(f"{name}::")}
            if keys:
                self.optimizer.state[tensor] = {k: v.clone() for k, v in keys.items()}
        torch.set_rng_state(state["rng.torch"])
        self.step, self.losses, self.seconds = int(meta["step"]), list(meta["losses"]), float(meta["seconds"])
        if meta.get("threads") != torch.get_num_threads():
            import warnings

            from tasklens.errors import TasklensWarning

            warnings.warn(
                f"Resuming with {torch.get_num_threads()} threads; the checkpoint was written with "
                f"{meta.get('threads')}: the result may differ from an uninterrupted run in the last bits",
                TasklensWarning,
                stacklevel=3,
            )

    # --- training ---------------------------------------------------------------------------
    def _lr(self, step: int) -> float:
        c = self.config
        return c.lr * min(1.0, (step + 1) / c.warmup) if c.warmup else c.lr

    def _batch(self, step: int) -> Batch:
        tok = self.tokenized
        idx = batch_indices(len(tok), self.config.batch_size, self.config.seed, step)
        return Batch.make([tok.prompt_ids[i] for i in idx], [tok.answer_ids[i] for i in idx], tok.pad_id, idx)

    def _one_step(self) -> float:
        batch = self._batch(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr(self.step)
        loss = answer_loss(self.model, batch).mean()
        if not math.isfinite(float(loss.detach())):
            self._diverged(f"the loss became {float(loss.detach())}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.trainable.parameters(), self.config.grad_clip)
        self.optimizer.step()
        if not all(bool(torch.isfinite(p).all()) for p in self.trainable.parameters()):
            self._diverged("the trained weights became infinite or NaN")
        return float(loss.detach())

    def _diverged(self, what: str) -> typing.NoReturn:
        kept = ""
        if self.checkpoint_dir is not None and has_checkpoint(self.checkpoint_dir):
            step = read_meta(self.checkpoint_dir).get("step")
            kept = (
                f" in a new checkpoint folder (the last good one, step {step}, "
                f"is kept in {str(self.checkpoint_dir)!r})"
            )
        raise TasklensError(
            f"Training diverged at step {self.step + 1}: {what} (learning rate {self.config.lr:g}); "
            f"train again with a smaller learning rate (--lr){kept}"
        )

    def train(self, on_step: Callable[[FinetuneRun], None] | None = None) -> FinetuneRun:
        """Take the remaining steps up to ``config.steps`` (checkpointing as configured).

        Args:
            on_step: called after every step with the run (progress bars, early stops).

        Raises:
            TasklensError: when the loss or the trained weights become infinite or NaN (before
                that step's checkpoint, so the last one written is a good one).
        """
        if isinstance(self.trainable, NeuronDeltas) and self.trainable.merged:
            raise TasklensError("This run is merged into the model; restore() it before training further")
        every = self.config.checkpoint_every
        with frozen(self.model), self.trainable.applied():
            while self.step < self.config.steps:
                start = time.perf_counter()
                self.losses.append(self._one_step())
                self.step += 1
                self.seconds += time.perf_counter() - start
                if self.checkpoint_dir is not None and (
                    self.step == self.config.steps or (every and self.step % every == 0)
                ):
                    self.save_checkpoint()
                if on_step is not None:
                    on_step(self)
        return self

    # --- the result in the model -----------------------------------------------------------
    def merge(self) -> FinetuneRun:
        """Write the trained tensors into the model's weights."""
        if not self.trainable.merged:
            self.trainable.merge()
        return self

    def restore(self) -> FinetuneRun:
        """Put the model's original weights back (bit for bit)."""
        self.trainable.restore()
        return self

    @contextmanager
    def applied(self) -> Iterator[FinetuneRun]:
        """The fine-tuned weights in the model inside the block, the original ones after it."""
        was_merged = self.trainable.merged
        self.merge()
        try:
            yield self
        finally:
            if not was_merged:
                self.restore()

    def __enter__(self) -> FinetuneRun:
        return self.merge()

    def __exit__(self, *exc) -> None:
        self.restore()

    def summary(self) -> dict[str, Any]:
        """Plain-data record of the run (for tables and JSON)."""
        tail = self.losses[-10:]
        return {
            "task": self.task.name,
            "scope": self.scope,
            "neurons": None if self.scope == FULL else self.neurons.name,
            "n_neurons": None if self.scope == FULL else len(self.neurons),
            "n_trained_parameters": self.trainable.n_parameters(),
            "steps": self.step,
            "loss_first": self.losses[0] if self.losses else None,
            "loss_last10": sum(tail) / len(tail) if tail else None,
            "seconds": round(self.seconds, 2),
        }

    def __repr__(self) -> str:
        return f"FinetuneRun({self.task.name!r}, {self.trainable!r}, step {self.step}/{self.config.steps})"


def finetune(
    model,
    task: Task,
    neurons: NeuronSet | str,
    config: FinetuneConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    on_step: Callable[[FinetuneRun], None] | None = None,
) -> FinetuneRun:
    """Fine-tune ``model`` on ``task`` and merge the result into its weights.

    Args:
        model: a TransformerLens bridge (its Hugging Face weights change; `FinetuneRun.restore`
            or leaving a ``with`` block undoes it).
        task: training prompts and answers (loss on the answer tokens, teacher forcing).
        neurons: a `NeuronSet` (only its neurons' parameters train) or ``"full"``.
        config: hyperparameters (`FinetuneConfig`).
        checkpoint_dir: checkpoint folder; a checkpoint of the same run there is resumed.
        on_step: called after every step.

    Returns:
        The merged `FinetuneRun`.

    Example:
        >>> with finetune(model, train_task, neurons, FinetuneConfig(steps=200)) as run:
        ...     print(accuracy(model, test_task), run.summary())
    """
    return FinetuneRun(model, task, neurons, config, checkpoint_dir).train(on_step).merge()
