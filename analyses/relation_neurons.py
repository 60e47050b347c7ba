"""Relation-specific neurons (Liu et al., EMNLP 2025) on a tasklens model.

The paper's method on facts the model knows: average-precision expertise of each
neuron's mean activation (positives: a relation's detection prompts; negatives: 4x
as many from the other relations), the top 0.36 % of neurons per relation (the
paper's 3,000 of Llama-2-7B's 835,584; 166 of SmolLM2's 46,080). Then:

- deactivation: own relation vs other relations vs random sets of the same per-layer
  counts (mean and std over ``--controls`` seeds), on held-out known facts;
- cumulativity: accuracy as the top k grow (the paper's grid scaled to the model), beside
  random sets of the same per-layer counts at every k, tested;
- versatility: pairwise overlaps with hypergeometric p-values, and the same relation
  asked in French, German and Spanish with the English neurons off (where the model
  knows enough of those facts: the counts are reported, and a language is skipped
  otherwise);
- interference: the acc_drop matrix on known facts (which can only fall), and every set on
  every relation's prompts known or not, tested against random sets in both directions (so
  an improvement, the paper's property iii, can show);
- stability: split-half Jaccard of every set, and its effect on the prompts it was
  found on against held-out ones.

    python analyses/relation_neurons.py [--model organism|smollm2-135m] [--out runs/relation_neurons]
"""

from __future__ import annotations

import time

