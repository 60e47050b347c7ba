"""The evaluation engine for random sets: where every verdict's random sets are drawn and evaluated.

Every test of a neuron set compares it with random sets of the same per-layer counts, and those
are almost all of an analysis's compute. `RandomSets` evaluates them, for `evaluation_matrices`
and so for every command and analysis built on it:

- the random set of run ``i`` is ``sampler(neurons, seed + i)`` (`tasklens.selection.random_like`
  by default), evaluated like the set itself (`tasklens.evaluation.evaluate_metrics`, the same
  batches), so in float32 its values are those of an evaluation of that set alone;
- ``precision="bfloat16"`` runs the random sets' matrix products in bfloat16 with float32
  accumulation, residual stream, unembedding and metrics (`tasklens.models.precision`), in the
  batches that hold the fewest padded tokens (`TokenizedTask.batches` with ``packed``); the
  baseline, the sets themselves and the floor stay float32;
- ``sets_per_forward`` random sets share one forward pass, each on its own copy of the batch
  (`tasklens.interventions.rows`): worth it on a GPU, not on a CPU (no faster on 2 cores);
- under torchrun the random sets (not the prompts) are shared between the ranks, rank ``r``
  evaluating its share of each round and every rank receiving all of them, so every rank holds
  the values one process would have computed;
- with sequential stopping (Besag-Clifford, `tasklens.analysis.verdict.sequential_draws`) a
  round evaluates only as many random sets as can be drawn before the earliest possible stop
  (more only to keep every rank busy), and draws after the stop are discarded: the draws kept
  are exactly those of the one-at-a-time loop;
- with a ``journal`` folder, every finished random set is written there at once (safetensors and
  JSON, atomically) and a later call with the same model, set, tasks, metrics, intervention and
  settings reads it instead of evaluating it again: an interrupted analysis loses at most the
  random sets of the round in flight (one random set in one process with ``sets_per_forward=1``).

Computing the unmodified blocks below the first layer a set touches once per set was measured
not to apply: every set of the ladder and of the specificity analysis has neurons in layer 0.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from tasklens import distributed
from tasklens.analysis.verdict import sequential_draws
from tasklens.data.neurons import NeuronSet
from tasklens.data.provenance import model_fingerprint, plain, tensor_hash
from tasklens.errors import TasklensError, check_choice
from tasklens.evaluation.evaluate import evaluate_copies, evaluate_metrics
from tasklens.evaluation.metrics import METRICS, is_generative
from tasklens.interventions import Intervention
from tasklens.interventions.rows import apply_by_rows
from tasklens.io import load_artifact, save_artifact
from tasklens.models.precision import PRECISIONS, reduced_precision
from tasklens.selection import random_like
from tasklens.tasks.task import Task

#: what a journal entry's JSON says it is
JOURNAL_KIND = "tasklens random set"
#: random sets per forward pass where ``sets_per_forward`` is not given, by device type
DEFAULT_SETS_PER_FORWARD = {"cpu": 1, "cuda": 8}

Sampler = Callable[[NeuronSet, int], NeuronSet]


@dataclass(frozen=True)
class RandomDraw:
    """One random set's evaluation.

    Attributes:
        run: its run number ``i`` (the random set is ``sampler(neurons, seed + i)``).
        sha256: the random set's mask hash.
        values: per task evaluated, ``[prompt x metric]`` float64 values (metrics in the engine's order).
    """

    run: int
    sha256: str
    values: dict[str, Float[Tensor, "prompt metric"]]


class RandomSets:
    """Evaluates a neuron set's random sets on tasks, as `evaluation_matrices` needs them.

    Args:
        model: the model (a TransformerLens bridge, float32).
        tasks: the tasks evaluated (distinct names).
        metrics: metric names (`tasklens.evaluation.metrics.METRICS`, or ``greedy_match``).
        intervention: the `Intervention` template applied to each random set (prepared for
            ``model``: `Intervention.prepared`).
        batch_size: prompts per batch, as for the set itself.
        seed: run ``i``'s random set is ``sampler(neurons, seed + i)``.
        precision: ``"float32"`` or ``"bfloat16"`` (`tasklens.models.precision`) for the random
            sets' forward passes.
        sets_per_forward: random sets per forward pass (None: 1 on the CPU, 8 on CUDA).
        journal: a folder to keep every finished random set in (None: none kept).
        sampler: ``(neurons, seed) -> NeuronSet``, the random set of a seed (default
            `tasklens.selection.random_like`; pass e.g. a `functools.partial` of it for its options).
        share_prefix: run a batch's shared prompt prefix once (`evaluate_metrics`); None: where
            the intervention allows it (`Intervention.runs_in_pieces`).

    Example:
        >>> import tasklens
        >>> from tasklens.interventions import Zero
        >>> model = tasklens.load_model("organism")
        >>> task = tasklens.load_builtin("continent_of", "evaluation").head(8)
        >>> found = tasklens.NeuronSet.from_pairs([(1, i) for i in range(40)], (4, 512), "continent_of")
        >>> engine = RandomSets(model, [task], ["logprob"], Zero())
        >>> draws = engine.draws(found, 3)
        >>> [d.run for d in draws], tuple(draws[0].values["continent_of"].shape)
        ([0, 1, 2], (8, 1))
    """

    def __init__(
        self,
        model,
        tasks: Sequence[Task],
        metrics: Sequence[str],
        intervention: Intervention,
        *,
        batch_size: int = 64,
        seed: int = 0,
        precision: str = "float32",
        sets_per_forward: int | None = None,
        journal: str | Path | None = None,
        sampler: Sampler | None = None,
        share_prefix: bool | None = None,
    ) -> None:
        check_choice("precision", precision, PRECISIONS)
        if sets_per_forward is None:
            sets_per_forward = DEFAULT_SETS_PER_FORWARD.get(torch.device(str(model.cfg.device)).type, 1)
        whole = isinstance(sets_per_forward, int) and not isinstance(sets_per_forward, bool)
        if not whole or sets_per_forward < 1:
            raise TasklensError(f"sets_per_forward must be a whole number >= 1, got {sets_per_forward!r}")
        if sampler is not None and not callable(sampler):
            raise TasklensError(
                "sampler must be a function (neurons, seed) -> NeuronSet such as random_like, "
                f"got {sampler!r}"
            )
        self.model, self.tasks, self.metrics = model, list(tasks), list(metrics)
        self.intervention, self.batch_size, self.seed = intervention, batch_size, seed
        self.precision, self.sets_per_forward = precision, sets_per_forward
        self.sampler = sampler or random_like
        self.share_prefix = intervention.runs_in_pieces if share_prefix is None else share_prefix
        # reduced precision moves every value anyway: its batches hold the fewest padded tokens
        self.packed = precision != "float32"
        self.journal = _check_journal(journal)
        self._generative = any(is_generative(METRICS.get(m)) for m in self.metrics)

    # --- the draws ------------------------------------------------------------------------------
    def draws(
        self,
        neurons: NeuronSet,
        most: int,
        *,
        only: str | None = None,
        statistic: Callable[[RandomDraw], Sequence[float]] | None = None,
        observed: Sequence[float] | None = None,
        stop_after: int | None = None,
    ) -> list[RandomDraw]:
        """The random sets of ``neurons``, runs ``0 .. most - 1``, evaluated on every task (or the
        task ``only``), in run order.

        Args:
            neurons: the set whose per-layer counts the random sets keep.
            most: how many random sets at most.
            only: evaluate on this task alone (None: every task).
            statistic, observed, stop_after: stop sequentially (`sequential_draws`): once every
                entry of ``statistic(draw)`` has been at least its ``observed`` ``stop_after``
                times. The draws returned are those the one-at-a-time loop keeps.

        Returns:
            The draws kept, run 0 first.
        """
        if most <= 0:
            return []
        tasks = [t for t in self.tasks if only is None or t.name == only]
        known = self._journaled(neurons, tasks)
        width = self.sets_per_forward * distributed.world_size()
        sequential = stop_after is not None
        if sequential and (statistic is None or observed is None):
            raise TasklensError("Sequential draws need statistic and observed beside stop_after")
        target = np.asarray(observed, dtype=float) if sequential else None

        def fetch(i: int) -> RandomDraw:
            if i not in known:
                round_size = width
                if sequential:
                    # the earliest stop: every statistic needs stop_after exceedances
                    seen = [np.asarray(statistic(known[j]), dtype=float) for j in range(i)]
                    exceeded = (np.stack(seen) >= target).sum(0) if seen else np.zeros(target.size, dtype=int)
                    needed = int(max(1, (stop_after - exceeded).max()))
                    round_size = max(distributed.world_size(), min(width, needed))
                runs = [j for j in range(i, most) if j not in known][:round_size]
                fresh = self._evaluate(neurons, runs[distributed.rank() :: distributed.world_size()], tasks)
                gathered = {d.run: d for part in distributed.all_gather(fresh) for d in part}
                self._write(neurons, tasks, [gathered[j] for j in runs])
                known.update(gathered)
            return known[i]

        with ExitStack() as stack:
            stack.enter_context(distributed.alone())
            stack.enter_context(reduced_precision(self.model, self.precision))
            if sequential:
                n = len(sequential_draws(target, lambda i: statistic(fetch(i)), stop_after, most))
            else:
                n = most
            return [fetch(i) for i in range(n)]

    def random_set(self, neurons: NeuronSet, run: int) -> NeuronSet:
        """Run ``run``'s random set of ``neurons``."""
        drawn = self.sampler(neurons, self.seed + run)
        if not isinstance(drawn, NeuronSet) or drawn.counts_per_layer() != neurons.counts_per_layer():
            raise TasklensError(
                f"The sampler returned {type(drawn).__name__} for {neurons.name!r}, not a NeuronSet with "
                "its per-layer counts; a sampler (neurons, seed) -> NeuronSet keeps every layer's count"
            )
        return drawn

    # --- evaluating ----------------------------------------------------------------------------
    def _evaluate(self, neurons: NeuronSet, runs: Sequence[int], tasks: Sequence[Task]) -> list[RandomDraw]:
        """Evaluate runs ``runs`` on this process, ``sets_per_forward`` at a time."""
        out = []
        step = 1 if self._generative else self.sets_per_forward
        for start in range(0, len(runs), step):
            chunk = list(runs[start : start + step])
            drawn = [self.random_set(neurons, i) for i in chunk]
            values: list[dict[str, Tensor]] = [{} for _ in chunk]
            if len(chunk) == 1 and (self._generative or not self.packed):
                with self.intervention.on(drawn[0]).apply(self.model):
                    for task in tasks:
                        values[0][task.name] = self._alone(task)
            else:
                with apply_by_rows(self.model, [self.intervention.on(s) for s in drawn]):
                    for task in tasks:
                        both = evaluate_copies(
                            self.model, task, self.metrics, len(chunk), self.batch_size, self.share_prefix,
                            self.packed,
                        )  # fmt: skip
                        for k in range(len(chunk)):
                            values[k][task.name] = both[k]
            out += [
                RandomDraw(i, tensor_hash(s.mask), v) for i, s, v in zip(chunk, drawn, values, strict=True)
            ]
        return out

    def _alone(self, task: Task) -> Tensor:
        return evaluate_metrics(self.model, task, self.metrics, self.batch_size, self.share_prefix).double()

    # --- the journal -------------------------------------------------------------------------------
    def key(self, neurons: NeuronSet) -> str:
        """What a journal entry of ``neurons``'s random sets must match: the model, the set, every
        task, the metrics, the intervention and every setting that can change a value."""
        about = {
            "model": model_fingerprint(self.model),
            "set": tensor_hash(neurons.mask),
            "tasks": [[t.name, t.data_hash()] for t in self.tasks],
            "metrics": self.metrics,
            "intervention": plain({k: v for k, v in self.intervention.to_dict().items() if k != "neurons"}),
            "batch_size": self.batch_size,
            "precision": self.precision,
            "sets_per_forward": self.sets_per_forward,
            "share_prefix": self.share_prefix,
            "packed": self.packed,
            "seed": self.seed,
            "sampler": _describe(self.sampler),
        }
        return hashlib.sha256(json.dumps(about, sort_keys=True, default=str).encode()).hexdigest()

    def _folder(self, neurons: NeuronSet) -> Path:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", neurons.name)[:40] or "set"
        return self.journal / f"{name}-{self.key(neurons)[:16]}"

    def _journaled(self, neurons: NeuronSet, tasks: Sequence[Task]) -> dict[int, RandomDraw]:
        """The journal's finished random sets of ``neurons`` on ``tasks`` (read on rank 0, sent to all)."""
        if self.journal is None:
            return {}
        found: dict[int, RandomDraw] = {}
        if distributed.is_main():
            folder, key = self._folder(neurons), self.key(neurons)
            for entry in sorted(folder.glob("run_*.json")) if folder.is_dir() else []:
                draw = self._read(entry, neurons, key, tasks)
                if draw is not None:
                    found[draw.run] = draw
        return distributed.broadcast(found)

    def _read(self, entry: Path, neurons: NeuronSet, key: str, tasks: Sequence[Task]) -> RandomDraw | None:
        try:
            values, meta = load_artifact(entry, JOURNAL_KIND)
        except TasklensError as error:
            raise TasklensError(
                f"The journal entry {str(entry)!r} cannot be read ({error}); move it away, or pass "
                "another journal folder"
            ) from error
        run = int(meta["run"])
        if meta.get("key") != key or meta.get("tasks") != [t.name for t in tasks]:
            return None  # drawn for other tasks (another controls_on): evaluated again
        if meta.get("random_set") != tensor_hash(self.random_set(neurons, run).mask):
            return None  # another sampler drew it
        parts = torch.split(values, [len(t) for t in tasks]) if tasks else ()
        return RandomDraw(run, meta["random_set"], {t.name: p for t, p in zip(tasks, parts, strict=True)})

    def _write(self, neurons: NeuronSet, tasks: Sequence[Task], draws: Sequence[RandomDraw]) -> None:
        if self.journal is None:
            return
        folder, key = self._folder(neurons), self.key(neurons)
        for draw in draws:
            parts = [draw.values[t.name] for t in tasks]
            values = torch.cat(parts) if parts else torch.zeros(0, len(self.metrics), dtype=torch.float64)
            meta = {
                "kind": JOURNAL_KIND,
                "key": key,
                "set": neurons.name,
                "run": draw.run,
                "seed": self.seed + draw.run,
                "random_set": draw.sha256,
                "tasks": [t.name for t in tasks],
                "metrics": self.metrics,
            }
            save_artifact(folder / f"run_{draw.run:06d}", values, meta)


def _describe(sampler: Sampler) -> object:
    """What identifies a sampler of random sets in a journal's key: its strata (random sets matched
    on size, `tasklens.selection.Strata`) or its qualified name."""
    strata = getattr(sampler, "keywords", {}).get("strata")
    if strata is not None:
        return strata.to_dict()
    function = getattr(sampler, "func", sampler)
    return f"{getattr(function, '__module__', '')}.{getattr(function, '__qualname__', repr(function))}"


def _check_journal(journal: str | Path | None) -> Path | None:
    if journal is None:
        return None
    path = Path(journal).expanduser()
    if path.exists() and not path.is_dir():
        raise TasklensError(f"The journal {str(path)!r} is a file; give a folder (new or one used before)")
    return path
