"""Is any neuron set task-specific? Every set tested against random sets of the same per-layer counts.

Three experiments on |a * dL/da| (gradient attribution) scores of each task, each set evaluated
on every task (random controls on every task too), with exact match and answer log-probability,
on evaluation prompts that include facts the model does not know (so improvements can show):

- A. shared core vs exclusive periphery: from each task's top ``--base-percent`` % set, the
  neurons every task's set holds (the core) and each set's neurons no other set holds;
- B. contrastive selection, dose-response: each task's scores divided by their largest value,
  then own minus the mean (or the max) of the other tasks, top 0.1 / 0.5 / 1 %; gradient
  positions ``all`` vs ``last_prompt``; split-half stability of every set;
- C. is the collapse an artifact of zeroing? zero ablation vs mean ablation (each neuron's mean
  over the pooled prompts of every task) vs zero ablation that spares the BOS position, on A's
  full sets and B's 1 % sets.

Each set named after a task gets `EvaluationResult.specificity()`: own-task change minus the mean
change on the other tasks, with a bootstrap interval over prompts, against the same statistic of
its random sets (one-sided p, Holm across the sets of a table). findings.md is generated from
those tests.

    python analyses/specificity.py [--model organism|smollm2-135m] [--out runs/specificity]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch
from common import describe_counts, prepare, set_stability, task_names

from tasklens.analysis.matrix import EvaluationResult, evaluation_matrix
from tasklens.analysis.stats import ALPHA
from tasklens.data.neurons import NeuronScores, NeuronSet
from tasklens.evaluation.known import default_style
from tasklens.interventions import INTERVENTIONS, Intervention
from tasklens.models import ModelInfo, load_model
from tasklens.runs.outputs import OutputDir
from tasklens.scoring import GradientAttribution
from tasklens.selection import top_percent
from tasklens.tasks.task import Task

#: knowledge, classification and algorithmic tasks a natural-language model does well above chance
NATURAL_TASKS = ["continent_of", "country_language", "city_country", "sentiment", "addition", "copy_list"]
ORGANISM_TASKS = ["continent_of", "currency_of", "capital_of", "sentiment", "addition", "copy_list"]
SPARE_BOS = "zero_spare_bos"


def _zero_spare_bos(model, intervention: Intervention):
    """Zero ablation everywhere but position 0 (the BOS state every prompt shares)."""

    def edit(layer: int, idx: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(current)
        out[:, :1] = current[:, :1]
        return out

    return edit


def contrastive(scores: dict[str, NeuronScores], against: str) -> dict[str, NeuronScores]:
    """Each task's scores over their largest value, minus the ``mean`` or ``max`` of the others'."""
    normed = {t: s.values / s.values.max().clamp_min(1e-12) for t, s in scores.items()}
    out = {}
    for task, s in scores.items():
        others = torch.stack([v for t, v in normed.items() if t != task])
        rest = others.mean(0) if against == "mean" else others.max(0).values
        out[task] = NeuronScores(
            values=normed[task] - rest, model=s.model, task=task, method=f"{s.method}-minus-{against}"
        )
    return out


def split_half_contrastive(
    model, detection: dict[str, Task], positions: str, against: str, percent: float, n_splits: int
) -> pd.DataFrame:
    """Jaccard of the contrastive sets found on two disjoint halves of every task's prompts."""
    rows = []
    scorer = GradientAttribution(positions=positions)
    for split in range(n_splits):
        halves = []
        for part in (0, 1):
            scores = {}
            for name, task in detection.items():
                order = torch.randperm(len(task), generator=torch.Generator().manual_seed(split)).tolist()
                half = order[part::2]
                scores[name] = scorer.attribute(model, task.subset(half))
            halves.append({t: top_percent(s, percent) for t, s in contrastive(scores, against).items()})
        for name in detection:
            a, b = halves[0][name].mask, halves[1][name].mask
            rows.append({"task": name, "split": split, "jaccard": float((a & b).sum() / (a | b).sum())})
    return pd.DataFrame(rows)


def exclusive_and_core(sets: dict[str, NeuronSet]) -> tuple[dict[str, NeuronSet], NeuronSet]:
    masks = {t: s.mask for t, s in sets.items()}
    core = torch.stack(list(masks.values())).all(0)
    exclusive = {}
    for task, mask in masks.items():
        others = torch.stack([m for t, m in masks.items() if t != task]).any(0)
        exclusive[task] = NeuronSet(
            mask & ~others, task, {"selection": "exclusive", "of": sets[task].summary()}
        )
    return exclusive, NeuronSet(core, "core", {"selection": "shared by every task"})


