"""Data parallelism over prompts with `torch.distributed`, launched by ``torchrun``.

Launched as ``torchrun --nproc-per-node N -m tasklens locate ...`` (or multi-node through
torchrun's rendezvous), each rank takes every N-th prompt of a task; per-prompt sums are
all-reduced in float64 and per-prompt values gathered in prompt order, so a result
equals a single process's to float rounding whatever N is. Only rank 0 writes files
(`tasklens.io` turns other ranks' writes into no-ops) and run stages end on a barrier.

Without ``torchrun`` (no ``WORLD_SIZE`` > 1 in the environment) every function here is a
no-op and tasklens runs in one process. In a notebook or script launched by torchrun,
call `init()` first.

Covered: every scorer whose scores add up over prompts (``reduction`` ``"sum"`` or
``"mean"``: activation means and rates, gradient attribution, CGVST, attribution
patching, integrated gradients, exact ablation, verified patching) through `attribute`
and ``tasklens locate``; every evaluation (teacher-forced metrics and greedy exact match)
through `per_prompt`, hence evaluation matrices, cumulativity and interference. Scores
that do not add up over prompts (average precision, ``std``) are computed whole on every
rank: correct, not faster.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from datetime import timedelta

import torch
from torch import Tensor
from torch import distributed as dist

#: how long a rank waits for the others before giving up (a dead rank must not hang the rest)
DEFAULT_TIMEOUT = timedelta(minutes=10)


def requested() -> bool:
    """Whether this process was launched as one of several ranks (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(backend: str | None = None, timeout: timedelta = DEFAULT_TIMEOUT) -> bool:
    """Join the process group torchrun set up (gloo on CPU, NCCL with CUDA); False when alone."""
    if not requested():
        return False
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend, timeout=timeout)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes files."""
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def shard(n: int) -> list[int]:
    """This rank's items of ``range(n)``: every ``world_size``-th, starting at its rank."""
    return list(range(rank(), n, world_size()))


def _device() -> torch.device:
    return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum over ranks, in float64 (returned on the tensor's device, in float64)."""
    if not active():
        return tensor.double()
    total = tensor.detach().double().to(_device())
    dist.all_reduce(total)
    return total.to(tensor.device)


def per_prompt(compute: Callable, task, *args, **kwargs) -> Tensor:
    """``compute(task, ...)``'s per-prompt values, each rank computing its share, in prompt order."""
    if not active() or len(task) < world_size():
        return compute(task, *args, **kwargs)
    mine = shard(len(task))
    local = compute(task.subset(mine), *args, **kwargs)
    full = torch.zeros(len(task), dtype=torch.float64)
    full[mine] = local.detach().double().cpu()
    return all_reduce_sum(full).to(local.dtype)


def attribute(scorer, model, task, **kwargs):
    """``scorer.attribute(model, task)``, each rank scoring its share of the prompts.

    Sums (``reduction="sum"``) are added over ranks; means (``"mean"``) are combined
    weighted by their token counts; the provenance names the whole task, as in one process.
    """
    if not active() or len(task) < world_size():
        return scorer.attribute(model, task, **kwargs)
    local = scorer.attribute(model, task.subset(shard(len(task))), **kwargs)
    if local.reduction not in ("sum", "mean"):
        return scorer.attribute(model, task, **kwargs)  # does not add up over prompts
    counts = all_reduce_sum(torch.tensor([local.n_prompts, local.n_tokens], dtype=torch.float64))
    if local.reduction == "sum":
        values = all_reduce_sum(local.values)
    else:
        values = all_reduce_sum(local.values.double() * local.n_tokens) / max(float(counts[1]), 1.0)
    return dataclasses.replace(
        local,
        values=values.float(),
        task=task.name,
        task_hash=task.data_hash(),
        n_prompts=int(counts[0]),
        n_tokens=int(counts[1]),
    )


def describe() -> str:
    return f"rank {rank()} of {world_size()}" if active() else "one process"


__all__: Sequence[str] = (
    "all_reduce_sum",
    "attribute",
    "barrier",
    "init",
    "is_main",
    "per_prompt",
    "rank",
    "requested",
    "shard",
    "world_size",
)
