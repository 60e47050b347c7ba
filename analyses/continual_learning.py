"""Fine-tuning only task neurons (NCFT, W-NCFT; Leng & Xiong), tested against random neurons.

On tasks the model does not know (the organism was never trained on them), with each task's
neurons found by |a * dL/da| (top ``--percent``) on its training prompts:

- continual learning over ``--tasks`` (and ``--orders reverse``): NCFT and W-NCFT on the task
  neurons, the same on ``--random-draws`` random sets of the same per-layer counts, and SeqFT
  (every parameter), each trained once per seed (``--seeds``), each at the learning rate that
  the same search over ``--lrs`` picked for it (validation prompts, a seed of its own);
- the outcomes per condition: average accuracy after the sequence, forgetting and forward
  transfer, each with an interval over seeds, draws and held-out test prompts;
- each task alone: full fine-tuning (the ceiling) and its task neurons (the transfer from each
  task to every other, ``--transfer-tasks``), against the overlap and parameter similarity of
  the two tasks' neurons;
- the verdicts: Monte Carlo p against the random draws, a sign-flip test over seeds against
  SeqFT, a task-relabelling (Mantel) test of the transfer correlation, under one error control
  (``--correction``, over the tests of findings.md), each saying "underpowered" and the flag that
  would give it power where it lacks it.

``--summary`` adjusts the tests of several results folders together (default: `RESULTS`, the
organism's in analyses/results) and writes the tables of docs/finetuning.md and the README.

    python analyses/continual_learning.py [--model organism] [--out runs/continual_learning]
    python analyses/continual_learning.py --summary
"""

from __future__ import annotations

import datetime
import json
import math
import time
from pathlib import Path

import pandas as pd
from common import Parser, check_args, check_task_name, run_main

from tasklens.analysis.stats import ALPHA
from tasklens.analysis.verdict import check_alpha
from tasklens.errors import TasklensError
from tasklens.finetune import SingleTaskRuns, TaskRouter, load_finetune_task, task_neurons, transfer_pairs
from tasklens.finetune.controls import ControlledContinual, held_out, zero_shot_rows
from tasklens.finetune.outcomes import OUTCOMES, Outcomes
from tasklens.finetune.verdict import claims_of, judge
from tasklens.io import atomic_write_text, check_own_folder
from tasklens.models import ModelInfo, load_model
from tasklens.runs.outputs import OutputDir

ROOT = Path(__file__).resolve().parent / "results"
TASKS = ["continent_code", "currency_code", "subtraction", "smaller_number"]
#: the similarity measures whose prediction of transfer is tested
MEASURES = ("jaccard", "mean_similarity", "exclusive_similarity")
#: what --summary adjusts together by default (docs/finetuning.md's results)
RESULTS = [ROOT / "organism" / "continual_learning"]
SUMMARY = ROOT / "summary" / "continual_learning"
PAGE = "docs/finetuning.md"
MODEL_NAMES = {"organism": "organism", "smollm2-135m": "SmolLM2-135M"}
#: the paper's figures (methods.md), for the tables
PAPER = (
    "Leng & Xiong, Llama-2-7B (the paper's setting; not comparable in scale): NCFT 71.3 / 70.0 "
    "average accuracy on the standard / long benchmarks against 47.1 / 34.6 for sequential full "
    "fine-tuning, 53.8 / 47.7 for sequential LoRA; fine-tuning only task neurons: 83.2 vs 54.8 for "
    "random neurons (zero-shot 53.3)"
)
OUTCOME_NAMES = {
    "accuracy": "average accuracy after the sequence",
    "forgetting": "forgetting (lower is better)",
    "forward_transfer": "forward transfer",
    "transfer": "transfer",
}
CONDITION_NAMES = {
    ("NCFT", "task"): "NCFT, task neurons",
    ("W-NCFT", "task"): "W-NCFT, task neurons",
    ("NCFT", "random"): "NCFT, random neurons",
    ("W-NCFT", "random"): "W-NCFT, random neurons",
    ("SeqFT", "full"): "SeqFT (every parameter)",
}


