"""Neuron-level fine-tuning (Leng & Xiong, COLING 2025) on a tasklens model.

On tasks the model does not know yet (the organism was never trained on them), with
each task's neurons found by |a * dL/da| (top ``--percent``):

- single-task fine-tuning: task neurons vs random neurons of the same per-layer counts
  vs full fine-tuning vs zero-shot (the paper: 83.2 / 54.8 / - / 53.3 on Llama-2-7B);
- real transfer: the change on every task b after fine-tuning on task a (its neurons),
  correlated with the overlap and per-layer parameter similarity of a's and b's
  neurons (Pearson and Spearman, with the number of pairs);
- continual learning over the task sequence and its reverse: SeqFT (full), NCFT (the
  current task's neurons only), W-NCFT (per-task neuron deltas weighted at inference by
  the input's similarity to each task); the accuracy matrix a[i, j], CL and FG as
  methods.md defines them, A_i from the single-task runs.

    python analyses/continual_learning.py [--model organism] [--out runs/continual_learning]
"""

from __future__ import annotations

import time

from common import Parser, check_args, run_main

from tasklens.analysis.plots import heatmap
from tasklens.finetune import (
    FinetuneConfig,
    TaskRouter,
    continual_learning,
    fine_tuning_table,
    load_finetune_task,
    single_task_runs,
    summary_table,
    task_neurons,
    transfer_correlations,
    transfer_pairs,
)
from tasklens.models import ModelInfo, load_model
from tasklens.runs.outputs import OutputDir

TASKS = ["continent_code", "currency_code", "subtraction", "smaller_number"]


def say(text: str) -> None:
    print(text, flush=True)


PAPER = "Llama-2-7B: task neurons 83.2, random neurons 54.8, zero-shot 53.3; NCFT CL 71.3 vs SeqFT 47.1"


def main() -> None:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument("--out", default="runs/continual_learning")
    parser.add_argument("--tasks", nargs="*", default=TASKS)
    parser.add_argument("--percent", type=float, default=5.0, help="task neurons, %% of all")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--lr-neurons", type=float, default=1e-2)
    parser.add_argument("--lr-full", type=float, default=1e-3)
    parser.add_argument("--test-prompts", type=int, default=60)
    parser.add_argument(
        "--methods", nargs="*", default=["SeqFT", "NCFT", "W-NCFT"], choices=["SeqFT", "NCFT", "W-NCFT"]
    )
    args = parser.parse_args()
    check_args(args, tasks="finetune")
    started = time.perf_counter()
    model = load_model(args.model)
    out = OutputDir(args.out, vars(args))
    train = {n: load_finetune_task(n, "train") for n in args.tasks}
    test = {n: load_finetune_task(n, "test").sample(args.test_prompts) for n in args.tasks}
    neurons = task_neurons(model, train, value=args.percent, n_prompts=64)
    configs = {
        "full": FinetuneConfig(steps=args.steps, lr=args.lr_full),
        "neurons": FinetuneConfig(steps=args.steps, lr=args.lr_neurons),
    }

    runs = single_task_runs(model, train, test, neurons, configs=configs, progress=say)
    out.table("single_task_results", runs.results, index=False)
    table = out.table("fine_tuning", fine_tuning_table(runs))
    average = table.loc["average"]
    out.finding(
        "fine-tuned task's accuracy, averaged: "
        + ", ".join(f"{c} {average[c]:.3f}" for c in table.columns)
        + f" (paper, {PAPER})"
    )

    pairs = out.table("transfer_pairs", transfer_pairs(model, runs, neurons), index=False)
    correlations = out.table("transfer_correlations", transfer_correlations(pairs), index=False)
    for row in correlations[correlations.similarity.isin(["jaccard", "mean_similarity"])].itertuples():
        out.finding(
            f"transfer (change on b after fine-tuning a's neurons) vs {row.similarity}: Pearson "
            f"{row.pearson:.2f}, Spearman {row.spearman:.2f} over {row.n_pairs} pairs"
        )

    router = TaskRouter.fit(model, train) if "W-NCFT" in args.methods else None
    alone = {"full": runs.alone("full"), "neurons": runs.alone("task_neurons")}
    results = []
    for order in (list(args.tasks), list(reversed(args.tasks))):
        for result in continual_learning(
            model,
            order,
            train,
            test,
            neurons,
            alone,
            configs,
            methods=args.methods,
            router=router,
            progress=say,
        ):
            results.append(result)
            label = f"{result.method}_{'forward' if order == args.tasks else 'reverse'}"
            out.table(f"matrix_{label}", result.matrix)
            out.figure(f"matrix_{label}", heatmap(result.matrix, f"{result.method}: a[task, after stage]"))
    summary = out.table("continual_summary", summary_table(results), index=False)
    means = summary[summary.order == "mean over orders"]
    out.finding(
        "continual learning over two orders, CL / FG (methods.md's definitions): "
        + ", ".join(f"{r.method} {r.CL:.1f} / {r.FG:.1f}" for r in means.itertuples())
    )
    out.finding(f"wall time {time.perf_counter() - started:.0f} s on {ModelInfo.of(model).name}")
    out.close()


if __name__ == "__main__":
    run_main(main)
