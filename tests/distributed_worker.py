"""Run by tests/test_distributed.py under torch's launcher: each rank scores its share of the prompts."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from tasklens import distributed
from tasklens.data.neurons import NeuronSet
from tasklens.evaluation.evaluate import evaluate_prompts, exact_match
from tasklens.models import load_model
from tasklens.scoring import ActivationStats, ExactAblation, GradientAttribution
from tasklens.tasks.builtin import load_builtin

PAIRS = [(0, 3), (1, 100), (2, 7), (3, 511)]


def results(model, task) -> dict[str, torch.Tensor]:
    """Everything the test compares, computed through tasklens.distributed.

    One prompt per batch, so that a rank's batches are the single process's: with larger batches the
    shards are padded differently, which moves float32 forward passes by ~1e-7 relative.
    """
    only = NeuronSet.from_pairs(PAIRS, (4, 512), "few")
    return {
        "gradient_attribution": distributed.attribute(
            GradientAttribution(), model, task, batch_size=1
        ).values,
        "activation_mean": distributed.attribute(ActivationStats("mean"), model, task, batch_size=1).values,
        "exact_ablation": distributed.attribute(ExactAblation(only=only), model, task, batch_size=1).values,
        "logprob": evaluate_prompts(model, task, "logprob", batch_size=1),
        "exact_match": exact_match(model, task, batch_size=1).float(),
    }


def matrix(model, journal: Path | None = None) -> dict:
    """An evaluation matrix with sequential random sets where the verdict is at stake, two random
    sets per forward pass: what `tests/acceptance/test_distributed.py` compares with one process."""
    from tasklens.analysis.matrix import evaluation_matrices
    from tasklens.scoring import GradientAttribution
    from tasklens.selection import random_like, top_k

    scores = GradientAttribution().attribute(model, load_builtin("addition", "detection").head(32))
    addition = top_k(scores, 100).renamed("addition")
    sets = [addition, random_like(addition, seed=123).renamed("continent_of")]
    tasks = [load_builtin(n, "evaluation").head(24) for n in ("addition", "continent_of", "larger_number")]
    results = evaluation_matrices(
        model, sets, tasks, ("exact_match", "logprob"), n_controls=5, controls_on="own", stop_after=2,
        at_stake=15, sets_per_forward=2, journal=journal,
    )  # fmt: skip
    return {metric: result.to_dict() for metric, result in results.items()}


def main() -> None:
    out, mode = Path(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    if mode == "die" and os.environ.get("RANK") == "1":
        os._exit(3)  # a rank that dies before the first collective
    distributed.init()
    model = load_model("organism")
    if mode == "matrix":
        data = matrix(model, out / "journal")
        (out / f"matrix{distributed.rank()}.json").write_text(json.dumps(data))
        distributed.barrier()
        return
    task = load_builtin("capital_of", "detection").sample(13)  # 13: the shards differ in size
    values = {k: v.detach().contiguous().double() for k, v in results(model, task).items()}
    save_file(values, str(out / f"rank{distributed.rank()}.safetensors"))
    distributed.barrier()


if __name__ == "__main__":
    main()