def say(text: str) -> None:
    print(text, flush=True)


def _num(value: float, digits: int) -> str:
    return f"{round(value, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.0"


def _fmt(value: float, low: float | None = None, high: float | None = None, digits: int = 1) -> str:
    """``value [low, high]`` (``-`` when there is no value)."""
    if value is None or not math.isfinite(value):
        return "-"
    text = _num(value, digits)
    if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
        text += f" [{_num(low, digits)}, {_num(high, digits)}]"
    return text


def _p(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.3g}"


def parse_arguments():
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument(
        "--out", help="default: runs/continual_learning (--summary: analyses/results/summary/...)"
    )
    parser.add_argument("--tasks", nargs="*", default=TASKS, help="the task sequence")
    parser.add_argument("--orders", nargs="*", default=["forward"], choices=["forward", "reverse"])
    parser.add_argument(
        "--transfer-tasks", nargs="*", help="tasks fine-tuned alone for transfer (default: --tasks)"
    )
    parser.add_argument("--percent", type=float, default=5.0, help="task neurons, %% of all")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--lrs", nargs="*", type=float, default=[3e-3, 1e-2, 3e-2], help="the learning-rate grid"
    )
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per condition")
    parser.add_argument("--random-draws", type=int, default=39, help="random-neuron draws")
    parser.add_argument("--test-prompts", type=int, default=40)
    parser.add_argument("--validation-prompts", type=int, default=20)
    parser.add_argument(
        "--neuron-prompts", type=int, default=64, help="training prompts the neurons are found on"
    )
    parser.add_argument(
        "--methods", nargs="*", default=["SeqFT", "NCFT", "W-NCFT"], choices=["SeqFT", "NCFT", "W-NCFT"]
    )
    parser.add_argument("--alpha", type=float, default=ALPHA)
    parser.add_argument("--correction", default="bh", choices=["bh", "holm"])
    parser.add_argument("--summary", action="store_true", help="adjust --results' tests together")
    parser.add_argument(
        "--results", nargs="*", default=[str(p) for p in RESULTS], help="folders for --summary"
    )
    args = parser.parse_args()
    check_args(
        args, at_least={"seeds": 1, "random_draws": 0, "validation_prompts": 1, "neuron_prompts": 1},
        tasks="finetune", out=False,
    )  # fmt: skip
    for task in args.transfer_tasks or []:
        check_task_name(task, "finetune", "--transfer-tasks")
    check_alpha(args.alpha)
    for lr in args.lrs:
        if not (math.isfinite(lr) and lr > 0):
            raise TasklensError(f"--lrs must be positive numbers, got {lr:g}")
    if not args.lrs:
        raise TasklensError("--lrs was given without a value; name at least one, or leave it out")
    if len(set(args.tasks)) != len(args.tasks) or len(args.tasks) < 2:
        raise TasklensError(f"--tasks needs at least two distinct tasks, got {args.tasks}")
    if args.transfer_tasks is not None and len(set(args.transfer_tasks)) < 3:
        raise TasklensError(
            f"--transfer-tasks needs at least three distinct tasks, got {args.transfer_tasks}"
        )
    if not args.orders:
        raise TasklensError("--orders was given without a value; name forward, reverse or both")
    if args.summary:
        for folder in args.results:
            if not (Path(folder) / "cells.csv").is_file():
                raise TasklensError(
                    f"--results: {folder!r} holds no cells.csv; run the analysis into it first"
                )
        args.out = args.out or str(SUMMARY)
        check_own_folder(args.out, "the fine-tuning summary")
    else:
        args.out = args.out or "runs/continual_learning"
        check_own_folder(args.out, "the results of this analysis")
    return args


def write_csv(out: OutputDir, name: str, frame: pd.DataFrame) -> None:
    """A table too large to keep twice: CSV only."""
    atomic_write_text(out.file(f"{name}.csv"), frame.to_csv(index=False))


