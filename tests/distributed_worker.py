"""Run by tests/test_distributed.py under torch's launcher: each rank scores its share of the prompts."""

from __future__ import annotations

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


def main() -> None:
    out, mode = Path(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    if mode == "die" and os.environ.get("RANK") == "1":
        os._exit(3)  # a rank that dies before the first collective
    distributed.init()
    model = load_model("organism")
    task = load_builtin("capital_of", "detection").sample(13)  # 13: the shards differ in size
    values = {k: v.detach().contiguous().double() for k, v in results(model, task).items()}
    save_file(values, str(out / f"rank{distributed.rank()}.safetensors"))
    distributed.barrier()


if __name__ == "__main__":
    main()
