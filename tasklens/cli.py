"""The `tasklens` command line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from tasklens.errors import TasklensError

if TYPE_CHECKING:
    from tasklens.pipeline import RunConfig

app = typer.Typer(
    help="Find, test and compare the MLP neurons a language model uses for a task.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
organism_app = typer.Typer(help="Train or evaluate the embedded model organism.", no_args_is_help=True)
app.add_typer(organism_app, name="organism")


def _fail(error: Exception) -> None:
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def tasks() -> None:
    """List the built-in tasks with their sizes.

    Example: tasklens tasks
    """
    from tasklens.tasks.builtin import builtin_task_info

    for row in builtin_task_info():
        sizes = ", ".join(f"{k}={v}" for k, v in row["splits"].items())
        typer.echo(f"{row['name']:<16} {row['kind']:<15} {row['language']:<3} {sizes}")


@app.command()
def demo(
    model: str = typer.Option("organism", help="Model spec: 'organism', a local HF folder, or a hub name."),
    percent: float = typer.Option(1.0, help="Top percentage of neurons selected per task."),
    controls: int = typer.Option(3, help="Random control sets per task (same per-layer counts)."),
) -> None:
    """Locate each task's top neurons (activation statistics), ablate them, print the table.

    Example: tasklens demo --percent 1 --controls 3
    """
    from tasklens.demo import run_demo

    start = time.time()
    try:
        result = run_demo(model, percent=percent, n_controls=controls)
    except TasklensError as error:
        _fail(error)
    table = result.table()
    typer.echo("\nGreedy exact match on each task's evaluation prompts (rows: neurons zero-ablated)\n")
    typer.echo(table.to_string(float_format=lambda v: f"{v:.3f}"))
    typer.echo(
        f"\nsets: {', '.join(f'{s.name}={len(s)}' for s in result.sets)} neurons; {time.time() - start:.0f} s"
    )


def _config(model: str, tasks: list[str], out: Path, **fields) -> RunConfig:
    from tasklens.pipeline import RunConfig

    config = RunConfig(model=model, out=str(out), **fields)
    if tasks:
        config.tasks = list(tasks)
    config.check()
    return config


def _params(pairs: list[str]) -> dict:
    """``key=value`` pairs; values parsed as JSON where they can be (numbers, true/false)."""
    params = {}
    for pair in pairs:
        if "=" not in pair:
            raise TasklensError(f"--param takes key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


MODEL = typer.Option("organism", help="Model spec: 'organism', a local HF folder, or a hub name.")
TASKS = typer.Option([], "--task", "-t", help="Built-in task name or JSONL/CSV file (repeatable).")
OUT = typer.Option(Path("runs/tasklens"), help="Run folder (scores/, sets/, tables, figures, config).")


@app.command()
def locate(
    model: str = MODEL,
    task: list[str] = TASKS,
    out: Path = OUT,
    method: str = typer.Option("attribution_patching", help="Scorer name (see tasklens.scoring.SCORERS)."),
    param: list[str] = typer.Option([], help="Scorer parameter key=value (repeatable)."),
    unit: str = typer.Option("hook_post", help="Neuron unit: hook_post, hook_pre, hook_pre_linear."),
    select: str = typer.Option("top_percent", help="top_percent, top_k, per_layer_top_k, threshold, ..."),
    value: float = typer.Option(1.0, help="The selection's value (percent, k, threshold...)."),
    max_prompts: int = typer.Option(150, help="Prompts per task (deterministic sample)."),
) -> None:
    """Score every neuron for each task and select a set; writes scores/ and sets/.

    Example: tasklens locate -t continent_of -t addition --method gradient_attribution --value 2
    """
    from tasklens.pipeline import locate as run_locate

    try:
        config = _config(
            model,
            task,
            out,
            method=method,
            params=_params(param),
            unit=unit,
            select=select,
            value=value,
            max_prompts=max_prompts,
        )
        sets = run_locate(config)
    except TasklensError as error:
        _fail(error)
    typer.echo(f"{len(sets)} sets ({', '.join(f'{s.name}={len(s)}' for s in sets)}) in {out}")


@app.command()
def ablate(
    model: str = MODEL,
    task: list[str] = TASKS,
    out: Path = OUT,
    intervention: str = typer.Option("ablate", help="ablate (zero) or amplify."),
    factor: float = typer.Option(2.0, help="Amplification factor."),
    controls: int = typer.Option(3, help="Random control sets per set (same per-layer counts)."),
    metric: str = typer.Option("exact_match", help="exact_match, logprob, next_token, loss, logit, prob."),
    max_prompts: int = typer.Option(150, help="Evaluation prompts per task."),
) -> None:
    """Evaluation matrix of the run's sets (from `locate`) on every task.

    Example: tasklens ablate -t continent_of -t addition --intervention amplify --factor 3
    """
    from tasklens.matrix import pivot
    from tasklens.pipeline import ablate as run_ablate

    try:
        config = _config(
            model,
            task,
            out,
            intervention=intervention,
            factor=factor,
            controls=controls,
            metric=metric,
            max_prompts=max_prompts,
        )
        frame = run_ablate(config)
    except TasklensError as error:
        _fail(error)
    typer.echo(pivot(frame).to_string(float_format=lambda v: f"{v:.3f}"))


@app.command()
def compare(
    model: str = MODEL,
    task: list[str] = TASKS,
    out: Path = OUT,
    causal: bool = typer.Option(True, help="Also run cumulativity and interference (needs the model)."),
    max_prompts: int = typer.Option(150, help="Evaluation prompts per task."),
) -> None:
    """Overlap, shared vs exclusive neurons, cumulativity and interference of the run's sets.

    Example: tasklens compare -t continent_of -t currency_of --out runs/relations
    """
    from tasklens.pipeline import compare as run_compare

    try:
        config = _config(model, task, out, cumulativity=causal, interference=causal, max_prompts=max_prompts)
        results = run_compare(config)
    except TasklensError as error:
        _fail(error)
    typer.echo(results["overlap_jaccard"].to_string(float_format=lambda v: f"{v:.3f}"))


@app.command()
def report(run: Path = typer.Argument(..., help="A run folder.")) -> None:
    """Write a self-contained HTML report (tables, figures, circuitsvis views) into a run folder.

    Example: tasklens report runs/tasklens
    """
    from tasklens.report import build_report

    try:
        path = build_report(run)
    except TasklensError as error:
        _fail(error)
    typer.echo(f"wrote {path}")


@app.command("run")
def run_config(config_file: Path = typer.Argument(..., help="TOML file with RunConfig fields.")) -> None:
    """Run locate, ablate, compare and report from one TOML config; the run folder keeps a copy.

    Example: tasklens run examples/relations.toml
    """
    from tasklens.models import load_model
    from tasklens.pipeline import RunConfig
    from tasklens.pipeline import ablate as run_ablate
    from tasklens.pipeline import compare as run_compare
    from tasklens.pipeline import locate as run_locate
    from tasklens.report import build_report

    start = time.time()
    try:
        config = RunConfig.from_toml(config_file)
        model = load_model(config.model)
        sets = run_locate(config, model)
        run_ablate(config, model)
        run_compare(config, model)
        path = build_report(config.out, model)
    except TasklensError as error:
        _fail(error)
    typer.echo(f"{len(sets)} tasks, report {path} ({time.time() - start:.0f} s)")


@organism_app.command("train")
def organism_train(
    out: Path = typer.Option(Path("organism"), help="Folder to write the checkpoint to."),
    extra: list[Path] = typer.Option(
        [], help="Extra task files (JSONL/CSV with prompt, answer) to train on."
    ),
    seed: int = typer.Option(0, help="Random seed."),
    steps: int = typer.Option(None, help="Training steps (default: the shipped organism's)."),
) -> None:
    """Train the organism from scratch on the built-in suite (deterministic from the seed).

    Example: tasklens organism train --out my_organism --extra my_task.jsonl
    """
    from tasklens.models import load_model
    from tasklens.organism.card import write_card
    from tasklens.organism.evaluate import evaluate_suite
    from tasklens.organism.train import OrganismConfig, train_organism
    from tasklens.tasks.builtin import training_tasks
    from tasklens.tasks.task import Task

    try:
        config = OrganismConfig(seed=seed, extra_tasks=[str(p) for p in extra])
        if steps is not None:
            config.steps = steps
        data = training_tasks() + [Task.from_file(p) for p in extra]
        record = train_organism(data, out, config)
        accuracy = evaluate_suite(load_model(str(out)))
        write_card(out, accuracy)
    except TasklensError as error:
        _fail(error)
    typer.echo(
        f"wrote {out} (loss {record['loss_first_50']:.3f} -> {record['loss_last_50']:.3f}, "
        f"{record['seconds']:.0f} s); model card: {out / 'README.md'}"
    )


@organism_app.command("eval")
def organism_eval(
    model: str = typer.Option("organism", help="Model spec to evaluate."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
    max_prompts: int = typer.Option(300, help="Prompts per task and split (deterministic sample)."),
) -> None:
    """Per-task greedy exact-match accuracy (training templates, held-out templates/instances).

    Example: tasklens organism eval --json
    """
    from tasklens.models import load_model
    from tasklens.organism.evaluate import evaluate_suite

    try:
        loaded = load_model(model)
        results = evaluate_suite(
            loaded,
            max_prompts=max_prompts,
            progress=None if as_json else lambda n, k, v: typer.echo(f"{n:<16} {k:<17} {v:.3f}", err=True),
        )
    except TasklensError as error:
        _fail(error)
    json.dump(results, sys.stdout, indent=2)
    typer.echo()


if __name__ == "__main__":
    app()
