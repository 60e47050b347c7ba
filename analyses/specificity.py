"""Is any neuron set task-specific? Every set tested against random sets of the same per-layer counts.

Each task's prompts are split three ways: the detection prompts, cut at random into two halves
that select neurons independently, and evaluation prompts (48 known facts per task where the
model knows that many) that no selection sees. Every set is selected twice, once per half, and
each selection gets its own verdict; a verdict is *stable across selections* when both are
specific (not a replication: the same evaluation prompts and random-set seeds).
Scores are |a * dL/da| (gradient attribution); each set is evaluated on every task and on a
general-text control (`tasklens.tasks.text.general_text`), with exact match and answer
log-probability, beside random sets of the same per-layer counts on its own task. Random sets go
where the verdict is at stake: a set that lowers its own task more than every other task (tested
before any random set is drawn) draws up to ``--controls`` of them, enough for the page's
correction, the others ``--settled``; either stops once ``--stop-after`` of them lower its task
as much (sequential Monte Carlo).

- A. shared core vs exclusive periphery: from each task's top ``--base-percent`` % set, the
  neurons every task's set holds (the core, saved with each neuron's position-0 profile) and
  each set's neurons no other set holds;
- B. contrastive selection: each task's scores divided by their largest value, minus the mean
  (``--against max``: the max) of the other tasks', top ``--percents``;
- C (``--experiments C``). is the collapse an artifact of zeroing? A's full sets under mean
  ablation with position 0 apart, the means taken from the detection prompts (never
  evaluated), and under zero ablation that spares position 0;
- D. A's full sets without the generic units (neurons whose position-0 activation is at least
  ``--generic-ratio`` times their activation elsewhere, `tasklens.analysis.generic`).

Each set named after a task gets `EvaluationResult.specificity()` (docs/statistics.md): specific
when it lowers its own task beyond its random sets (Monte Carlo p) and every other task is
spared, losing at most a quarter of the own effect and 0.1 of its gap less (effects as fractions
of each task's gap to its no-information floor, capped at 1); preferential when it lowers its own
task more than every other but some task is not shown spared. Every p-value behind findings.md
is adjusted together (Benjamini-Hochberg, q = 0.05), and each verdict states its smallest
detectable effect ("underpowered", with what would give the power, where it could not tell).

    python analyses/specificity.py [--model organism|smollm2-135m] [--out runs/specificity]
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from common import (
    HALVES,
    Parser,
    check_args,
    check_model_tasks,
    describe_counts,
    halves,
    prepare,
    run_main,
    stable,
    task_names,
)

from tasklens.analysis.compare import exclusive, overlap, shared_by_all
from tasklens.analysis.generic import generic_units, position_zero_profile
from tasklens.analysis.matrix import EvaluationResult, evaluation_inputs, evaluation_matrices
from tasklens.analysis.verdict import ALPHA, LEVELS, MARGIN, apply_family
from tasklens.data.neurons import NeuronScores, NeuronSet
from tasklens.errors import TasklensError
from tasklens.evaluation.known import default_style
from tasklens.interventions import Intervention, register
from tasklens.models import load_model
from tasklens.runs.outputs import OutputDir
from tasklens.scoring import GradientAttribution
from tasklens.selection import top_percent
from tasklens.tasks.task import Task
from tasklens.tasks.text import general_text

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


def exclusive_and_core(sets: dict[str, NeuronSet]) -> tuple[dict[str, NeuronSet], NeuronSet]:
    """Each task's neurons no other task's set holds, named after the task, and the neurons every
    task's set holds (the core)."""
    parts = exclusive(list(sets.values()))
    only = {
        task: NeuronSet(parts[s.name].mask, task, {"selection": "exclusive", "of": s.summary()})
        for task, s in sets.items()
    }
    core = shared_by_all(list(sets.values())).mask
    return only, NeuronSet(core, "core", {"selection": "shared by every task"})


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
        spared = (
            f"; least spared {r.worst} {r.worst_effect:.2f} [{r.worst_low:.2f}, {r.worst_high:.2f}] "
            f"(at most {r.spare_limit:.2f}), selectivity {r.selectivity:.2f} "
            f"[{r.selectivity_low:.2f}, {r.selectivity_high:.2f}]"
            if isinstance(r.worst, str) and r.worst
            else ""
        )
        lines.append(
            f"{what}, {r.set} ({r.size} neurons, {r.metric}, {r.n_prompts} prompts per task): own change "
            f"{r.own_change:+.3f}, others {r.others_change:+.3f}; own task loses {r.effect:.2f} of its gap "
            f"to the floor [{r.effect_low:.2f}, {r.effect_high:.2f}] vs random sets {r.random_effect:.2f} "
            f"(n {r.n_null}){spared}; p {r.p_value:.2g}, {r.p_adjusted:.2g} adjusted; detectable "
            f"own effect {r.mde_random:.2f}, margin past the limit {r.mde_spared:.2f}: {r.verdict}"
            + (f"; stable across selections: {r.stable}" if isinstance(r.stable, str) and r.stable else "")
        )
    return lines


