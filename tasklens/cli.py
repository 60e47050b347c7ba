"""The `tasklens` command line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

from tasklens.errors import TasklensError

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