def tested(result: EvaluationResult, **labels) -> pd.DataFrame:
    """The specificity table of a result (if it has sets named after tasks), labelled."""
    if not any(n in result.tasks for n in result.set_names):
        return pd.DataFrame()
    table = result.specificity().reset_index()
    own = result.own_and_others()
    table["size"] = table["set"].map(own["size"])
    table["own_change"] = table["set"].map(own["own_change"])
    table["others_change"] = table["set"].map(own["others_change"])
    for key, value in reversed(labels.items()):
        table.insert(0, key, value)
    return table


def finding_lines(table: pd.DataFrame, what: str) -> list[str]:
    lines = []
    for r in table.itertuples():
        lines.append(
            f"{what}, {r.set} ({r.size} neurons, {r.metric}, {r.n_prompts} prompts per task): own change "
            f"{r.own_change:+.3f}, others {r.others_change:+.3f}; specificity {r.statistic:+.3f} "
            f"[{r.low:+.3f}, {r.high:+.3f}] vs random sets {r.null_mean:+.3f} (sd {r.null_sd:.3f}, "
            f"n {r.n_null}): {r.verdict}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument("--out", default="runs/specificity")
    parser.add_argument("--tasks", nargs="*", help="default: ORGANISM_TASKS or NATURAL_TASKS")
    parser.add_argument("--detection-prompts", type=int, default=32)
    parser.add_argument("--eval-prompts", type=int, default=24)
    parser.add_argument("--controls", type=int, default=10, help="random sets per set (at least 2)")
    parser.add_argument("--base-percent", type=float, default=1.0, help="A and C: each task's top %% set")
    parser.add_argument("--percents", type=float, nargs="*", default=[0.1, 0.5, 1.0], help="B's sizes, %%")
    parser.add_argument(
        "--positions", nargs="*", default=["all", "last_prompt"], help="B's gradient positions"
    )
    parser.add_argument("--metrics", nargs="*", default=["exact_match", "logprob"])
    parser.add_argument("--interventions", nargs="*", default=["zero", "mean", SPARE_BOS])
    parser.add_argument("--stability-splits", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    if args.controls < 2:
        raise SystemExit("--controls must be at least 2: the test compares with the random sets' spread")
    out = OutputDir(args.out, vars(args))
    started = time.perf_counter()
    if SPARE_BOS not in INTERVENTIONS.names():
        INTERVENTIONS.register(SPARE_BOS, _zero_spare_bos)
    model = load_model(args.model)
    organism = default_style(model) == "organism"
    names = args.tasks or (ORGANISM_TASKS if organism else NATURAL_TASKS)
    names = [n for n in names if n in task_names(model, ("relation", "algorithmic", "classification"))]
    with out.stage("known facts"):
        data = prepare(model, names, args.detection_prompts, args.eval_prompts, known_eval=False)
    out.table("known_facts", data.counts, index=False)
    out.finding(describe_counts(data.counts, args.model))
    tasks = list(data.evaluation.values())
    pooled = Task.from_lists(
        "pooled", [p for t in tasks for p in t.prompts], [a for t in tasks for a in t.answers]
    )
    n_neurons = ModelInfo.of(model).n_neurons

    def matrix(sets, intervention: str, metric: str) -> EvaluationResult:
        spec = Intervention("mean", source=pooled) if intervention == "mean" else Intervention(intervention)
        return evaluation_matrix(
            model,
            sets,
            tasks,
            n_controls=args.controls,
            intervention=spec,
            metric=metric,
            batch_size=args.batch_size,
        )

    with out.stage("scores"):
        scores = {
            pos: {
                n: GradientAttribution(positions=pos).attribute(model, t) for n, t in data.detection.items()
            }
            for pos in sorted(set(args.positions) | {"all"})
        }
    base = {t: top_percent(s, args.base_percent).renamed(t) for t, s in scores["all"].items()}
    exclusive, core = exclusive_and_core(base)
    tables, results = [], {}

    with out.stage("A: shared core vs exclusive periphery"):
        out.finding(
            f"A. top {args.base_percent:g} % sets ({len(next(iter(base.values())))} neurons each): "
            f"{len(core)} neurons are in every task's set; exclusive parts "
            + ", ".join(f"{t} {len(s)}" for t, s in exclusive.items())
        )
        for metric in args.metrics:
            for label, sets in (("full", list(base.values())), ("exclusive", list(exclusive.values()))):
                result = matrix([s for s in sets if len(s)], "zero", metric)
                results[f"A_{label}_{metric}"] = result
                tables.append(
                    tested(
                        result,
                        experiment="A",
                        selection=label,
                        positions="all",
                        percent=args.base_percent,
                        intervention="zero",
                        metric=metric,
                    )
                )
            if len(core):
                result = matrix([core], "zero", metric)
                low, high = result.intervals("change")
                change = result.change().loc["core"]
                control = result.control_change().loc["core"]
                out.finding(
                    f"A. core ({len(core)} neurons) off, {metric}: change per task "
                    + ", ".join(
                        f"{t} {change[t]:+.3f} [{low.loc['core', t]:+.3f}, {high.loc['core', t]:+.3f}] "
                        f"(random {control[t]:+.3f})"
                        for t in result.tasks
                    )
                )

    with out.stage("B: contrastive selection"):
        for pos in args.positions:
            for against in ("mean", "max"):
                contrast = contrastive(scores[pos], against)
                for percent in args.percents:
                    sets = [top_percent(s, percent).renamed(t) for t, s in contrast.items()]
                    for metric in args.metrics:
                        result = matrix(sets, "zero", metric)
                        results[f"B_{pos}_{against}_{percent:g}_{metric}"] = result
                        tables.append(
                            tested(
                                result,
                                experiment="B",
                                selection=f"own-{against}",
                                positions=pos,
                                percent=percent,
                                intervention="zero",
                                metric=metric,
                            )
                        )

    with out.stage("C: zero vs mean vs BOS-sparing ablation"):
        top = max(args.percents)
        candidates = {"full": list(base.values())}
        candidates["own-mean"] = [
            top_percent(s, top).renamed(t) for t, s in contrastive(scores["all"], "mean").items()
        ]
        for intervention in args.interventions:
            for label, sets in candidates.items():
                for metric in args.metrics:
                    if intervention == "zero":  # measured in A and B
                        continue
                    result = matrix(sets, intervention, metric)
                    results[f"C_{label}_{intervention}_{metric}"] = result
                    tables.append(
                        tested(
                            result,
                            experiment="C",
                            selection=label,
                            positions="all",
                            percent=args.base_percent if label == "full" else top,
                            intervention=intervention,
                            metric=metric,
                        )
                    )

    table = pd.concat([t for t in tables if len(t)], ignore_index=True)
    out.table("specificity", table, index=False)
    for key, result in results.items():
        out.table(f"matrix_{key}", result.pivot())
    labels = {
        "A": "A. {selection} set",
        "B": "B. {selection}, {positions} positions, top {percent:g} %",
        "C": "C. {selection} set, {intervention} ablation",
    }
    keys = ["selection", "positions", "percent", "intervention"]
    for experiment, what in labels.items():
        for keys, part in table[table.experiment == experiment].groupby(
            ["selection", "positions", "percent", "intervention"], sort=False
        ):
            label = what.format(
                **dict(zip(["selection", "positions", "percent", "intervention"], keys, strict=True))
            )
            for line in finding_lines(part, label):
                out.finding(line)
    specific = table[table.p_holm < ALPHA]
    out.finding(
        f"{len(specific)} of {len(table)} tests specific at p < {ALPHA:g} after Holm "
        "(Holm within each table of sets)"
    )

    with out.stage("stability"):
        set_stability(
            model,
            data.detection,
            lambda _: GradientAttribution(),
            "top_percent",
            args.base_percent,
            n_neurons,
            out,
            args.stability_splits,
        )
        frames = []
        for pos in args.positions:
            for against in ("mean", "max"):
                for percent in args.percents:
                    part = split_half_contrastive(
                        model, data.detection, pos, against, percent, args.stability_splits
                    )
                    part.insert(0, "percent", percent)
                    part.insert(0, "against", against)
                    part.insert(0, "positions", pos)
                    frames.append(part)
        stability = pd.concat(frames, ignore_index=True)
        out.table("stability_contrastive", stability, index=False)
        summary = stability.groupby(["positions", "against", "percent"])["jaccard"].mean()
        out.finding(
            "B. split-half Jaccard of the contrastive sets (mean over tasks and "
            f"{args.stability_splits} splits): "
            + ", ".join(f"{p} own-{a} {q:g} % {v:.2f}" for (p, a, q), v in summary.items())
        )
    out.finding(f"{time.perf_counter() - started:.0f} s in all")
    out.close()


if __name__ == "__main__":
    main()