def forest(table: pd.DataFrame):
    """Each test's normalised own-task effect with its interval, beside its random sets' mean, the
    other task it spares least and the most that task may lose (the spare limit)."""
    import matplotlib.pyplot as plt

    rows = table.reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8, 0.22 * len(rows) + 1.2))
    y = range(len(rows))[::-1]
    ax.errorbar(
        rows.effect, y, xerr=[rows.effect - rows.effect_low, rows.effect_high - rows.effect], fmt="o", ms=3,
        color="tab:blue", label="own task (95 % interval over prompts)",
    )  # fmt: skip
    ax.plot(rows.random_effect, y, "|", color="tab:gray", label="random sets, own task (mean)")
    ax.plot(rows.worst_effect, y, "x", ms=4, color="tab:red", label="the other task it spares least")
    ax.plot(
        rows.spare_limit, y, "|", ms=6, color="tab:red", alpha=0.5, label="the most a spared task may lose"
    )
    ax.axvline(0, color="black", lw=0.5)
    labels = [
        f"{r.experiment} {r.selection} {r.percent:g}% ({r.half}) {r.intervention} {r.metric}: {r.set}"
        for r in rows.itertuples()
    ]
    ax.set_yticks(list(y), labels, fontsize=6)
    ax.set_xlabel("fraction of the gap between the unmodified value and the task's floor removed")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def labels_of(key: str, base_percent: float) -> dict[str, object]:
    """What a run's key (its result files' names: ``A_full_half2``, ``B_mean_1_half1``,
    ``C_position_mean``...) tested: experiment, selection, percent, intervention and half."""
    experiment, rest = key.split("_", 1)
    half = HALVES[0]
    if rest[-6:-1] == "_half":
        half, rest = f"half {rest[-1]}", rest[:-6]
    labels = dict(
        experiment=experiment, selection="full", percent=base_percent, intervention="zero", half=half
    )
    if experiment == "A":
        labels["selection"] = rest
    elif experiment == "B":
        against, percent = rest.split("_")
        labels.update(selection=f"own-{against}", percent=float(percent))
    elif experiment == "C":
        labels["intervention"] = rest
    elif experiment == "D":
        labels["selection"] = "full minus generic"
    return labels


def report(out: OutputDir, results: dict[str, dict[str, EvaluationResult]], base_percent: float) -> None:
    """Every set's verdict (``specificity.csv``, the forest plot, one finding each), adjusted together."""
    tables = [
        tested(result, **labels_of(key, base_percent), metric=metric)
        for key, by_metric in results.items()
        for metric, result in by_metric.items()
    ]
    table = pd.concat([t for t in tables if len(t)], ignore_index=True)
    table, page = apply_family(table, "bh", ALPHA, "findings.md")
    table = stable(table, ["experiment", "selection", "percent", "intervention", "metric", "set"])
    out.table("specificity", table, index=False)
    out.figure("specificity", forest(table))
    labels = {
        "A": "A. {selection} set ({half}), zero ablation",
        "B": "B. {selection}, top {percent:g} % ({half})",
        "C": "C. {selection} set ({half}), {intervention} ablation",
        "D": "D. {selection} set ({half}), zero ablation",
    }
    keys = ["selection", "percent", "intervention", "half"]
    for experiment, what in labels.items():
        for values, part in table[table.experiment == experiment].groupby(keys, sort=False):
            for line in finding_lines(part, what.format(**dict(zip(keys, values, strict=True)))):
                out.finding(line)
    levels = table["level"].value_counts()
    out.finding(
        f"{levels.get('specific', 0)} of {len(table)} tests specific "
        f"({int((table.stable == 'yes').sum()) // 2} stable across both selections), "
        + ", ".join(f"{levels.get(level, 0)} {level}" for level in LEVELS[1:])
        + f"; {MARGIN}; error control: {page.label}"
    )


