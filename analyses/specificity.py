"""Is any neuron set task-specific? Every set tested against random sets of the same per-layer counts.

Three experiments on |a * dL/da| (gradient attribution) scores of each task, each set evaluated
on every task (random controls on every task too), with exact match and answer log-probability,
on evaluation prompts that include facts the model does not know (so improvements can show):

- A. shared core vs exclusive periphery: from each task's top ``--base-percent`` % set, the
  neurons every task's set holds (the core) and each set's neurons no other set holds;
- B. contrastive selection, dose-response: each task's scores divided by their largest value,
  then own minus the mean of the other tasks at top 0.1 / 0.5 / 1 %; at 1 %, own minus the
  max of the others, and gradients at the ``last_prompt`` position instead of ``all``;
  split-half stability of every set;
- C. is the collapse an artifact of zeroing? zero ablation vs mean ablation (each neuron's mean
  over the pooled prompts of every task) vs zero ablation that spares the BOS position, on A's
  full sets and B's 1 % sets.

Each set named after a task gets `EvaluationResult.specificity()` (docs/statistics.md): specific
when it lowers its own task beyond its random sets (Monte Carlo p) and, as a fraction of each
task's gap to its no-information floor, more than it lowers every other task; every p-value
behind findings.md is adjusted together (Benjamini-Hochberg, q = 0.05), and each verdict states
its smallest detectable effect ("underpowered" where it could not detect a perfect set).

    python analyses/specificity.py [--model organism|smollm2-135m] [--out runs/specificity]
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd
import torch
from common import (
    Parser,
    check_args,
    check_model_tasks,
    describe_counts,
    prepare,
    run_main,
    set_stability,
    task_names,
)

from tasklens.analysis.generic import position_zero_profile
from tasklens.analysis.matrix import EvaluationResult, evaluation_matrices
from tasklens.analysis.verdict import ALPHA, apply_family
from tasklens.data.neurons import NeuronScores, NeuronSet
from tasklens.evaluation.known import default_style
from tasklens.interventions import Intervention, register
from tasklens.models import ModelInfo, load_model
from tasklens.runs.outputs import OutputDir
from tasklens.scoring import GradientAttribution
from tasklens.selection import top_percent
from tasklens.tasks.task import Task

#: relations and an algorithmic task a natural-language model does well above chance; four
#: tasks on 12 prompts each fit the run into 45 minutes on 2 cores (sentiment, two labels at
#: chance for SmolLM2, would need a logit difference rather than exact match)
NATURAL_TASKS = ["continent_of", "country_language", "city_country", "addition"]
ORGANISM_TASKS = ["continent_of", "currency_of", "capital_of", "sentiment", "addition", "copy_list"]
SPARE_BOS = "zero_spare_bos"


@register(SPARE_BOS)
@dataclass(frozen=True, eq=False)
class ZeroSpareBos(Intervention):
    """Zero ablation at every position but the first (the BOS state every prompt shares)."""

    @property
    def label(self) -> str:
        return "zero ablation sparing BOS"

    def edit(self, layer: int, idx: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(current)
        out[:, :1] = current[:, :1]
        return out


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


def half_scores(model, detection: dict[str, Task], positions: str, n_splits: int) -> list:
    """Each split's two halves of every task's prompts, scored: ``[split][half][task]``."""
    scorer = GradientAttribution(positions=positions)
    splits = []
    for split in range(n_splits):
        halves = []
        for part in (0, 1):
            scores = {}
            for name, task in detection.items():
                order = torch.randperm(len(task), generator=torch.Generator().manual_seed(split)).tolist()
                scores[name] = scorer.attribute(model, task.subset(order[part::2]))
            halves.append(scores)
        splits.append(halves)
    return splits


def split_half_contrastive(splits: list, against: str, percent: float) -> pd.DataFrame:
    """Jaccard of the contrastive sets found on two disjoint halves of every task's prompts."""
    rows = []
    for split, halves in enumerate(splits):
        sets = [{t: top_percent(s, percent) for t, s in contrastive(h, against).items()} for h in halves]
        for name in sets[0]:
            a, b = sets[0][name].mask, sets[1][name].mask
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
        closest = f"; closest other task {r.closest} {r.closest_effect:.2f}" if r.closest else ""
        lines.append(
            f"{what}, {r.set} ({r.size} neurons, {r.metric}, {r.n_prompts} prompts per task): own change "
            f"{r.own_change:+.3f}, others {r.others_change:+.3f}; own task loses {r.effect:.2f} of its gap "
            f"to the floor [{r.effect_low:.2f}, {r.effect_high:.2f}] vs random sets {r.random_effect:.2f} "
            f"(n {r.n_null}){closest}; p {r.p_value:.2g}, {r.p_adjusted:.2g} adjusted; detectable "
            f"own effect {r.mde_random:.2f}, margin {r.mde_others:.2f}: {r.verdict}"
        )
    return lines