def alone_table(cells: pd.DataFrame, zero: pd.DataFrame) -> pd.DataFrame:
    """Single-task runs of the task neurons, averaged over seeds: `SingleTaskRuns.results`' columns."""
    rows = cells[(cells.method == "alone") & (cells.neurons == "task")]
    base = dict(zip(zero.task, zero["mean"], strict=True))
    means = rows.groupby(["trained", "task"], sort=False)["mean"].mean().reset_index()
    return pd.DataFrame(
        {
            "trained_on": means.trained,
            "scope": "task_neurons",
            "evaluated_on": means.task,
            "accuracy": means["mean"],
            "zero_shot": means.task.map(base),
            "change": means["mean"] - means.task.map(base),
        }
    )


def run(args) -> None:
    started = time.perf_counter()
    model = load_model(args.model)
    config = {**vars(args), "date": datetime.date.today().isoformat()}
    config.pop("results", None)
    out = OutputDir(args.out, config)
    transfer = list(args.transfer_tasks or args.tasks)
    names = list(dict.fromkeys([*args.tasks, *transfer]))
    orders = [list(args.tasks) if o == "forward" else list(reversed(args.tasks)) for o in args.orders]
    experiment = ControlledContinual(
        orders, seeds=tuple(range(args.seeds)), random_draws=args.random_draws, lrs=tuple(args.lrs),
        steps=args.steps, batch_size=args.batch_size, methods=tuple(args.methods),
    )  # fmt: skip
    with out.stage("prompts and neurons"):
        train = {n: load_finetune_task(n, "train") for n in names}
        split = {
            n: held_out(load_finetune_task(n, "test"), args.test_prompts, args.validation_prompts)
            for n in names
        }
        test, validation = {n: s[0] for n, s in split.items()}, {n: s[1] for n, s in split.items()}
        neurons = task_neurons(model, train, value=args.percent, n_prompts=args.neuron_prompts)
        zero = zero_shot_rows(model, test)
        out.table("zero_shot", zero, index=False)
        router = (
            TaskRouter.fit(model, {n: train[n] for n in args.tasks}) if "W-NCFT" in args.methods else None
        )
    sequence = {n: neurons[n] for n in args.tasks}
    with out.stage("learning-rate search"):
        lrs = experiment.search(model, train, validation, sequence, router, progress=say)
        out.table("lr_search", lrs.with_chosen(), index=False)
    chosen = lrs.chosen()
    with out.stage("continual learning"):
        cells = experiment.run(model, train, test, sequence, router, lrs, progress=say)
    with out.stage("each task alone"):
        parts = [cells]
        if "SeqFT" in args.methods:
            full = {n: "full" for n in args.tasks}
            lr = chosen[("SeqFT", "full")]
            parts.append(experiment.alone(model, train, test, full, lr, "full", say, every_task=False))
        if "NCFT" in args.methods:
            alone = {n: neurons[n] for n in transfer}
            parts.append(experiment.alone(model, train, test, alone, chosen[("NCFT", "task")], "task", say))
        cells = pd.concat(parts, ignore_index=True)
        write_csv(out, "cells", cells)
    pairs = None
    if "NCFT" in args.methods:
        runs = SingleTaskRuns(dict(zip(zero.task, zero["mean"], strict=True)), alone_table(cells, zero))
        pairs = out.table("transfer_pairs", transfer_pairs(model, runs, neurons), index=False)
    with out.stage("tests"):
        outcomes = Outcomes(cells, zero, alpha=args.alpha)
        conditions = out.table("conditions", outcomes.summary(), index=False)
        tests = judge(
            claims_of(outcomes, pairs, MEASURES, args.alpha), args.correction, args.alpha, "findings.md"
        )
        tests.insert(0, "model", args.model)
        out.table("tests", tests, index=False)
    name = ModelInfo.of(model).name
    out.finding(
        f"{name}, tasks {' > '.join(args.tasks)} ({', '.join(args.orders)}), {args.seeds} seeds, "
        f"{args.random_draws} random draws, {args.steps} steps of batch {args.batch_size}, "
        f"{args.test_prompts} test prompts per task; learning rates chosen from {list(args.lrs)}: "
        + ", ".join(f"{CONDITION_NAMES[key]} {lr:g}" for key, lr in chosen.items())
    )
    for row in conditions.itertuples():
        out.finding(
            f"{CONDITION_NAMES.get((row.method, row.neurons), row.method)}: {OUTCOME_NAMES[row.outcome]} "
            f"{_fmt(row.value, row.low, row.high)} points"
        )
    for row in tests.itertuples():
        out.finding(claim_text(row))
    out.finding(f"error control: {tests.family.iloc[0]}")
    out.finding(f"wall time {time.perf_counter() - started:.0f} s on {name}")
    out.close()


