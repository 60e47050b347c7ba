"""CGVST task neurons (Song et al., EMNLP 2024) on a tasklens model.

Per task: CGVST scores on prompts carrying format markers, the global top 5 % as
the task's neurons (the paper's setting). On a chat model the prompts come from the
model's own chat template and the markers are its special tokens and role names
(SmolLM2: ``<|im_start|>``, ``<|im_end|>``, system/user/assistant; the paper's
``[INST]`` tokens of Llama-2-chat); on the organism, "Q:"/"A:"-style markers.
Then inhibition (zero) and amplification (x2 and a stronger factor) of each task's
set: own task vs other tasks vs random sets of the same per-layer counts, and the
same for sets of the same size chosen by |a * dL/da| and by activation contrast;
the split-half stability of every CGVST set and its effect on the prompts it was
found on against held-out ones.

    python analyses/task_neurons_cgvst.py [--model organism|smollm2-135m] [--out runs/task_neurons_cgvst]
"""

from __future__ import annotations

import time

import pandas as pd
from common import (
    KINDS,
    Parser,
    check_args,
    check_model_tasks,
    describe_counts,
    held_out_effects,
    locate_saved,
    prepare,
    run_main,
    set_stability,
)

from tasklens.analysis.matrix import evaluation_matrix
from tasklens.evaluation.known import default_style
from tasklens.interventions import Intervention
from tasklens.models import ModelInfo, load_model
from tasklens.runs.outputs import OutputDir
from tasklens.scoring import CGVST, ActivationStats, GradientAttribution

ORGANISM_TASKS = ["capital_of", "continent_of", "element_symbol", "addition", "larger_number", "sentiment"]
CHAT_TASKS = ["continent_of", "country_language", "city_country", "sentiment", "addition", "copy_list"]
ORGANISM_MARKERS = ("Q:", "A:", "Question:", "Answer:")


def main() -> None:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument("--out", default="runs/task_neurons_cgvst")
    parser.add_argument("--tasks", nargs="*")
    parser.add_argument("--percent", type=float, default=5.0, help="global top %% (paper: 5)")
    parser.add_argument("--factors", type=float, nargs="*", default=[2.0, 5.0], help="amplification factors")
    parser.add_argument(
        "--asked",
        type=int,
        default=300,
        help="most prompts asked per split (known filter; stops at enough known)",
    )
    parser.add_argument("--shots", type=int, default=1, help="demonstration turns per chat prompt")
    parser.add_argument("--n-demo", type=int, help="marker positions of the demonstrations (CGVST's split)")
    parser.add_argument("--detection-prompts", type=int, default=32)
    parser.add_argument("--eval-prompts", type=int, default=16)
    parser.add_argument("--controls", type=int, default=3, help="random sets per CGVST set (own task)")
    parser.add_argument("--metric", default="next_token", help="next_token = greedy exact match, one pass")
    parser.add_argument("--stability-splits", type=int, default=2)
    args = parser.parse_args()
    check_args(args, {"controls": 0})
    started = time.perf_counter()
    model = load_model(args.model)
    info = ModelInfo.of(model)
    organism = default_style(model) == "organism"
    check_model_tasks(model, args.tasks, KINDS, None if organism else "chat")
    out = OutputDir(args.out, vars(args))
    names = args.tasks or (ORGANISM_TASKS if organism else CHAT_TASKS)
    with out.stage("known facts"):
        data = prepare(
            model,
            names,
            args.detection_prompts,
            args.eval_prompts,
            shots=args.shots,
            asked=args.asked,
            style=None if organism else "chat",
            known_eval=False,
            min_known=2,
            transform=(lambda task: task.marked(ORGANISM_MARKERS)) if organism else None,
        )
        out.table("known_facts", data.counts, index=False)
        out.finding(describe_counts(data.counts, info.name) + ("" if organism else " (chat template)"))
        names = [n for n in names if n in data.detection]
    if organism:
        n_demo = args.n_demo or CGVST.n_demo
    else:
        # ChatML: the system turn and each demonstration turn carry <|im_start|>, role, <|im_end|>
        n_demo = args.n_demo or 3 * (1 + 2 * args.shots)
    detection = data.detection
    out.finding(
        f"markers: {list(detection[names[0]].markers)}; demonstration marker positions n_demo = {n_demo}"
    )
    evaluation = [data.evaluation[n] for n in names]

    with out.stage("detection"):
        scorers = {
            "cgvst": CGVST(n_demo=n_demo),
            "gradient": GradientAttribution(),
            "activation": ActivationStats("mean_abs"),
        }
        located = {
            method: locate_saved(
                model, {t: detection[t] for t in names}, scorer, "top_percent", args.percent,
                out.path / "scores" / method, contrast=method == "activation",
            )[0]
            for method, scorer in scorers.items()
        }  # fmt: skip
    with out.stage("interventions"):
        interventions = [Intervention("zero")] + [Intervention("amplify", factor=f) for f in args.factors]
        summary = []
        for spec in interventions:
            for method, sets in located.items():
                if spec.kind == "amplify" and spec.factor != args.factors[0] and method != "cgvst":
                    continue  # the stronger factor only for the paper's method
                result = evaluation_matrix(
                    model,
                    sets,
                    evaluation,
                    n_controls=args.controls if method == "cgvst" else 0,
                    intervention=spec,
                    metric=args.metric,
                    controls_on="own",
                )
                label = f"{spec.kind}{'' if spec.kind == 'zero' else f'_x{spec.factor:g}'}_{method}"
                out.table(label, result.pivot())
                out.figure(label, result.plot("value"))
                own = pd.Series({t: result.values.loc[t, t] for t in names})
                others = pd.Series(
                    {t: result.values.loc[t, [o for o in names if o != t]].mean() for t in names}
                )
                row = dict(
                    intervention=spec.label,
                    method=method,
                    original=result.baseline.mean(),
                    own_task=own.mean(),
                    other_tasks=others.mean(),
                )
                if method == "cgvst" and args.controls:
                    row["random_own"] = pd.Series({t: result.controls.loc[t, t] for t in names}).mean()
                    row["random_std"] = pd.Series({t: result.controls_std.loc[t, t] for t in names}).mean()
                summary.append(row)
        table = out.table("summary", pd.DataFrame(summary), index=False)
        for row in table.itertuples():
            control = (
                f", random sets on the own task {row.random_own:.2f} ± {row.random_std:.2f}"
                if "random_own" in table and row.random_own == row.random_own
                else ""
            )
            out.finding(
                f"{row.intervention} {row.method}: accuracy {row.original:.2f} "
                f"-> own task {row.own_task:.2f}, "
                f"other tasks {row.other_tasks:.2f}{control}"
            )

    with out.stage("stability"):
        set_stability(
            model, detection, lambda _: CGVST(n_demo=n_demo), "top_percent", args.percent,
            info.n_neurons, out, args.stability_splits,
        )  # fmt: skip
    with out.stage("held-out effect"):
        held_out_effects(model, located["cgvst"], data, out, n_controls=2)
    out.finding(f"wall time {time.perf_counter() - started:.0f} s on {info.name}")
    out.close()


if __name__ == "__main__":
    run_main(main)
