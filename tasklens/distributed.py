"""Data parallelism over prompts with `torch.distributed`, launched by ``torchrun``.

Launched as ``torchrun --nproc-per-node N -m tasklens locate ...`` (or multi-node through
torchrun's rendezvous), each rank takes every N-th prompt of a task; per-prompt sums are
all-reduced in float64 and per-prompt values gathered in prompt order, so a result
equals a single process's to float rounding whatever N is. Only rank 0 writes files
(`tasklens.io` turns other ranks' writes into no-ops) and run stages end on a barrier.

Without ``torchrun`` (no ``WORLD_SIZE`` > 1 with the rest of torchrun's environment) every
function here is a no-op and tasklens runs in one process. In a notebook or script launched
by torchrun, call `init()` first.

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
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor
from torch import distributed as dist

from tasklens.errors import TasklensError, TasklensWarning

#: how long a rank waits for the others before giving up (a dead rank must not hang the rest)
DEFAULT_TIMEOUT = timedelta(minutes=10)
#: how long the ranks wait for each other to start
JOIN_TIMEOUT = timedelta(minutes=5)
#: what torchrun sets for every rank; without all of them tasklens runs in one process
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_warned = False
#: how many `alone` blocks are open (inside one, this rank shares no prompts with the others)
_alone = 0


def requested() -> bool:
    """Whether this process was launched as one of several ranks: ``WORLD_SIZE`` > 1 and the rest
    of torchrun's environment present (a stray ``WORLD_SIZE`` alone warns once and is ignored)."""
    global _warned
    size = os.environ.get("WORLD_SIZE", "").strip()
    if size in ("", "0", "1"):
        return False
    missing = [name for name in TORCHRUN_VARIABLES if not os.environ.get(name, "").strip()]
    if missing:
        if not _warned:
            _warned = True
            warnings.warn(
                f"WORLD_SIZE={size} is set but {', '.join(missing)} not, so this is not a torchrun launch: "
                "running in one process (unset WORLD_SIZE to silence this, or launch with torchrun)",
                TasklensWarning,
                stacklevel=2,
            )
        return False
    return True


def _environment() -> dict[str, int | str]:
    values: dict[str, int | str] = {"MASTER_ADDR": os.environ["MASTER_ADDR"].strip()}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT"):
        text = os.environ[name].strip()
        if not (text.isascii() and text.isdigit()):
            raise TasklensError(
                f"{name}={text!r} is not a whole number; launch with torchrun (which sets it) "
                "or unset WORLD_SIZE to run in one process"
            )
        values[name] = int(text)
    if values["RANK"] >= values["WORLD_SIZE"]:
        raise TasklensError(
            f"RANK={values['RANK']} is not below WORLD_SIZE={values['WORLD_SIZE']}; give every rank "
            "the same WORLD_SIZE and ranks 0 to WORLD_SIZE - 1 (torchrun does)"
        )
    return values


def _join(env: dict[str, int | str], timeout: timedelta) -> dist.Store:
    """The rendezvous store, once every rank has checked that the others agree on the world size."""
    rank_, size = int(env["RANK"]), int(env["WORLD_SIZE"])
    where = f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}"
    under_agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun hosts the store
    store = dist.TCPStore(
        str(env["MASTER_ADDR"]),
        int(env["MASTER_PORT"]),
        is_master=rank_ == 0 and not under_agent,
        timeout=timeout,
        wait_for_workers=False,
        multi_tenant=not under_agent,
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    checks = dist.PrefixStore(f"tasklens/attempt_{attempt}/", store)
    if checks.add(f"rank{rank_}", 1) > 1:
        raise TasklensError(
            f"Two processes were started as RANK={rank_} at {where}; "
            "give each rank its own RANK (torchrun does)"
        )
    checks.set(f"world_size{rank_}", str(size))
    others = [f"world_size{r}" for r in range(1, size)] if rank_ == 0 else ["world_size0"]
    for key in others:
        try:
            checks.wait([key], timeout)
        except RuntimeError as error:
            raise TasklensError(
                f"Rank {key.removeprefix('world_size')} did not join at {where} within "
                f"{timeout.total_seconds():.0f} s; start all {size} ranks (with torchrun) "
                "or unset WORLD_SIZE to run in one process"
            ) from error
        theirs = int(checks.get(key))
        if theirs != size:
            raise TasklensError(
                f"The ranks disagree on the world size: rank {key.removeprefix('world_size')} has "
                f"WORLD_SIZE={theirs}, rank {rank_} has {size}; start every rank with the same WORLD_SIZE "
                "(torchrun does)"
            )
    return store


def init(
    backend: str | None = None, timeout: timedelta = DEFAULT_TIMEOUT, join_timeout: timedelta = JOIN_TIMEOUT
) -> bool:
    """Join the process group torchrun set up (gloo on CPU, NCCL with CUDA); False when alone.

    Ranks that disagree on the world size, or that do not all start within ``join_timeout``,
    fail with a `TasklensError` instead of waiting on each other.
    """
    if not requested():
        return False
    if not dist.is_initialized():
        env = _environment()
        try:
            store = _join(env, join_timeout)
        except (RuntimeError, OSError) as error:
            raise TasklensError(
                f"Could not join the other ranks at {env['MASTER_ADDR']}:{env['MASTER_PORT']} "
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                "check MASTER_ADDR and MASTER_PORT (torchrun sets them) "
                "or unset WORLD_SIZE to run in one process"
            ) from error
        store.set_timeout(timeout)
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(
            backend, store=store, rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]), timeout=timeout
        )
        if backend == "nccl":
            torch.cuda.set_device(int(env["LOCAL_RANK"]))
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


@contextmanager
def alone() -> Iterator[None]:
    """Inside the block, `per_prompt` and `attribute` compute everything on this rank (the caller
    shares other work between the ranks, e.g. whole random sets); writes stay with rank 0."""
    global _alone
    _alone += 1
    try:
        yield
    finally:
        _alone -= 1


def _splits() -> bool:
    return active() and not _alone


def all_gather(item: Any) -> list[Any]:
    """Every rank's ``item`` (picklable plain data), in rank order; ``[item]`` in one process."""
    if not active():
        return [item]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, item)
    return out


def broadcast(item: Any) -> Any:
    """Rank 0's ``item`` on every rank (``item`` itself in one process)."""
    if not active():
        return item
    box = [item if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


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
    if not _splits() or len(task) < world_size():
        return compute(task, *args, **kwargs)
    mine = shard(len(task))
    local = compute(task.subset(mine), *args, **kwargs)
    full = torch.zeros(len(task), *local.shape[1:], dtype=torch.float64)
    full[mine] = local.detach().double().cpu()
    return all_reduce_sum(full).to(local.dtype)


def attribute(scorer, model, task, **kwargs):
    """``scorer.attribute(model, task)``, each rank scoring its share of the prompts.

    Sums (``reduction="sum"``) are added over ranks; means (``"mean"``) are combined
    weighted by their token counts; the provenance names the whole task, as in one process.
    """
    if not _splits() or len(task) < world_size():
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
    "all_gather",
    "all_reduce_sum",
    "alone",
    "attribute",
    "barrier",
    "broadcast",
    "init",
    "is_main",
    "per_prompt",
    "rank",
    "requested",
    "shard",
    "world_size",
)