# --- the summary: every folder's tests under one error control ----------------------------------


def folder_tests(folder: Path, alpha: float = ALPHA) -> tuple[pd.DataFrame, pd.DataFrame, dict, dict]:
    """A results folder's claims (before the page's correction), conditions, single-task ceilings
    and config, recomputed from its CSVs."""
    cells = pd.read_csv(folder / "cells.csv", keep_default_na=False, na_values=[""])
    cells["order"] = cells["order"].fillna("")
    zero = pd.read_csv(folder / "zero_shot.csv")
    pairs_path = folder / "transfer_pairs.csv"
    pairs = pd.read_csv(pairs_path) if pairs_path.is_file() else None
    config = json.loads((folder / "config.json").read_text())
    outcomes = Outcomes(cells, zero, alpha=alpha)
    claims = claims_of(outcomes, pairs, MEASURES, alpha)
    claims.insert(0, "model", config["model"])
    conditions = outcomes.summary()
    conditions.insert(0, "model", config["model"])
    ceilings = {}
    for neurons in ("full", "task"):
        try:
            ceilings[neurons] = outcomes.alone(neurons, config["tasks"])
        except TasklensError:
            pass
    return claims, conditions, ceilings, config


def _seconds(folder: Path) -> float:
    timings = folder / "timings.csv"
    return float(pd.read_csv(timings).seconds.sum()) if timings.is_file() else math.nan


def _command(config: dict) -> str:
    command = config["command"]
    return (
        f"`python {command}` (in analyses/)"
        if command.startswith("continual_learning.py")
        else f"`{command}`"
    )


def _minutes(seconds: float) -> str:
    return "wall time not recorded" if not math.isfinite(seconds) else f"{seconds / 60:.0f} min wall time"


def docs_tables(tests: pd.DataFrame, conditions: pd.DataFrame, ceilings: dict, configs: dict) -> str:
    """docs/finetuning.md's tables: per model, each condition's outcomes, then every claim."""
    lines = []
    for model, config in configs.items():
        label = MODEL_NAMES.get(model, model)
        lines += [
            f"#### {label}: conditions",
            "",
            f"{_command(config)}, {config['date']}, {_minutes(config['seconds'])}; points, mean [95 % "
            "interval over seeds, draws and test prompts].",
            "",
            "| condition | " + " | ".join(OUTCOME_NAMES[o] for o in OUTCOMES) + " |",
            "|---|" + "---|" * len(OUTCOMES),
        ]
        mine = conditions[conditions.model == model]
        for (method, neurons), rows in mine.groupby(["method", "neurons"], sort=False):
            by = rows.set_index("outcome")
            cells = [_fmt(by.value[o], by.low[o], by.high[o]) for o in OUTCOMES]
            n = int(by.n_draws.iloc[0])
            name = CONDITION_NAMES[(method, neurons)] + (f" ({n} draws)" if neurons == "random" else "")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        for neurons, text in (
            ("full", "each task alone, every parameter"),
            ("task", "each task alone, its task neurons"),
        ):
            if neurons in ceilings[model]:
                c = ceilings[model][neurons]
                lines.append(f"| {text} (accuracy on it) | {_fmt(c['value'], c['low'], c['high'])} | | |")
        lines += ["", f"#### {label}: claims", ""]
        lines += claims_lines(tests[tests.model == model])
        lines.append("")
    lines.append(f"Error control: {tests.family.iloc[0]}.")
    lines.append("")
    lines.append(f"For comparison only, {PAPER}.")
    return "\n".join(lines) + "\n"


