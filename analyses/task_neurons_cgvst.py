"""CGVST task neurons (Song et al., EMNLP 2024) on a tasklens model.

Per task: CGVST scores on prompts carrying format markers ("Q:", "A:",
"Answer:", ...), the global top 5 % as the task's neurons; the inhibition
(zero ablation) and amplification task x task matrices; and the same for sets
of the same size from activation statistics, gradient attribution and random
neurons.

    python analyses/task_neurons_cgvst.py [--model organism] [--out runs/task_neurons_cgvst]
"""

from __future__ import annotations

import argparse

import pandas as pd

from tasklens.matrix import evaluation_matrix, intervention, own_and_others, pivot
from tasklens.models import load_model
from tasklens.organism.evaluate import sample
from tasklens.outputs import OutputDir
from tasklens.plots import heatmap
from tasklens.scoring import CGVST, ActivationStats, GradientAttribution
from tasklens.selection import contrast, random_like, top_percent
from tasklens.tasks.builtin import load_builtin

TASKS = [
    "capital_of",
    "continent_of",
    "element_symbol",
    "addition",
    "larger_number",
    "reverse_list",
    "sentiment",
]
MARKERS = ("Q:", "A:", "Question:", "Answer:")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument("--out", default="runs/task_neurons_cgvst")
    parser.add_argument("--percent", type=float, default=5.0, help="global top % (paper: 5)")
    parser.add_argument("--factor", type=float, default=2.0, help="amplification factor (not published)")
    parser.add_argument("--detection-prompts", type=int, default=128)
    parser.add_argument("--eval-prompts", type=int, default=60)
    args = parser.parse_args()
    out = OutputDir(args.out, vars(args))
    model = load_model(args.model)
    detection = {
        t: sample(load_builtin(t, "detection").marked(MARKERS), args.detection_prompts) for t in TASKS
    }
    evaluation = [sample(load_builtin(t, "evaluation"), args.eval_prompts, seed=3) for t in TASKS]

    methods = {
        "cgvst": {t: CGVST().attribute(model, detection[t]) for t in TASKS},
        "activation": contrast(
            {t: ActivationStats("mean_abs").attribute(model, detection[t]) for t in TASKS}
        ),
        "gradient": {t: GradientAttribution().attribute(model, detection[t]) for t in TASKS},
    }
    summary = []
    for kind in ("ablate", "amplify"):
        for method, scores in methods.items():
            sets = [top_percent(scores[t], args.percent).renamed(t) for t in TASKS]
            frame = evaluation_matrix(
                model, sets, evaluation, n_controls=0, intervene=intervention(kind, args.factor)
            )
            table = pivot(frame)
            out.table(f"{kind}_{method}", table)
            out.figure(f"{kind}_{method}", heatmap(table, f"{kind} {method} top {args.percent:g}%: accuracy"))
            own, other = own_and_others(table, TASKS)
            summary.append(
                dict(
                    intervention=kind,
                    method=method,
                    own_task=own.mean(),
                    other_tasks=other.mean(),
                    original=table.loc["none"].mean(),
                )
            )
        randoms = [
            random_like(top_percent(methods["cgvst"][t], args.percent), seed=0).renamed(t) for t in TASKS
        ]
        table = pivot(
            evaluation_matrix(
                model, randoms, evaluation, n_controls=0, intervene=intervention(kind, args.factor)
            )
        )
        own, other = own_and_others(table, TASKS)
        summary.append(
            dict(
                intervention=kind,
                method="random",
                original=table.loc["none"].mean(),
                own_task=own.mean(),
                other_tasks=other.mean(),
            )
        )
    result = out.table("summary", pd.DataFrame(summary), index=False)
    for row in result.itertuples():
        out.finding(
            f"{row.intervention} {row.method}: own-task accuracy {row.original:.2f} -> {row.own_task:.2f}, "
            f"other tasks -> {row.other_tasks:.2f}"
        )
    out.close()


if __name__ == "__main__":
    main()
