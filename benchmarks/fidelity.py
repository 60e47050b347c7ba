"""Fidelity of every cheap scorer against exact zero-ablation, for every built-in task.

For each task: exact per-neuron zero-ablation effects (drop in the answer's
log-probability, summed over prompts) on a sample of detection prompts, and each
cheap scorer on the same prompts. Prints Spearman's rho and top-1 % recall
(|top-k(scorer) & top-k(exact)| / k) per task and scorer, writes JSON.

    python benchmarks/fidelity.py [--prompts 16] [--out benchmarks/results/fidelity.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
from scipy.stats import spearmanr

from tasklens.io import write_json
from tasklens.models import load_model
from tasklens.scoring import (
    ActivationStats,
    AttributionPatching,
    ExactAblation,
    GradientAttribution,
    IntegratedGradients,
    VerifiedPatching,
)
from tasklens.tasks.builtin import builtin_task_names, load_builtin

CHEAP = {
    "verified_atp_5pct": VerifiedPatching(candidate_percent=5.0),
    "verified_atp_5pct_signed_only": VerifiedPatching(candidate_percent=5.0, with_absolute=False),
    "atp_zero": AttributionPatching(baseline="zero"),
    "atp*_graddrop": AttributionPatching(baseline="zero", graddrop=True),
    "grad_x_act": GradientAttribution(),
    "integrated_gradients": IntegratedGradients(),
    "mean_abs_activation": ActivationStats("mean_abs", "all"),
}


def recall_at(scores, exact, k: int) -> float:
    top = set(scores.flatten().topk(k).indices.tolist())
    truth = set(exact.flatten().topk(k).indices.tolist())
    return len(top & truth) / k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tasks", nargs="*", default=None)
    parser.add_argument("--scorers", nargs="*", default=None, choices=sorted(CHEAP))
    parser.add_argument("--out", default="benchmarks/results/fidelity.json")
    args = parser.parse_args()
    model = load_model(args.model)
    rows = []
    for name in args.tasks or builtin_task_names():
        task = load_builtin(name, "detection").sample(args.prompts, seed=1)
        start = time.perf_counter()
        exact = ExactAblation().attribute(model, task).values
        exact_seconds = time.perf_counter() - start
        k = max(1, round(0.01 * exact.numel()))
        for label, scorer in CHEAP.items():
            if args.scorers and label not in args.scorers:
                continue
            start = time.perf_counter()
            scores = scorer.attribute(model, task).values
            seconds = time.perf_counter() - start
            rho = spearmanr(scores.flatten().numpy(), exact.flatten().numpy()).statistic
            rows.append(
                dict(
                    task=name,
                    scorer=label,
                    spearman=round(float(rho), 3),
                    recall_top1pct=round(recall_at(scores, exact, k), 3),
                    cost_vs_exact=round(seconds / exact_seconds, 4),
                )
            )
        print(name, "done", flush=True)
    frame = pd.DataFrame(rows)
    summary = frame.groupby("scorer")[["spearman", "recall_top1pct", "cost_vs_exact"]].agg(["mean", "min"])
    print(frame.pivot(index="task", columns="scorer", values="recall_top1pct").to_string())
    print()
    print(summary.to_string())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, {"model": args.model, "prompts_per_task": args.prompts, "rows": rows})


if __name__ == "__main__":
    main()
