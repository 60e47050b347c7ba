"""A whole run described by one plain config: locate, ablate, compare, report.

`RunConfig` is plain data (read from TOML by `tasklens run CONFIG`); each stage
reads the run folder the previous stage wrote, so stages can be rerun alone
(`tasklens locate`, `tasklens ablate`, `tasklens compare`, `tasklens report`).
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from tasklens.errors import TasklensError, check_choice
from tasklens.io import atomic_write_text
from tasklens.neurons import NeuronScores, NeuronSet
from tasklens.outputs import OutputDir
from tasklens.tasks.task import Task

SELECTIONS = ("top_percent", "top_k", "per_layer_top_k", "threshold", "fraction_of_max")


@dataclass
class RunConfig:
    """Everything one run needs (each field has a CLI option of the same name).

    Attributes:
        model: model spec (``"organism"``, a local folder, a hub name).
        tasks: built-in task names or JSONL/CSV task files.
        out: the run folder.
        split, eval_split: built-in splits used to locate and to evaluate.
        max_prompts: prompts per task and split (deterministic sample).
        method, params: the scorer (see `tasklens.scoring.SCORERS`) and its parameters.
        unit: neuron unit.
        select, value: selection rule (``top_percent``, ``top_k``, ...) and its value.
        intervention, factor, controls, metric: the evaluation matrix.
        cumulativity, interference: which causal comparisons to run.
        batch_size: prompts per forward pass.
    """

    model: str = "organism"
    tasks: list[str] = field(
        default_factory=lambda: ["continent_of", "currency_of", "larger_number", "addition"]
    )
    out: str = "runs/tasklens"
    split: str = "detection"
    eval_split: str = "evaluation"
    max_prompts: int = 150
    method: str = "attribution_patching"
    params: dict[str, Any] = field(default_factory=dict)
    unit: str = "hook_post"
    select: str = "top_percent"
    value: float = 1.0
    intervention: str = "ablate"
    factor: float = 2.0
    controls: int = 3
    metric: str = "exact_match"
    cumulativity: bool = True
    interference: bool = True
    batch_size: int = 32

    @classmethod
    def from_toml(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        if not path.is_file():
            raise TasklensError(f"Config file {str(path)!r} does not exist")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise TasklensError(f"Config file {str(path)!r} is not valid TOML: {error}") from error
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise TasklensError(
                f"Config file {str(path)!r} has unknown keys {unknown}; "
                f"known keys: {sorted(cls.__dataclass_fields__)}"
            )
        config = cls(**data)
        config.check()
        return config

    def check(self) -> None:
        from tasklens.matrix import EVALUATIONS
        from tasklens.scoring import SCORERS

        check_choice("method", self.method, SCORERS)
        check_choice("selection", self.select, SELECTIONS)
        check_choice("metric", self.metric, EVALUATIONS)
        if not self.tasks:
            raise TasklensError("A run needs at least one task (a built-in name or a JSONL/CSV file)")

    def to_toml(self) -> str:
        lines = []
        for key, value in asdict(self).items():
            if isinstance(value, dict):
                inner = ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items())
                lines.append(f"{key} = {{ {inner} }}")
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def load_task(spec: str, split: str, max_prompts: int) -> Task:
    """A built-in task's split, or a task file, sampled to ``max_prompts``."""
    from tasklens.organism.evaluate import sample
    from tasklens.tasks.builtin import load_builtin

    if spec.endswith((".jsonl", ".json", ".csv")) or Path(spec).is_file():
        return sample(Task.from_file(spec), max_prompts)
    return sample(load_builtin(spec, split), max_prompts)


def _output(config: RunConfig) -> OutputDir:
    out = OutputDir(config.out, asdict(config))
    atomic_write_text(out.path / "config.toml", config.to_toml())
    return out


def locate(config: RunConfig, model=None) -> list[NeuronSet]:
    """Score every task's neurons and select them; writes ``scores/`` and ``sets/``."""
    from tasklens import selection
    from tasklens.models import load_model
    from tasklens.scoring import get_scorer

    config.check()
    model = model if model is not None else load_model(config.model)
    out = _output(config)
    scorer = get_scorer(config.method, **config.params)
    sets = []
    for spec in tqdm(config.tasks, desc=f"locating ({config.method})"):
        task = load_task(spec, config.split, config.max_prompts)
        scores = scorer.attribute(model, task, unit=config.unit, batch_size=config.batch_size)
        scores.save(out.path / "scores" / task.name)
        rule = getattr(selection, config.select)
        value = int(config.value) if config.select in ("top_k", "per_layer_top_k") else config.value
        neurons = rule(scores, value).renamed(task.name)
        neurons.save(out.path / "sets" / task.name)
        sets.append(neurons)
    return sets