def retest(folder: Path, metrics: list[str]) -> None:
    """Recompute the verdicts of a finished run from the results it saved, without the model; the
    run's other findings (what the model knows, the core, the generic units) are kept."""
    config = json.loads((folder / "config.json").read_text())
    results: dict[str, dict[str, EvaluationResult]] = {}
    for path in sorted(folder.glob("result_*.json")):
        name = path.stem.removeprefix("result_")
        metric = next((m for m in metrics if name.endswith(f"_{m}")), None)
        if metric is not None:
            results.setdefault(name.removesuffix(f"_{metric}"), {})[metric] = EvaluationResult.load(path)
    if not results:
        raise SystemExit(f"{folder} holds no saved results (result_*.json) to retest; run the analysis first")
    kept = [
        line.removeprefix("- ")
        for line in (folder / "findings.md").read_text().splitlines()
        if "own task loses" not in line and " tests specific (" not in line and "by --retest" not in line
    ]
    out = OutputDir(folder, config, write_config=False)
    for line in kept:
        out.finding(line)
    report(out, results, float(config["base_percent"]))
    out.finding("verdicts recomputed from the saved results by --retest")
    out.close()


def saved(folder: Path, key: str, sets: list[NeuronSet], expected: dict[str, dict]) -> dict | None:
    """The results a run saved under ``key``, by metric, if they hold exactly these sets (their
    neurons' hashes) and were made from the ``expected`` inputs (`evaluation_inputs`, by metric:
    model, prompts, tasks, intervention, seeds, random-set draws); else None."""
    by_metric = {}
    for metric, inputs in expected.items():
        path = folder / f"result_{key}_{metric}.json"
        if not path.is_file():
            return None
        result = EvaluationResult.load(path)
        hashes = [result.sets.get(s.name, {}).get("sha256") for s in sets]
        if hashes != [s.summary()["sha256"] for s in sets] or result.set_names != [s.name for s in sets]:
            return None
        if result.inputs.get("fingerprint") != inputs["fingerprint"]:
            return None
        by_metric[metric] = result
    return by_metric