def forest(table: pd.DataFrame):
    """Each test's normalised own-task effect with its interval, beside its random sets' mean and
    the other task it hurts most."""
    import matplotlib.pyplot as plt

    rows = table.reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8, 0.22 * len(rows) + 1.2))
    y = range(len(rows))[::-1]
    ax.errorbar(
        rows.effect, y, xerr=[rows.effect - rows.effect_low, rows.effect_high - rows.effect], fmt="o", ms=3,
        color="tab:blue", label="own task (95 % interval over prompts)",
    )  # fmt: skip
    ax.plot(rows.random_effect, y, "|", color="tab:gray", label="random sets, own task (mean)")
    ax.plot(rows.closest_effect, y, "x", ms=4, color="tab:red", label="the other task it hurts most")
    ax.axvline(0, color="black", lw=0.5)
    labels = [
        f"{r.experiment} {r.selection} {r.positions} {r.percent:g}% {r.intervention} {r.metric}: {r.set}"
        for r in rows.itertuples()
    ]
    ax.set_yticks(list(y), labels, fontsize=6)
    ax.set_xlabel("fraction of the gap between the unmodified value and the task's floor removed")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def main() -> None:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument("--out", default="runs/specificity")
    parser.add_argument("--tasks", nargs="*", help="default: ORGANISM_TASKS or NATURAL_TASKS")
    parser.add_argument("--detection-prompts", type=int, default=32)
    parser.add_argument("--eval-prompts", type=int, default=12, help="per task, known or not")
    parser.add_argument(
        "--controls", type=int, default=20, help="random sets per set (at least 2; 20 for p below 0.05)"
    )
    parser.add_argument("--base-percent", type=float, default=1.0, help="A and C: each task's top %% set")
    parser.add_argument("--percents", type=float, nargs="*", default=[0.1, 0.5, 1.0], help="B's sizes, %%")
    parser.add_argument("--metrics", nargs="*", default=["exact_match", "logprob"])
    parser.add_argument("--stability-splits", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=48)
    args = parser.parse_args()
    check_args(args)
    started = time.perf_counter()
    model = load_model(args.model)
    kinds = ("relation", "algorithmic", "classification")
    check_model_tasks(model, args.tasks, kinds)
    out = OutputDir(args.out, vars(args))
    organism = default_style(model) == "organism"
    names = args.tasks or (ORGANISM_TASKS if organism else NATURAL_TASKS)
    names = [n for n in names if n in task_names(model, kinds)]
    with out.stage("known facts"):
        data = prepare(model, names, args.detection_prompts, args.eval_prompts, known_eval=False)
    out.table("known_facts", data.counts, index=False)
    out.finding(describe_counts(data.counts, args.model))
    tasks = list(data.evaluation.values())
    pooled = Task.from_lists(
        "pooled", [p for t in tasks for p in t.prompts], [a for t in tasks for a in t.answers]
    )
    n_neurons = ModelInfo.of(model).n_neurons
    tables, results = [], {}

    def run(key: str, sets: list[NeuronSet], intervention: str, **labels) -> dict[str, EvaluationResult]:
        """Every metric of ``sets`` on every task (one pass per batch), with the tests, saved at once."""
        spec = Intervention("mean", source=pooled) if intervention == "mean" else Intervention(intervention)
        by_metric = evaluation_matrices(
            model, [s for s in sets if len(s)], tasks, args.metrics, args.controls,
            intervention=spec, batch_size=args.batch_size,
        )  # fmt: skip
        for metric, result in by_metric.items():
            results[f"{key}_{metric}"] = result
            out.table(f"matrix_{key}_{metric}", result.pivot())
            tables.append(tested(result, **labels, intervention=intervention, metric=metric))
        return by_metric

    with out.stage("scores"):
        scores = {
            pos: {
                n: GradientAttribution(positions=pos).attribute(model, t) for n, t in data.detection.items()
            }
            for pos in ("all", "last_prompt")
        }
    base = {t: top_percent(s, args.base_percent).renamed(t) for t, s in scores["all"].items()}
    exclusive, core = exclusive_and_core(base)
    top = max(args.percents)
    own_mean = {
        pos: {pct: [top_percent(s, pct).renamed(t) for t, s in contrastive(scores[pos], "mean").items()]
              for pct in args.percents}
        for pos in ("all", "last_prompt")
    }  # fmt: skip
    full = dict(selection="full", positions="all", percent=args.base_percent)

    with out.stage("A: shared core vs exclusive periphery"):
        out.finding(
            f"A. top {args.base_percent:g} % sets ({len(next(iter(base.values())))} neurons each): "
            f"{len(core)} neurons are in every task's set; exclusive parts "
            + ", ".join(f"{t} {len(s)}" for t, s in exclusive.items())
        )
        run("A_full", list(base.values()), "zero", experiment="A", **full)
        run("A_exclusive", list(exclusive.values()), "zero", experiment="A",
            selection="exclusive", positions="all", percent=args.base_percent)  # fmt: skip
        if len(core):
            out.file("core.json")  # the sidecar NeuronSet.save writes beside the tensor
            core.save(out.file("core.safetensors"))
            profile = out.table("core_neurons", position_zero_profile(model, pooled, core), index=False)
            out.finding(
                f"A. core: {int((profile.ratio >= 10).sum())} of {len(core)} neurons average at least 10 "
                "times their |activation| elsewhere at position 0 (generic units, docs/statistics.md); "
                "largest "
                + ", ".join(f"L{r.layer}N{r.neuron} {r.ratio:.0f}x" for r in profile.head(3).itertuples())
            )
            for metric, result in run("A_core", [core], "zero", experiment="A", **full).items():
                low, high = result.intervals("change")
                change, control = result.change().loc["core"], result.control_change().loc["core"]
                out.finding(
                    f"A. core ({len(core)} neurons) off, {metric}, {result.n_prompts().iloc[0]} prompts "
                    "per task: change per task "
                    + ", ".join(
                        f"{t} {change[t]:+.3f} [{low.loc['core', t]:+.3f}, {high.loc['core', t]:+.3f}] "
                        f"(random {control[t]:+.3f})"
                        for t in result.tasks
                    )
                )

    with out.stage("B: contrastive selection"):
        for pct in args.percents:
            run(f"B_all_mean_{pct:g}", own_mean["all"][pct], "zero",
                experiment="B", selection="own-mean", positions="all", percent=pct)  # fmt: skip
        max_sets = [top_percent(s, top).renamed(t) for t, s in contrastive(scores["all"], "max").items()]
        run(f"B_all_max_{top:g}", max_sets, "zero",
            experiment="B", selection="own-max", positions="all", percent=top)  # fmt: skip
        run(f"B_last_prompt_mean_{top:g}", own_mean["last_prompt"][top], "zero",
            experiment="B", selection="own-mean", positions="last_prompt", percent=top)  # fmt: skip

    with out.stage("C: zero vs mean vs BOS-sparing ablation"):
        for intervention in ("mean", SPARE_BOS):
            run(f"C_full_{intervention}", list(base.values()), intervention, experiment="C", **full)
            run(f"C_own-mean_{intervention}", own_mean["all"][top], intervention,
                experiment="C", selection="own-mean", positions="all", percent=top)  # fmt: skip

    table = pd.concat([t for t in tables if len(t)], ignore_index=True)
    table, page = apply_family(table, "bh", ALPHA, "findings.md")
    out.table("specificity", table, index=False)
    out.figure("specificity", forest(table))
    labels = {
        "A": "A. {selection} set, zero ablation",
        "B": "B. {selection}, {positions} positions, top {percent:g} %",
        "C": "C. {selection} set, {intervention} ablation",
    }
    keys = ["selection", "positions", "percent", "intervention"]
    for experiment, what in labels.items():
        for values, part in table[table.experiment == experiment].groupby(keys, sort=False):
            for line in finding_lines(part, what.format(**dict(zip(keys, values, strict=True)))):
                out.finding(line)
    verdicts = table["verdict"].str.split(":").str[0].value_counts()
    out.finding(
        f"{verdicts.get('specific', 0)} of {len(table)} tests specific, "
        f"{verdicts.get('not specific', 0)} not specific, {verdicts.get('underpowered', 0)} underpowered, "
        f"{verdicts.get('not tested', 0)} not tested; error control: {page.label}"
    )

    with out.stage("stability"):
        set_stability(
            model, data.detection, lambda _: GradientAttribution(), "top_percent", args.base_percent,
            n_neurons, out, args.stability_splits,
        )  # fmt: skip
        if args.stability_splits >= 1:
            frames = []
            halves = {pos: half_scores(model, data.detection, pos, args.stability_splits) for pos in scores}
            for pos, against, pct in [("all", "mean", p) for p in args.percents] + [
                ("all", "max", top),
                ("last_prompt", "mean", top),
            ]:
                part = split_half_contrastive(halves[pos], against, pct)
                part.insert(0, "percent", pct)
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
    run_main(main)