def load_sets(run: str | Path, shape: tuple[int, int] | None = None) -> list[NeuronSet]:
    folder = Path(run) / "sets"
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise TasklensError(f"No neuron sets in {str(folder)!r}; run `tasklens locate` first")
    return [NeuronSet.load(f, shape) for f in files]


def load_scores(run: str | Path, shape: tuple[int, int] | None = None) -> dict[str, NeuronScores]:
    return {f.stem: NeuronScores.load(f, shape) for f in sorted((Path(run) / "scores").glob("*.safetensors"))}


def ablate(config: RunConfig, model=None) -> pd.DataFrame:
    """The evaluation matrix of the run's sets on every task; writes ``matrix.*``."""
    from tasklens.matrix import evaluation_matrix, intervention, pivot, plot
    from tasklens.models import ModelInfo, load_model

    model = model if model is not None else load_model(config.model)
    out = _output(config)
    sets = load_sets(config.out, ModelInfo.of(model).shape)
    tasks = [load_task(spec, config.eval_split, config.max_prompts) for spec in config.tasks]
    bar = tqdm(total=len(sets), desc=f"{config.intervention} matrix")
    frame = evaluation_matrix(
        model,
        sets,
        tasks,
        n_controls=config.controls,
        metric=config.metric,
        intervene=intervention(config.intervention, config.factor),
        batch_size=config.batch_size,
        progress=lambda _: bar.update(),
    )
    bar.close()
    out.table("matrix_long", frame, index=False)
    out.table("matrix", pivot(frame))
    out.figure("matrix", plot(frame))
    out.figure("matrix_change", plot(frame, "change"))
    return frame


def compare(config: RunConfig, model=None) -> dict[str, pd.DataFrame]:
    """Overlap and sharing of the run's sets; cumulativity and interference with the model."""
    from tasklens.compare import overlap_matrix, sharing_table
    from tasklens.experiments import cumulativity, exclusive_vs_shared, interference, k_grid
    from tasklens.models import ModelInfo, load_model
    from tasklens.plots import curves, heatmap, layer_bars

    out = _output(config)
    sets = load_sets(config.out)
    results = {
        "overlap_jaccard": overlap_matrix(sets, "jaccard"),
        "overlap_p_value": overlap_matrix(sets, "p_value"),
    }
    sharing = sharing_table(sets)
    out.table("sharing", sharing, index=False)
    out.figure("sharing", layer_bars(sharing, "exclusive vs shared neurons per layer"))
    out.figure("overlap", heatmap(results["overlap_jaccard"], "Jaccard overlap"))
    for name, frame in results.items():
        out.table(name, frame)
    if config.cumulativity or config.interference:
        model = model if model is not None else load_model(config.model)
        shape = ModelInfo.of(model).shape
        tasks = {
            t.name: t for t in (load_task(s, config.eval_split, config.max_prompts) for s in config.tasks)
        }
        if config.cumulativity:
            scores = load_scores(config.out, shape)
            curves_ = {}
            for name, task in tqdm(tasks.items(), desc="cumulativity"):
                others = [t for n, t in tasks.items() if n != name]
                curves_[name] = cumulativity(
                    model, scores[name], task, others, k_grid(scores[name].values.numel())
                )
                out.table(f"cumulativity_{name}", curves_[name], index=False)
            out.figure(
                "cumulativity", curves(curves_, "k", ["accuracy", "others_accuracy"], "top-k deactivated")
            )
            results.update({f"cumulativity_{n}": c for n, c in curves_.items()})
        if len(sets) > 1:
            parts = exclusive_vs_shared(
                model, sets, [tasks[s.name] for s in sets], config.metric, config.batch_size
            )
            out.table("exclusive_vs_shared", parts, index=False)
            results["exclusive_vs_shared"] = parts
        if config.interference and len(sets) > 1:
            drop = interference(model, sets, [tasks[s.name] for s in sets])
            out.table("interference", drop)
            out.figure("interference", heatmap(drop, "acc_drop(row | column's neurons off)", center=True))
            results["interference"] = drop
    return results