def main() -> None:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument("--out", default="runs/specificity")
    parser.add_argument("--tasks", nargs="*", help="default: ORGANISM_TASKS or NATURAL_TASKS")
    parser.add_argument(
        "--detection-prompts", type=int, default=48, help="known facts per task, split into two halves"
    )
    parser.add_argument(
        "--eval-prompts", type=int, default=48, help="known facts per task, never selected on"
    )
    parser.add_argument("--text-prompts", type=int, default=48, help="general-text sentences (at most 48)")
    parser.add_argument(
        "--controls", type=int, default=159,
        help="the most random sets for a set whose verdict is at stake (p >= 1 / (controls + 1))",
    )  # fmt: skip
    parser.add_argument(
        "--settled", type=int, default=19,
        help="the most random sets for a set that already lowers another task as much (not specific)",
    )  # fmt: skip
    parser.add_argument(
        "--stop-after", type=int, default=5,
        help="stop a set's random sets once this many lower its task as much (Besag-Clifford)",
    )  # fmt: skip
    parser.add_argument("--base-percent", type=float, default=1.0, help="A, C, D: each task's top %% set")
    parser.add_argument("--percents", type=float, nargs="*", default=[1.0], help="B's sizes, %%")
    parser.add_argument(
        "--generic-ratio", type=float, default=10.0, help="D: position-0 ratio of a generic unit"
    )
    parser.add_argument("--metrics", nargs="*", default=["exact_match", "logprob"])
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument(
        "--retest",
        action="store_true",
        help="recompute the verdicts in --out from its saved results (no model)",
    )
    parser.add_argument(
        "--resume", action="store_true",
        help="keep the evaluations --out already holds for the same sets, tasks and random sets",
    )  # fmt: skip
    parser.add_argument("--experiments", nargs="*", choices=list("ABCD"), default=list("ABD"))
    parser.add_argument(
        "--against", nargs="*", choices=("mean", "max"), default=["mean"],
        help="B: contrast each task's scores with the mean and/or the max of the others'",
    )  # fmt: skip
    args = parser.parse_args()
    check_args(args)
    if args.retest:
        return retest(Path(args.out), args.metrics)
    if not 1 <= args.stop_after <= args.settled <= args.controls:
        raise TasklensError(
            "give 1 <= --stop-after <= --settled <= --controls, got "
            f"{args.stop_after}, {args.settled}, {args.controls}"
        )
    if not 1 <= args.text_prompts <= 48:
        raise TasklensError(
            f"--text-prompts must be from 1 to 48 (the sentences shipped), got {args.text_prompts}"
        )
    started = time.perf_counter()
    model = load_model(args.model)
    kinds = ("relation", "algorithmic", "classification")
    check_model_tasks(model, args.tasks, kinds)
    out = OutputDir(args.out, vars(args))
    organism = default_style(model) == "organism"
    names = args.tasks or (ORGANISM_TASKS if organism else NATURAL_TASKS)
    names = [n for n in names if n in task_names(model, kinds)]
    with out.stage("known facts"):
        data = prepare(model, names, args.detection_prompts, args.eval_prompts, min_known=4)
    out.table("known_facts", data.counts, index=False)
    out.finding(describe_counts(data.counts, args.model))
    short = [
        f"{r.task} {r.known_evaluation:.0f}"
        for r in data.counts.itertuples()
        if r.task in data.evaluation and len(data.evaluation[r.task]) < args.eval_prompts
    ]
    out.finding(
        f"evaluation: {args.eval_prompts} known facts per task, never used for selection"
        + (f"; the model knows fewer for {', '.join(short)}" if short else "")
        + f"; plus {args.text_prompts} general-text sentences (the control every set is also measured on)"
    )
    tasks = [*data.evaluation.values(), general_text(args.text_prompts)]
    selection = halves(data.detection)
    source = Task.from_lists(
        "detection prompts", [p for t in data.detection.values() for p in t.prompts],
        [a for t in data.detection.values() for a in t.answers],
    )  # fmt: skip
    results: dict[str, dict[str, EvaluationResult]] = {}

    def run(key: str, sets: list[NeuronSet], intervention, *, controls_on="own"):
        """Every metric of ``sets`` on every task (one pass per batch), with the tests, saved at once."""
        own = controls_on == "own"
        n_controls, most, stop = (args.settled, args.controls, args.stop_after) if own else (10, 10, None)
        sets = [s for s in sets if len(s)]
        spec = intervention if isinstance(intervention, Intervention) else Intervention(intervention)
        expected = {
            m: evaluation_inputs(
                model, tasks, m, spec, n_controls, controls_on=controls_on, stop_after=stop,
                at_stake=most if own else None,
            )
            for m in args.metrics
        }  # fmt: skip
        kept = saved(Path(args.out), key, sets, expected) if args.resume else None
        if kept is not None:
            print(f"[{key}] kept from the saved results (--resume)", flush=True)
            results[key] = kept
            return kept
        by_metric = evaluation_matrices(
            model, sets, tasks, args.metrics, n_controls, intervention=intervention,
            batch_size=args.batch_size, controls_on=controls_on, stop_after=stop,
            at_stake=most if own else None,
        )  # fmt: skip
        results[key] = by_metric
        for metric, result in by_metric.items():
            result.save(out.file(f"result_{key}_{metric}.json"))
            out.table(f"matrix_{key}_{metric}", result.pivot())
        return by_metric

    with out.stage("scores"):
        scores = {
            half: {n: GradientAttribution().attribute(model, t) for n, t in detection.items()}
            for half, detection in selection.items()
        }
    base = {
        h: {t: top_percent(s, args.base_percent).renamed(t) for t, s in scores[h].items()} for h in HALVES
    }
    first = HALVES[0]
    exclusive, core = exclusive_and_core(base[first])
    out.finding(
        "selections: Jaccard of the two halves' sets, full top "
        f"{args.base_percent:g} %: "
        + ", ".join(f"{t} {overlap(base[HALVES[0]][t], base[HALVES[1]][t]).jaccard:.2f}" for t in base[first])
    )

    if "A" in args.experiments:
        with out.stage("A: shared core vs exclusive periphery"):
            out.finding(
                f"A. top {args.base_percent:g} % sets ({len(next(iter(base[first].values())))} neurons each, "
                f"{first}): {len(core)} neurons are in every task's set; exclusive parts "
                + ", ".join(f"{t} {len(s)}" for t, s in exclusive.items())
            )
            for half in HALVES:
                run(f"A_full_{half.replace(' ', '')}", list(base[half].values()), "zero")
            run("A_exclusive", list(exclusive.values()), "zero")
            if len(core):
                out.file("core.json")  # the sidecar NeuronSet.save writes beside the tensor
                core.save(out.file("core.safetensors"))
                profile = out.table("core_neurons", position_zero_profile(model, source, core), index=False)
                out.finding(
                    f"A. core: {int((profile.ratio >= args.generic_ratio).sum())} of {len(core)} neurons "
                    f"average at least {args.generic_ratio:g} times their |activation| elsewhere at "
                    "position 0 (generic units, docs/statistics.md); largest "
                    + ", ".join(f"L{r.layer}N{r.neuron} {r.ratio:.0f}x" for r in profile.head(3).itertuples())
                )
                for metric, result in run("A_core", [core], "zero", controls_on="all").items():
                    low, high = result.intervals("change")
                    change, control = result.change().loc["core"], result.control_change().loc["core"]
                    out.finding(
                        f"A. core ({len(core)} neurons) off, {metric}, {result.n_prompts().iloc[0]} prompts "
                        f"per task, beside {result.n_controls} random sets on every task: change per task "
                        + ", ".join(
                            f"{t} {change[t]:+.3f} [{low.loc['core', t]:+.3f}, {high.loc['core', t]:+.3f}] "
                            f"(random {control[t]:+.3f})"
                            for t in result.tasks
                        )
                    )

    if "B" in args.experiments:
        with out.stage("B: contrastive selection"):
            for pct in args.percents if "mean" in args.against else []:
                for half in HALVES:
                    sets = [
                        top_percent(s, pct).renamed(t) for t, s in contrastive(scores[half], "mean").items()
                    ]
                    run(f"B_mean_{pct:g}_{half.replace(' ', '')}", sets, "zero")
            top = max(args.percents)
            if "max" in args.against:
                max_sets = [
                    top_percent(s, top).renamed(t) for t, s in contrastive(scores[first], "max").items()
                ]
                run(f"B_max_{top:g}", max_sets, "zero")

    if "C" in args.experiments:
        with out.stage("C: zero vs position-matched mean vs position-0-sparing ablation"):
            means = Intervention("position_mean", source=source)
            run("C_position_mean", list(base[first].values()), means)
            run(f"C_{SPARE_BOS}", list(base[first].values()), SPARE_BOS)

    if "D" in args.experiments:
        with out.stage("D: without generic units"):
            generic = generic_units(model, source, args.generic_ratio)
            out.file("generic.json")
            generic.save(out.file("generic.safetensors"))
            kept = [s - generic for s in base[first].values()]
            out.finding(
                f"D. {len(generic)} generic units (position-0 |activation| >= {args.generic_ratio:g} x the "
                "rest, on the detection prompts); the full sets hold "
                + ", ".join(
                    f"{s.name} {len(s) - len(k)}" for s, k in zip(base[first].values(), kept, strict=True)
                )
            )
            kept = [k.renamed(s.name) for s, k in zip(base[first].values(), kept, strict=True)]
            run("D_without_generic", kept, "zero")

    report(out, results, args.base_percent)
    out.finding(f"{time.perf_counter() - started:.0f} s in all")
    out.close()


if __name__ == "__main__":
    run_main(main)
