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

from tasklens.interventions import Intervention
from tasklens.matrix import evaluation_matrix
from tasklens.models import load_model
from tasklens.outputs import OutputDir
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
    parser.add_argument("--percent", type=float, default=5.0, help="global top %% (paper: 5)")
    parser.add_argument("--factor", type=float, default=2.0, help="amplification factor (not published)")
    parser.add_argument("--detection-prompts", type=int, default=128)
    parser.add_argument("--eval-prompts", type=int, default=60)
    args = parser.parse_args()
    out = OutputDir(args.out, vars(args))
    model = load_model(args.model)
    detection = {
        t: load_builtin(t, "detection").marked(MARKERS).sample(args.detection_prompts) for t in TASKS
    }
    evaluation = [load_builtin(t, "evaluation").sample(args.eval_prompts, seed=3) for t in TASKS]

    methods = {
        "cgvst": {t: CGVST().attribute(model, detection[t]) for t in TASKS},
        "activation": contrast(
            {t: ActivationStats("mean_abs").attribute(model, detection[t]) for t in TASKS}
        ),
        "gradient": {t: GradientAttribution().attribute(model, detection[t]) for t in TASKS},
    }
    summary = []
    for kind in ("zero", "amplify"):
        spec = Intervention(kind, factor=args.factor)
        for method, scores in methods.items():
            sets = [top_percent(scores[t], args.percent).renamed(t) for t in TASKS]
            result = evaluation_matrix(model, sets, evaluation, n_controls=0, intervention=spec)
            out.table(f"{kind}_{method}", result.pivot())
            out.figure(f"{kind}_{method}", result.plot("value"))
            own = result.own_and_others()
            summary.append(
                dict(
                    intervention=spec.label,
                    method=method,
                    own_task=own.value.mean(),
                    other_tasks=(own.others_change + own.baseline.mean()).mean(),
                    original=result.baseline.mean(),
                )
            )
        randoms = [
            random_like(top_percent(methods["cgvst"][t], args.percent), seed=0).renamed(t) for t in TASKS
        ]
        result = evaluation_matrix(model, randoms, evaluation, n_controls=0, intervention=spec)
        own = result.own_and_others()
        summary.append(
            dict(
                intervention=spec.label,
                method="random",
                original=result.baseline.mean(),
                own_task=own.value.mean(),
                other_tasks=(own.others_change + own.baseline.mean()).mean(),
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