import pandas as pd
from common import (
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

from tasklens.analysis.compare import overlap, overlap_matrix
from tasklens.analysis.experiments import cross_language, cumulativity
from tasklens.analysis.matrix import evaluation_matrices, evaluation_matrix
from tasklens.analysis.plots import curves, heatmap
from tasklens.evaluation.known import load_for_model
from tasklens.models import ModelInfo, load_model
from tasklens.runs.outputs import OutputDir
from tasklens.scoring import AveragePrecisionExpertise, PromptMeans, VerifiedPatching

#: the paper's grid (10 ... 50k of 835,584 neurons) as shares of all neurons
PAPER_GRID = (10, 50, 200, 500, 1000, 3000, 10000, 20000)
PAPER_NEURONS = 835_584
LANGUAGES = {"fr": "capital_of_fr", "de": "capital_of_de", "es": "capital_of_es"}


def scaled_grid(n_neurons: int, k: int) -> list[int]:
    # the paper's 3,000 is the set size itself (k)
    return sorted({max(1, round(g / PAPER_NEURONS * n_neurons)) for g in PAPER_GRID if g != 3000} | {k})


def main() -> None:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument("--out", default="runs/relation_neurons")
    parser.add_argument(
        "--percent", type=float, default=0.36, help="neurons per relation, %% of all (paper 0.36)"
    )
    parser.add_argument(
        "--relations",
        nargs="*",
        help="default: those with the most known facts (up to what the run uses), then the best-known share",
    )
    parser.add_argument("--max-relations", type=int, default=6)
    parser.add_argument(
        "--min-known", type=int, default=100, help="known facts a relation needs (detection + evaluation)"
    )
    parser.add_argument("--unit", default="hook_post")
    parser.add_argument(
        "--method",
        default="average_precision",
        choices=["average_precision", "verified_patching"],
        help="average_precision (the paper's detector) or verified_patching (causal, AtP + exact check)",
    )
    parser.add_argument(
        "--asked",
        type=int,
        default=300,
        help="most prompts asked per split (known filter; stops at enough known)",
    )
    parser.add_argument("--shots", type=int, default=1, help="demonstrations per natural prompt")
    parser.add_argument("--detection-prompts", type=int, default=100)
    parser.add_argument("--eval-prompts", type=int, default=40, help="held-out known facts (paper 50)")
    parser.add_argument("--other-prompts", type=int, default=10, help="per other relation in cumulativity")
    parser.add_argument("--controls", type=int, default=10, help="random sets (paper 10)")
    parser.add_argument(
        "--cumulativity-controls", type=int, default=10, help="random sets beside the top k, at every k"
    )
    parser.add_argument(
        "--interference-prompts",
        type=int,
        default=24,
        help="per relation, known or not, for interference with improvements allowed (0: off)",
    )
    parser.add_argument("--metric", default="next_token", help="next_token = greedy exact match, one pass")
    parser.add_argument("--stability-splits", type=int, default=3)
    parser.add_argument("--min-language-known", type=int, default=20)
    args = parser.parse_args()
    check_args(args)
    if args.min_known > args.detection_prompts + args.eval_prompts:
        parser.error(
            f"--min-known {args.min_known} can never be reached: at most --detection-prompts + "
            f"--eval-prompts = {args.detection_prompts + args.eval_prompts} known facts are kept per relation"
        )
    started = time.perf_counter()
    model = load_model(args.model)
    info = ModelInfo.of(model)
    info.check_unit(args.unit)
    check_model_tasks(model, args.relations, ("relation",))
    out = OutputDir(args.out, vars(args))
    k = max(1, round(args.percent / 100 * info.n_neurons))
    means = PromptMeans()

    # the facts the model knows
    with out.stage("known facts"):
        candidates = args.relations or task_names(model, ("relation",))
        data = prepare(
            model,
            candidates,
            args.detection_prompts,
            args.eval_prompts,
            shots=args.shots,
            asked=args.asked,
            min_known=2,
        )
        out.table("known_facts", data.counts, index=False)
        out.finding(
            describe_counts(data.counts, info.name) + f" (at most {args.asked} per split, {args.shots}-shot)"
        )
        enough = data.counts[data.counts.known_total >= args.min_known].sort_values(
            ["known_total", "share_known"], ascending=False
        )
        relations = [r for r in enough.task if r in data.detection][: args.max_relations]
        if len(relations) < 2:
            raise SystemExit(
                f"{info.name} knows >= {args.min_known} facts of only {relations}: lower --min-known"
            )
        data = data.keep(relations)
        out.finding(f"relations analysed (>= {args.min_known} known facts): {', '.join(relations)}")

    # the paper's detector
    with out.stage("detection"):
        scores, sets = {}, []
        for r in relations:  # each relation's negatives are the other relations
            others = [data.detection[o] for o in relations if o != r]
            found, found_scores = locate_saved(
                model, {r: data.detection[r]}, scorer(args, others, k, means), "top_k", k,
                out.path / "scores", unit=args.unit,
            )  # fmt: skip
            scores.update(found_scores)
            sets += found
            sets[-1].save(out.path / "sets" / r)
        out.finding(
            f"top {k} neurons per relation ({args.percent:g} % of {info.n_neurons}); "
            f"{args.method} score of the k-th: "
            + ", ".join(
                f"{r} {float(scores[r].values.flatten()[scores[r].ranking()[k - 1]]):.2f}" for r in relations
            )
        )
        evaluation = [data.evaluation[r] for r in relations]

    # deactivation and interference (one matrix: every set x every relation, controls on the own one)
    with out.stage("deactivation and interference"):
        result = evaluation_matrix(
            model, sets, evaluation, n_controls=args.controls, metric=args.metric, controls_on="own"
        )
        result.save(out.file("deactivation_result.json"))
        table = out.table("deactivation", own_effect_table(result), index=False)
        out.figure("deactivation", result.plot_own_vs_others())
        out.finding(
            f"{args.metric} with a relation's top {k} off, own relation: "
            + "; ".join(
                f"{t.task} {t.original:.2f} -> {t.set_off:.2f} "
                f"(random {t.random_off:.2f} ± {t.random_std:.2f}, "
                f"other relations {t.others_original:.2f} -> {t.others_off:.2f})"
                for t in table.itertuples()
            )
        )
        drop = out.table("interference", result.relative_drop())  # the paper's acc_drop, no second pass
        out.figure(
            "interference",
            heatmap(drop, "acc_drop(row relation | column's neurons off)", center=True, falls="positive"),
        )
        negative = [
            (i, j, drop.loc[i, j]) for i in drop.index for j in drop.columns if i != j and drop.loc[i, j] < 0
        ]
        diag = pd.Series({r: drop.loc[r, r] for r in relations})
        off = pd.Series({r: drop.loc[relations, r].drop(r).mean() for r in relations})
        out.finding(
            f"interference: mean own acc_drop {diag.mean():.2f} vs {off.mean():.2f} on the other relations; "
            f"{len(negative)} negative cells (deactivating helped)"
            + (": " + ", ".join(f"{i} | {j}'s off {v:.2f}" for i, j, v in negative[:6]) if negative else "")
        )

    # cumulativity
    with out.stage("cumulativity"):
        grid = scaled_grid(info.n_neurons, k)
        frames = {}
        for r in relations:
            others = [data.evaluation[o].sample(args.other_prompts) for o in relations if o != r]
            frames[r] = cumulativity(
                model, scores[r], data.evaluation[r], others, grid, metric=args.metric,
                n_controls=args.cumulativity_controls,
            )  # fmt: skip
            out.table(f"cumulativity_{r}", frames[r], index=False)
        out.figure(
            "cumulativity", curves(frames, "k", ["accuracy", "others_accuracy"], "Top-k relation neurons off")
        )
        out.finding(
            "cumulativity (accuracy as the top k grow, "
            + f"k = {grid}): "
            + "; ".join(
                f"{r} {f.accuracy.iloc[0]:.2f} -> {f.accuracy.iloc[-1]:.2f} "
                f"(others {f.others_accuracy.iloc[0]:.2f} -> {f.others_accuracy.iloc[-1]:.2f}), "
                f"mean score {f.cumulativity.mean():.2f}"
                for r, f in frames.items()
            )
        )
        if args.cumulativity_controls:
            out.finding(
                f"cumulativity beside {args.cumulativity_controls} random sets at every k (one-sided test "
                "that the top k lower accuracy more, Holm over the k): "
                + "; ".join(
                    f"{r}: "
                    + ", ".join(
                        f"k {t.k} {t.accuracy:.2f} vs random {t.random_accuracy:.2f} "
                        f"[{t.random_low:.2f}, {t.random_high:.2f}] p {t.p_holm:.2g}"
                        for t in f[f.k > 0].itertuples()
                    )
                    for r, f in frames.items()
                )
            )

    if args.interference_prompts:
        with out.stage("interference with improvements allowed"):
            interference_tested(model, sets, relations, args, out)

    # versatility: overlaps and other languages
    with out.stage("overlaps"):
        jaccard = out.table("overlap_jaccard", overlap_matrix(sets, "jaccard"))
        out.table("overlap_shared", overlap_matrix(sets, "shared"))
        out.table("overlap_p_value", overlap_matrix(sets, "p_value"))
        out.figure("overlap", heatmap(jaccard, f"Jaccard of top-{k} AP neurons"))
        pairs = [(a.name, b.name, overlap(a, b)) for i, a in enumerate(sets) for b in sets[i + 1 :]]
        significant = [p for p in pairs if p[2].p_value < 0.01 / len(pairs)]
        best = max(pairs, key=lambda p: p[2].shared)
        out.finding(
            f"overlaps: {len(significant)} of {len(pairs)} pairs share more neurons than chance "
            f"(hypergeometric p < 0.01 / {len(pairs)}); "
            f"largest {best[0]} / {best[1]}: {best[2].shared} of {k} "
            f"(chance {best[2].expected:.1f}, p = {best[2].p_value:.2g})"
        )
    with out.stage("other languages"):
        versatility(model, args, out, sets, data, relations)

    # stability
    with out.stage("stability"):
        set_stability(
            model,
            data.detection,
            lambda r: scorer(args, [data.detection[o] for o in relations if o != r], k, means),
            "top_k",
            k,
            info.n_neurons,
            out,
            args.stability_splits,
            unit=args.unit,
        )
    with out.stage("held-out effect"):
        held_out_effects(model, sets, data, out, n_controls=3)
    out.finding(f"wall time {time.perf_counter() - started:.0f} s on {info.name}")
    out.close()


def interference_tested(model, sets, relations, args, out: OutputDir) -> None:
    """Every set on every relation's prompts, known or not (so a relation can also improve),
    with answer log-probability and exact match, random sets on every relation; each cell tested
    against the random sets in both directions (`EvaluationResult.cell_tests`)."""
    tasks = [
        load_for_model(model, r, "evaluation", known=False, shots=args.shots).sample(
            args.interference_prompts
        )
        for r in relations
    ]
    results = evaluation_matrices(
        model, sets, tasks, ("exact_match", "logprob"), args.controls, batch_size=32
    )
    for metric, result in results.items():
        cells = out.table(f"interference_tested_{metric}", result.cell_tests(correction="holm"), index=False)
        off = cells[cells.set != cells.task]
        counts = off.direction.value_counts()
        out.finding(
            f"interference beyond known facts ({metric}, {args.interference_prompts} prompts per relation, "
            f"{args.controls} random sets per set on every relation; two-sided, Holm over the cells): of "
            f"{len(off)} off-diagonal cells, {counts.get('lower', 0)} lower, "
            f"{counts.get('higher', 0)} higher, {counts.get('as random', 0)} as random sets"
            + "".join(
                f"; {c.task} with {c.set}'s off {c.change:+.3f} [{c.low:+.3f}, {c.high:+.3f}] ({c.direction})"
                for c in off[off.direction != "as random"].itertuples()
            )
        )


def scorer(args, negatives, k: int, means: PromptMeans):
    """The paper's AP detector (each prompt's mean activations computed once per run, in
    ``means``), or the causal alternative with candidates a few times k."""
    if args.method == "average_precision":
        return AveragePrecisionExpertise(negatives=negatives, means=means)
    return VerifiedPatching(candidate_percent=2 * args.percent)


def versatility(model, args, out: OutputDir, sets, data, relations) -> None:
    """English capital_of neurons off while other languages ask the same relation (if known)."""
    english = next((s for s in sets if s.name == "capital_of"), None)
    counts = prepare(
        model,
        list(LANGUAGES.values()),
        args.eval_prompts,
        args.eval_prompts,
        shots=args.shots,
        asked=args.asked,
    )
    out.table("languages_known", counts.counts, index=False)
    usable = [t for t in counts.evaluation if len(counts.evaluation[t]) >= args.min_language_known]
    skipped = [t for t in LANGUAGES.values() if t not in usable]
    if skipped:
        out.finding(
            "cross-language skipped for "
            + ", ".join(
                f"{t} ({int(counts.counts.set_index('task').loc[t, 'known_total'])} known facts)"
                for t in skipped
            )
            + f": fewer than {args.min_language_known} known held-out facts"
        )
    if english is None or not usable:
        if english is None:
            out.finding("cross-language: capital_of is not among the relations analysed")
        return
    tasks = [data.evaluation["capital_of"], *(counts.evaluation[t] for t in usable)]
    cross = out.table(
        "cross_language",
        cross_language(model, english, tasks, n_controls=args.controls, metric=args.metric),
        index=False,
    )
    for row in cross.itertuples():
        out.finding(
            f"capital_of neurons (English) off, {row.language}: {row.baseline:.2f} -> {row.ablated:.2f} "
            f"(random sets {row.random_mean:.2f} ± {row.random_std:.2f})"
        )


if __name__ == "__main__":
    run_main(main)