def claim_text(row) -> str:
    """One claim's finding: value, comparison, p-values and verdict."""
    digits = 2 if row.outcome == "transfer" else 1
    value = _fmt(row.value, getattr(row, "low", None), getattr(row, "high", None), digits)
    reference = _fmt(getattr(row, "reference", math.nan), digits=digits)
    return (
        f"{row.claim} ({OUTCOME_NAMES[row.outcome]}): {value} vs {row.compared} {reference}; "
        f"p = {_p(row.p_value)}, adjusted {_p(row.p_adjusted)}: {row.verdict}"
    )


def claims_lines(tests: pd.DataFrame) -> list[str]:
    lines = [
        "| claim | outcome | task neurons | compared with | difference | test | p | adjusted p | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in tests.itertuples():
        digits = 2 if row.outcome == "transfer" else 1
        value = _fmt(row.value, row.low, row.high, digits)
        if row.test == "task relabelling":
            compared = "relabelled tasks"
            difference = (
                f"{int(row.n_pairs)} pairs, {int(row.n_tasks)} tasks" if math.isfinite(row.n_tasks) else "-"
            )
            value = f"Spearman {value}"
        else:
            compared = f"{row.compared} {_fmt(row.reference, row.reference_low, row.reference_high)}"
            difference = _fmt(row.difference, row.difference_low, row.difference_high)
        n = f"{int(row.n_null)}" if math.isfinite(row.n_null) else "-"
        test = {"random draws": f"Monte Carlo, {n} draws", "seeds": f"sign flip, {n} flips",
                "task relabelling": f"Mantel, {n} relabellings"}[row.test]  # fmt: skip
        lines.append(
            f"| {row.claim} | {OUTCOME_NAMES[row.outcome]} | {value} | {compared} | {difference} | {test} | "
            f"{_p(row.p_value)} | {_p(row.p_adjusted)} | {row.verdict} |"
        )
    return lines


def readme_table(tests: pd.DataFrame, model: str) -> str:
    """The README's table: the model's claims with intervals, p-values and verdicts."""
    lines = claims_lines(tests[tests.model == model])
    return "\n".join(lines) + f"\n\nError control: {tests.family.iloc[0]}.\n"


def summarise(folders: list[Path], method: str = "bh", alpha: float = ALPHA) -> dict:
    """Every folder's claims under one error control (`PAGE`'s) and the tables written from them."""
    parts = [folder_tests(Path(f), alpha) for f in folders]
    claims = pd.concat([p[0] for p in parts], ignore_index=True)
    conditions = pd.concat([p[1] for p in parts], ignore_index=True)
    ceilings = {p[3]["model"]: p[2] for p in parts}
    configs = {
        p[3]["model"]: {**p[3], "seconds": _seconds(Path(f))} for p, f in zip(parts, folders, strict=True)
    }
    tests = judge(claims, method, alpha, PAGE)
    models = list(configs)
    return {
        "tests": tests,
        "conditions": conditions,
        "docs": docs_tables(tests, conditions, ceilings, configs),
        "readme": readme_table(tests, "smollm2-135m" if "smollm2-135m" in models else models[-1]),
        "configs": configs,
    }


def summary(args) -> None:
    result = summarise([Path(f) for f in args.results], args.correction, args.alpha)
    out = OutputDir(
        args.out, {"results": list(args.results), "correction": args.correction, "alpha": args.alpha}
    )
    out.table("tests", result["tests"], index=False)
    out.table("conditions", result["conditions"], index=False)
    atomic_write_text(out.file("docs_tables.md"), result["docs"])
    atomic_write_text(out.file("readme_table.md"), result["readme"])
    out.finding(f"error control: {result['tests'].family.iloc[0]}")
    for row in result["tests"].itertuples():
        out.finding(f"{row.model}: {claim_text(row)}")
    out.close()


def main() -> None:
    args = parse_arguments()
    if args.summary:
        summary(args)
    else:
        run(args)


if __name__ == "__main__":
    run_main(main)
