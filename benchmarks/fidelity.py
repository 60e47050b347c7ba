"""Fidelity of every cheap scorer against exact zero-ablation, in-sample and on held-out prompts.

For each task, two disjoint samples A and B of detection prompts (the model's known
facts on a pretrained model). Ground truth: the exact drop in the answer's
log-probability when one neuron is zero-ablated, summed over a sample's prompts, for
every neuron of the chosen layers (all layers by default; on a large model pick 2-3,
``--layers 5 20 28``, since exact ablation costs one partial forward per neuron).
Each cheap scorer runs on sample A. Reported per task and scorer, on the chosen layers:

- ``spearman`` and ``recall_in_sample``: against exact(A), the prompts it was scored on;
- ``recall_held_out``: its top 1 % against exact(B), prompts it never saw: what a
  set found this way says about the task rather than about its prompts;
- ``exact_split_half``: exact(A)'s top 1 % against exact(B)'s, the ceiling any
  scorer's held-out recall can reach on samples of this size.

    python benchmarks/fidelity.py [--model organism] [--prompts 16] [--layers ...] [--out ...]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch
from scipy.stats import spearmanr

from tasklens.data.neurons import NeuronSet, ranking
from tasklens.evaluation.known import default_style, load_for_model
from tasklens.io import write_json
from tasklens.models import ModelInfo, load_model
from tasklens.scoring import (
    ActivationStats,
    AttributionPatching,
    ExactAblation,
    GradientAttribution,
    IntegratedGradients,
    VerifiedPatching,
)
from tasklens.tasks.builtin import builtin_task_names

CHEAP = {
    "verified_atp_5pct": lambda: VerifiedPatching(candidate_percent=5.0),
    "verified_atp_1pct": lambda: VerifiedPatching(candidate_percent=1.0),
    "atp_zero": lambda: AttributionPatching(baseline="zero"),
    "atp*_graddrop": lambda: AttributionPatching(baseline="zero", graddrop=True),
    "grad_x_act": GradientAttribution,
    "integrated_gradients": IntegratedGradients,
    "mean_abs_activation": lambda: ActivationStats("mean_abs", "all"),
}
NATURAL_TASKS = ["continent_of", "country_language", "sentiment", "copy_list"]


def recall_at(scores: torch.Tensor, exact: torch.Tensor, k: int) -> float:
    """|top-k(scores) & top-k(exact)| / k, both in tasklens's one stable ranking."""
    top = set(ranking(scores)[:k].tolist())
    truth = set(ranking(exact)[:k].tolist())
    return len(top & truth) / k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument("--prompts", type=int, default=16, help="per sample (two disjoint samples per task)")
    parser.add_argument("--tasks", nargs="*", default=None)
    parser.add_argument("--layers", type=int, nargs="*", default=None, help="default: every layer")
    parser.add_argument("--scorers", nargs="*", default=None, choices=sorted(CHEAP))
    parser.add_argument("--out", default=None, help="default: benchmarks/results/fidelity[_MODEL].json")
    args = parser.parse_args()
    model = load_model(args.model)
    info = ModelInfo.of(model)
    layers = args.layers if args.layers is not None else list(range(info.n_layers))
    mask = torch.zeros(info.n_layers, info.d_mlp, dtype=torch.bool)
    mask[layers] = True
    chosen = NeuronSet(mask, "chosen_layers")
    k = max(1, round(0.01 * int(mask.sum())))
    organism = default_style(model) == "organism"
    rows, timings = [], {}
    out = args.out or f"benchmarks/results/fidelity{'' if organism else '_' + args.model}.json"

    def save(complete: bool) -> None:  # after every row, so a run killed late keeps what it measured
        record = {"model": args.model, "prompts_per_sample": args.prompts, "layers": layers, "k": k}
        write_json(out, {**record, "complete": complete, "rows": rows, "timings_seconds": timings})

    for name in args.tasks or (builtin_task_names() if organism else NATURAL_TASKS):
        pool = load_for_model(model, name, "detection", asked=8 * args.prompts, seed=1)
        if len(pool) < 2 * args.prompts:
            print(f"{name}: only {len(pool)} known prompts, skipped", flush=True)
            continue
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(1)).tolist()
        samples = [pool.subset(sorted(order[i * args.prompts : (i + 1) * args.prompts])) for i in (0, 1)]
        start = time.perf_counter()
        exact = [ExactAblation(only=chosen).attribute(model, s).values[mask] for s in samples]
        timings[f"{name}/exact_per_sample"] = (time.perf_counter() - start) / 2
        ceiling = recall_at(exact[0], exact[1], k)
        for label, make in CHEAP.items():
            if args.scorers and label not in args.scorers:
                continue
            start = time.perf_counter()
            scores = make().attribute(model, samples[0]).values[mask]
            seconds = time.perf_counter() - start
            rows.append(
                dict(
                    task=name,
                    scorer=label,
                    spearman=round(float(spearmanr(scores.numpy(), exact[0].numpy()).statistic), 3),
                    recall_in_sample=round(recall_at(scores, exact[0], k), 3),
                    recall_held_out=round(recall_at(scores, exact[1], k), 3),
                    exact_split_half=round(ceiling, 3),
                    seconds=round(seconds, 2),
                    cost_vs_exact=round(seconds / timings[f"{name}/exact_per_sample"], 4),
                )
            )
            save(complete=False)
        print(name, "done", flush=True)
    frame = pd.DataFrame(rows)
    columns = ["spearman", "recall_in_sample", "recall_held_out", "exact_split_half", "cost_vs_exact"]
    summary = frame.groupby("scorer")[columns].mean()
    print(frame.pivot(index="task", columns="scorer", values="recall_held_out").to_string())
    print()
    print(summary.round(3).to_string())
    save(complete=True)


if __name__ == "__main__":
    main()
