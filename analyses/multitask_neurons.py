"""Task-specific neurons by gradient attribution (Leng & Xiong, COLING 2025) on a tasklens model.

Gradient attribution |a * dL/da| per task on detection prompts the model answers
correctly; the top 10 % are the task's neurons (the paper's setting). Then:

- the deactivation table in the paper's shape: original accuracy, accuracy with as
  many random neurons off (same per-layer counts, mean and std over seeds), and with
  the task's neurons off, per task and averaged, on held-out prompts (all of them, so
  "original" is the model's real accuracy), beside the other tasks' accuracy with the
  same set off (is the set specific?);
- the overlap (IoU) matrix across tasks and groups at 10/30/50/70 %, and the per-layer
  parameter similarity of the sets (with a deactivation proxy for transfer, labelled
  as such: fine-tuning transfer is `tasklens.finetune`'s job);
- stability: split-half Jaccard of every set, and of one task's set as the number of
  prompts grows; each set's effect on the prompts it was found on against held-out ones.

    python analyses/multitask_neurons.py [--model organism|smollm2-135m] [--out runs/multitask_neurons]
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
    own_effect_table,
    prepare,
    run_main,
    set_stability,
    task_names,
)

from tasklens.analysis.compare import (
    overlap,
    overlap_matrix,
    parameter_similarity,
    similarity_transfer_correlation,
)
from tasklens.analysis.matrix import evaluation_matrix
from tasklens.analysis.plots import heatmap
from tasklens.analysis.stability import stability_curve
from tasklens.evaluation.known import default_style, load_for_model
from tasklens.models import ModelInfo, load_model
from tasklens.runs.outputs import OutputDir
from tasklens.scoring import GradientAttribution
from tasklens.selection import top_percent

GROUPS = {"relation": "knowledge", "algorithmic": "algorithmic", "classification": "classification"}
#: for natural-language models: knowledge, classification and algorithmic tasks SmolLM2 does well above chance
NATURAL_TASKS = ["continent_of", "country_language", "city_country", "sentiment", "addition", "copy_list"]
PAPER = {"original": 87.7, "random_off": 84.8, "set_off": 76.0}  # Llama-2-7B, classification


def main() -> None:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument("--out", default="runs/multitask_neurons")
    parser.add_argument("--tasks", nargs="*", help="default: every task (organism) or NATURAL_TASKS")
    parser.add_argument("--percent", type=float, default=10.0, help="task neurons, %% of all (paper: 10)")
    parser.add_argument(
        "--asked",
        type=int,
        default=300,
        help="most prompts asked per split (known filter; stops at enough known)",
    )
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--detection-prompts", type=int, default=64)
    parser.add_argument("--eval-prompts", type=int, default=40)
    parser.add_argument("--controls", type=int, default=3)
    parser.add_argument("--metric", default="next_token", help="next_token = greedy exact match, one pass")
    parser.add_argument("--stability-task", default="copy_list")
    parser.add_argument("--stability-sizes", type=int, nargs="*", default=[16, 64, 256])
    parser.add_argument("--stability-splits", type=int, default=2)
    args = parser.parse_args()
    check_args(args, {"controls": 1})
    started = time.perf_counter()
    model = load_model(args.model)
    info = ModelInfo.of(model)
    check_model_tasks(model, args.tasks, KINDS)
    out = OutputDir(args.out, vars(args))
    organism = default_style(model) == "organism"
    names = args.tasks or (task_names(model, tuple(GROUPS)) if organism else NATURAL_TASKS)
    with out.stage("known facts"):
        data = prepare(
            model,
            names,
            args.detection_prompts,
            args.eval_prompts,
            shots=args.shots,
            asked=args.asked,
            known_eval=False,
            min_known=2,
        )
        out.table("known_facts", data.counts, index=False)
        out.finding(describe_counts(data.counts, info.name))
        names = [n for n in names if n in data.detection]
        kind = {n: data.detection[n].meta.get("kind") or _kind(n) for n in names}

    with out.stage("detection"):
        detection = {n: data.detection[n] for n in names}
        sets, scores = locate_saved(
            model, detection, GradientAttribution(), "top_percent", args.percent, out.path / "scores"
        )
        evaluation = [data.evaluation[n] for n in names]

    with out.stage("deactivation"):
        result = evaluation_matrix(
            model, sets, evaluation, n_controls=args.controls, metric=args.metric, controls_on="own"
        )
        result.save(out.file("deactivation_result.json"))
        table = own_effect_table(result)
        table.insert(1, "group", [GROUPS.get(kind[n], kind[n]) for n in table.task])
        average = table.drop(columns=["task", "group"]).mean().to_dict()
        table = pd.concat(
            [table, pd.DataFrame([dict(task="average", group="", **average)])], ignore_index=True
        )
        out.table("deactivation", table, index=False)
        out.table("deactivation_matrix_long", result.to_frame(), index=False)
        out.figure("deactivation", result.plot_own_vs_others())
        out.finding(
            f"{args.metric} averaged over {len(names)} tasks: original {average['original']:.3f}, "
            f"random {args.percent:g} % off {average['random_off']:.3f}, task neurons off "
            f"{average['set_off']:.3f}; other tasks with a task's set off "
            f"{average['others_original']:.3f} -> "
            f"{average['others_off']:.3f} (paper, Llama-2-7B classification: "
            + " / ".join(f"{v}" for v in PAPER.values())
            + ")"
        )

    with out.stage("overlaps and similarity"):
        iou = out.table("overlap_iou", overlap_matrix(sets, "jaccard"))
        out.figure("overlap_iou", heatmap(iou, f"IoU of the tasks' top {args.percent:g} % neurons"))
        group_overlap(out, scores, names, kind)
        similarity(model, out, sets, result)
    with out.stage("stability"):
        set_stability(
            model, data.detection, lambda _: GradientAttribution(), "top_percent", args.percent,
            info.n_neurons, out, args.stability_splits,
        )  # fmt: skip
    with out.stage("stability curve"):
        stability(model, args, out, data)
    with out.stage("held-out effect"):
        held_out_effects(model, sets, data, out, n_controls=2)
    out.finding(f"wall time {time.perf_counter() - started:.0f} s on {info.name}")
    out.close()


def _kind(name: str) -> str:
    from tasklens.tasks.builtin import builtin_task_info

    return next(r["kind"] for r in builtin_task_info() if r["name"] == name)


def group_overlap(out: OutputDir, scores, names, kind) -> None:
    """Mean IoU within and across task groups as the share of neurons grows (the paper's 10-70 %)."""
    rows = []
    for percent in (10, 30, 50, 70):
        chosen = {n: top_percent(scores[n], percent) for n in names}
        for x in names:
            for y in names:
                if x < y:
                    rows.append(
                        dict(
                            percent=percent,
                            task_a=x,
                            task_b=y,
                            same_group=GROUPS.get(kind[x]) == GROUPS.get(kind[y]),
                            iou=overlap(chosen[x], chosen[y]).jaccard,
                        )
                    )
    frame = out.table("group_overlap", pd.DataFrame(rows), index=False)
    mean = frame.groupby(["percent", "same_group"]).iou.mean().unstack()
    out.finding(
        "mean IoU within vs across task groups at 10/30/50/70 %: "
        + ", ".join(
            f"{p}%: {mean.loc[p].get(True, float('nan')):.2f} vs {mean.loc[p].get(False, float('nan')):.2f}"
            for p in mean.index
        )
    )


def similarity(model, out: OutputDir, sets, result) -> None:
    sims = pd.DataFrame(
        [
            dict(
                task_a=a.name,
                task_b=b.name,
                iou=overlap(a, b).jaccard,
                **{f"layer_{i}": v for i, v in enumerate(parameter_similarity(model, a, b))},
            )
            for a in sets
            for b in sets
            if a is not b
        ]
    )
    layers = [c for c in sims.columns if c.startswith("layer_")]
    sims["mean_similarity"] = sims[layers].mean(axis=1)
    drop = result.relative_drop()  # [task evaluated, set switched off]
    sims["proxy_drop_on_b"] = [drop.loc[b, a] for a, b in zip(sims.task_a, sims.task_b, strict=True)]
    out.table("parameter_similarity", sims, index=False)
    corr = similarity_transfer_correlation(sims, "mean_similarity", "proxy_drop_on_b")
    out.finding(
        f"parameter similarity vs the deactivation proxy (relative drop on b with a's neurons off), "
        f"{corr['n_pairs']} pairs: Pearson {corr['pearson']:.2f}, Spearman {corr['spearman']:.2f} "
        "(a proxy, not the paper's fine-tuning transfer)"
    )


def stability(model, args, out: OutputDir, data) -> None:
    """Split-half Jaccard of one task's set as prompts grow."""
    name = args.stability_task
    if name in data.detection and args.stability_splits >= 1:  # 0: off, as set_stability's
        pool = load_for_model(model, name, "detection", shots=args.shots) + load_for_model(
            model, name, "evaluation", shots=args.shots
        )
        curve = stability_curve(
            model,
            pool,
            GradientAttribution(),
            sizes=args.stability_sizes,
            rule="top_percent",
            value=args.percent,
            n_splits=args.stability_splits,
        )
        out.table("stability_curve", curve, index=False)
        out.finding(
            f"split-half Jaccard of {name}'s top {args.percent:g} % (gradient attribution), "
            "by prompts per half: "
            + ", ".join(
                f"{r.n_prompts}: {r.mean:.2f} [{r.low:.2f}, {r.high:.2f}]" for r in curve.itertuples()
            )
            + f" (two random sets of that share: {args.percent / (200 - args.percent):.2f})"
        )


if __name__ == "__main__":
    run_main(main)
