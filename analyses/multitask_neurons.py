"""Task-specific neurons by gradient attribution (Leng & Xiong, COLING 2025) on a tasklens model.

Gradient attribution |a * dL/da| per task on detection prompts; the top 10 % are
the task's neurons. The deactivation table: original accuracy, accuracy with as
many random neurons off (same per-layer counts, several seeds), and with the
task's neurons off, per task and averaged. The overlap table between task
groups at 10/30/50/70 % of neurons, and the per-layer parameter similarity of
the task sets.

    python analyses/multitask_neurons.py [--model organism] [--out runs/multitask_neurons]
"""

from __future__ import annotations

import argparse

import pandas as pd

from tasklens.compare import overlap, parameter_similarity, similarity_transfer_correlation
from tasklens.matrix import ablation_matrix
from tasklens.models import load_model
from tasklens.outputs import OutputDir
from tasklens.plots import heatmap
from tasklens.scoring import GradientAttribution
from tasklens.selection import top_percent
from tasklens.tasks.builtin import builtin_task_info, load_builtin

GROUPS = {"relation": "knowledge", "algorithmic": "algorithmic", "classification": "classification"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument("--out", default="runs/multitask_neurons")
    parser.add_argument("--percent", type=float, default=10.0, help="task neurons, %% of all (paper: 10)")
    parser.add_argument("--detection-prompts", type=int, default=128)
    parser.add_argument("--eval-prompts", type=int, default=80)
    parser.add_argument("--controls", type=int, default=3)
    args = parser.parse_args()
    out = OutputDir(args.out, vars(args))
    model = load_model(args.model)
    info = {row["name"]: row for row in builtin_task_info() if row["language"] == "en"}
    names = sorted(info)
    scores = {}
    for name in names:
        scores[name] = GradientAttribution().attribute(
            model, load_builtin(name, "detection").sample(args.detection_prompts)
        )
        scores[name].save(out.path / "scores" / name)
    sets = [top_percent(scores[n], args.percent).renamed(n) for n in names]
    evaluation = [load_builtin(n, "evaluation").sample(args.eval_prompts, seed=3) for n in names]

    result = ablation_matrix(model, sets, evaluation, n_controls=args.controls)
    own = [
        dict(
            task=name,
            group=GROUPS[info[name]["kind"]],
            original=result.baseline[name],
            random_off=result.controls.loc[name, name],
            task_neurons_off=result.values.loc[name, name],
        )
        for name in names
    ]
    table = pd.DataFrame(own)
    table = pd.concat(
        [
            table,
            pd.DataFrame(
                [
                    dict(
                        task="average",
                        group="",
                        **table[["original", "random_off", "task_neurons_off"]].mean().to_dict(),
                    )
                ]
            ),
        ],
        ignore_index=True,
    )
    out.table("deactivation", table, index=False)
    out.table("deactivation_matrix_long", result.to_frame(), index=False)
    avg = table.iloc[-1]
    out.finding(
        f"average accuracy: original {avg.original:.3f}, random {args.percent:g}% off {avg.random_off:.3f}, "
        f"task neurons off {avg.task_neurons_off:.3f} (paper, Llama-2-7B classification: 87.7 / 84.8 / 76.0)"
    )

    # overlap between task groups at growing shares of neurons
    groups = sorted(set(GROUPS[info[n]["kind"]] for n in names))
    rows = []
    for percent in (10, 30, 50, 70):
        chosen = {n: top_percent(scores[n], percent) for n in names}
        for a in groups:
            for b in groups:
                pairs = [
                    overlap(chosen[x], chosen[y]).jaccard
                    for x in names
                    for y in names
                    if x != y and GROUPS[info[x]["kind"]] == a and GROUPS[info[y]["kind"]] == b
                ]
                if pairs:
                    rows.append(
                        dict(percent=percent, group_a=a, group_b=b, mean_jaccard=sum(pairs) / len(pairs))
                    )
    overlaps = out.table("group_overlap", pd.DataFrame(rows), index=False)
    at10 = overlaps[overlaps.percent == 10].pivot(index="group_a", columns="group_b", values="mean_jaccard")
    out.figure("group_overlap_10pct", heatmap(at10, "mean Jaccard between tasks' top 10% neurons"))
    within = overlaps[(overlaps.group_a == overlaps.group_b)].groupby("percent").mean_jaccard.mean()
    across = overlaps[(overlaps.group_a != overlaps.group_b)].groupby("percent").mean_jaccard.mean()
    out.finding(
        "mean Jaccard within vs across task groups at 10/30/50/70 %: "
        + ", ".join(f"{p}%: {within[p]:.2f} vs {across[p]:.2f}" for p in within.index)
    )

    sims = pd.DataFrame(
        [
            dict(
                task_a=a.name,
                task_b=b.name,
                **{f"layer_{i}": v for i, v in enumerate(parameter_similarity(model, a, b))},
            )
            for a in sets
            for b in sets
            if a is not b
        ]
    )
    layers = [c for c in sims.columns if c.startswith("layer_")]
    sims["mean_similarity"] = sims[layers].mean(axis=1)
    # cross-task effect of a's neurons on b: the relative accuracy drop on b with a's task neurons off
    drop = result.relative_drop()  # [task evaluated, set switched off]
    sims["drop_on_b"] = [drop.loc[b, a] for a, b in zip(sims.task_a, sims.task_b, strict=True)]
    out.table("parameter_similarity", sims, index=False)
    corr = similarity_transfer_correlation(sims, "mean_similarity", "drop_on_b")
    out.finding(
        f"parameter similarity vs the drop on task b with task a's neurons off, over {corr['n_pairs']} "
        f"pairs: Pearson {corr['pearson']:.2f}, Spearman {corr['spearman']:.2f} (a deactivation proxy: "
        "the paper correlates with fine-tuning transfer, which tasklens does not run)"
    )
    out.close()


if __name__ == "__main__":
    main()
