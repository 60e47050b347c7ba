"""Relation-specific neurons (Liu et al., EMNLP 2025) on a tasklens model.

Average-precision neurons per relation (detection prompts the model answers
correctly, 4x negatives from the other relations); cumulativity curves and
scores; the versatility overlap matrix; the interference heatmap; and the
cross-language test (English capital-of neurons off while French, German and
Spanish prompts ask the same relation), against random controls.

    python analyses/relation_neurons.py [--model organism] [--out runs/relation_neurons]
"""

from __future__ import annotations

import argparse

import pandas as pd

from tasklens.compare import overlap, overlap_matrix
from tasklens.evaluate import exact_match
from tasklens.experiments import cross_language, cumulativity, interference, k_grid
from tasklens.models import ModelInfo, load_model
from tasklens.outputs import OutputDir
from tasklens.plots import curves, heatmap
from tasklens.scoring import AveragePrecisionExpertise, VerifiedPatching
from tasklens.selection import top_k
from tasklens.tasks.builtin import load_builtin

RELATIONS = ["capital_of", "continent_of", "currency_of", "element_symbol", "state_capital"]
LANGUAGES = ["capital_of_fr", "capital_of_de", "capital_of_es"]


def correct_only(model, task):
    """The prompts the unablated model answers correctly (the paper detects on these only)."""
    ok = exact_match(model, task)
    return task.subset(ok.nonzero().flatten().tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument("--out", default="runs/relation_neurons")
    parser.add_argument("--percent", type=float, default=2.0, help="neurons per relation, %% of all")
    parser.add_argument("--unit", default="hook_post")
    parser.add_argument("--detection-prompts", type=int, default=200)
    parser.add_argument("--eval-prompts", type=int, default=50, help="held-out facts per relation")
    parser.add_argument("--controls", type=int, default=10)
    parser.add_argument(
        "--method",
        default="average_precision",
        choices=["average_precision", "verified_patching"],
        help="average_precision (the paper's detector) or verified_patching (causal)",
    )
    args = parser.parse_args()
    out = OutputDir(args.out, vars(args))
    model = load_model(args.model)
    info = ModelInfo.of(model)
    k = max(1, round(args.percent / 100 * info.n_neurons))

    detection = {
        r: correct_only(model, load_builtin(r, "detection").sample(args.detection_prompts))
        for r in RELATIONS
    }
    evaluation = {r: load_builtin(r, "evaluation").sample(args.eval_prompts, seed=3) for r in RELATIONS}
    scores, sets = {}, []
    for r in RELATIONS:
        if args.method == "average_precision":
            scorer = AveragePrecisionExpertise(negatives=[detection[o] for o in RELATIONS if o != r])
        else:
            scorer = VerifiedPatching(candidate_percent=2 * args.percent)
        scores[r] = scorer.attribute(model, detection[r], unit=args.unit)
        scores[r].save(out.path / "scores" / r)
        sets.append(top_k(scores[r], k).renamed(r))
        sets[-1].save(out.path / "sets" / r)
        out.finding(
            f"{r}: top {k} {args.method} neurons, "
            f"mean score {scores[r].to_frame(k).score.mean():.3f}; "
            f"per layer {sets[-1].counts_per_layer()}"
        )

    # cumulativity
    grid = k_grid(info.n_neurons)
    frames = {}
    for r in RELATIONS:
        others = [evaluation[o] for o in RELATIONS if o != r]
        frames[r] = cumulativity(model, scores[r], evaluation[r], others, grid)
        out.table(f"cumulativity_{r}", frames[r], index=False)
        first_k = frames[r][frames[r].accuracy < frames[r].accuracy.iloc[0] - 0.1]["k"]
        out.finding(
            f"{r}: accuracy {frames[r].accuracy.iloc[0]:.2f} -> {frames[r].accuracy.iloc[-1]:.2f} "
            f"as the top {grid[-1]} are deactivated (others {frames[r].others_accuracy.iloc[0]:.2f} -> "
            f"{frames[r].others_accuracy.iloc[-1]:.2f}); first k with a 10-point drop: "
            f"{int(first_k.iloc[0]) if len(first_k) else 'none'}; mean cumulativity "
            f"{frames[r].cumulativity.mean():.2f}"
        )
    out.figure(
        "cumulativity",
        curves(
            frames,
            "k",
            ["accuracy", "others_accuracy"],
            "Accuracy as the top-k relation neurons are deactivated",
        ),
    )

    # versatility: overlap across relations
    jaccard = out.table("overlap_jaccard", overlap_matrix(sets, "jaccard"))
    out.table("overlap_shared", overlap_matrix(sets, "shared"))
    out.table("overlap_p_value", overlap_matrix(sets, "p_value"))
    out.figure("overlap", heatmap(jaccard, f"Jaccard overlap of top-{k} {args.method} neurons"))
    pairs = [(a.name, b.name, overlap(a, b)) for i, a in enumerate(sets) for b in sets[i + 1 :]]
    best = max(pairs, key=lambda p: p[2].shared)
    out.finding(
        f"largest overlap: {best[0]} / {best[1]} share {best[2].shared} of {k} "
        f"(chance {best[2].expected:.1f}, p = {best[2].p_value:.2g})"
    )

    # interference
    drop = out.table("interference", interference(model, sets, [evaluation[r] for r in RELATIONS]))
    out.figure("interference", heatmap(drop, "acc_drop(row task | column's neurons off)", center=True))
    negative = [(i, j, drop.loc[i, j]) for i in drop.index for j in drop.columns if drop.loc[i, j] < 0]
    diag = pd.Series({r: drop.loc[r, r] for r in RELATIONS})
    off = pd.Series({r: drop.loc[RELATIONS, r].drop(r).mean() for r in RELATIONS})
    out.finding(
        f"interference: mean own drop {diag.mean():.2f} vs mean drop on other relations {off.mean():.2f}; "
        f"{len(negative)} negative cells (deactivation helped): "
        + ", ".join(f"{i}|{j} {v:.2f}" for i, j, v in negative[:6])
    )

    # cross-language
    english = sets[RELATIONS.index("capital_of")]
    languages = [load_builtin(t, "evaluation").sample(args.eval_prompts, seed=3) for t in LANGUAGES]
    cross = out.table(
        "cross_language",
        cross_language(model, english, [evaluation["capital_of"], *languages], n_controls=args.controls),
        index=False,
    )
    for row in cross.itertuples():
        out.finding(
            f"capital_of neurons (English) off, {row.language}: {row.baseline:.2f} -> {row.ablated:.2f} "
            f"(random sets: {row.random_mean:.2f} ± {row.random_std:.2f})"
        )
    out.close()


if __name__ == "__main__":
    main()
