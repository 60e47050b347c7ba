"""A whole run described by one plain config: locate, ablate, compare, report.

`RunConfig` is plain data: every field has a type, a default and a help text,
written once here; the CLI's options and the TOML schema (`tasklens run
CONFIG`) are generated from it, and the whole config is validated (types, names,
values, the output folder) before any model is loaded. Each stage writes into a
`tasklens.runs.RunFolder` and reads only what the previous stage's manifest
names, so stages can be rerun alone (`tasklens locate`, `tasklens ablate`,
`tasklens compare`, `tasklens report`).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import tomli_w
import torch
from pydantic import TypeAdapter, ValidationError
from tqdm.auto import tqdm

from tasklens.analysis.matrix import EvaluationResult
from tasklens.data.neurons import NeuronScores, NeuronSet
from tasklens.errors import TasklensError, check_choice
from tasklens.runs import STAGES, RunFolder, check_out_folder
from tasklens.tasks.task import Task, is_task_file

LOCATE, ABLATE, COMPARE = ("locate",), ("ablate",), ("compare",)
ALL = LOCATE + ABLATE + COMPARE


def option(
    default: Any,
    help: str,
    *,
    stages: tuple[str, ...] = ALL,
    flags: tuple[str, ...] = (),
    record: bool = True,
) -> Any:
    """A `RunConfig` field: its default, its help text, the stages that take it (each has it as
    a CLI option), optionally its CLI flags, and whether a stage's record in the run's manifest
    keeps it (``record=False``: where and how a stage ran, not what it computed)."""
    meta = {"help": help, "stages": stages, "flags": flags, "record": record}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    """Everything one run needs; each field is a CLI option and a TOML key of the same name."""

    model: str = option(
        "organism", "Model: 'organism', 'smollm2-135m', a local Hugging Face folder or a hub name."
    )
    tasks: list[str] = option(
        ["continent_of", "currency_of", "larger_number", "addition"],
        "Built-in task names or JSONL/CSV task files (names must be distinct).",
        flags=("--task", "-t"),
    )
    out: str = option(
        "runs/tasklens", "Run folder (scores/, sets/, tables, figures, manifest).", record=False
    )
    plugins: list[str] = option(
        [],
        "Python modules to import first; they register their own scorers, metrics, selections.",
        flags=("--plugin",),
    )
    split: str = option("detection", "Built-in split the neurons are located on.", stages=LOCATE + COMPARE)
    eval_split: str = option(
        "evaluation", "Built-in split the interventions are evaluated on.", stages=ABLATE + COMPARE
    )
    max_prompts: int = option(150, "Prompts per task and split (a deterministic sample).")
    method: str = option("attribution_patching", "Scorer (`tasklens list`).", stages=LOCATE + COMPARE)
    params: dict[str, Any] = option(
        {}, "Scorer parameters, key=value (repeatable).", stages=LOCATE + COMPARE, flags=("--param",)
    )
    intervention_params: dict[str, Any] = option(
        {},
        "Parameters of the intervention kind, key=value (repeatable; e.g. a plug-in kind's own).",
        stages=ABLATE,
        flags=("--intervention-param",),
    )
    unit: str = option(
        "hook_post",
        "Neuron unit: hook_post, hook_pre, or hook_pre_linear (gated MLPs).",
        stages=LOCATE + COMPARE,
    )
    select: str = option("top_percent", "Selection rule (`tasklens list`).", stages=LOCATE + COMPARE)
    value: float = option(
        1.0, "The selection's value (a percent, k, a threshold...).", stages=LOCATE + COMPARE
    )
    intervention: str = option(
        "zero", "Intervention kind: zero, mean, resample, amplify, clamp...", stages=ABLATE
    )
    factor: float = option(2.0, "Amplification factor (intervention 'amplify').", stages=ABLATE)
    clamp_value: float = option(0.0, "Value the neurons are set to (intervention 'clamp').", stages=ABLATE)
    controls: int = option(
        20,
        "Random sets per set (same per-layer counts); 20, the fewest whose p can fall below 0.05 "
        "alone. 0: none (no verdict).",
        stages=ABLATE,
    )
    at_stake: int = option(
        0,
        "The most random sets for a set that lowers its own task more than every other task (its "
        "specificity verdict at stake; docs/statistics.md); 0: as many as the page's verdicts need "
        "(20 per set named after a task, so the smallest p can pass the error control).",
        stages=ABLATE,
    )
    sequential: bool = option(
        True,
        "Stop a set's random sets early once enough of them lower its task as much (Besag-Clifford; "
        "the count changes no verdict at 0.05).",
        stages=ABLATE,
    )
    controls_on: str = option(
        "own",
        "Tasks the random sets are evaluated on: own (the set's own task, all the verdict reads) or all.",
        stages=ABLATE,
    )
    random_precision: str = option(
        "float32",
        "The random sets' forward passes: float32, or bfloat16 (products in bfloat16, float32 "
        "accumulation and metrics; docs/benchmarks.md). The sets themselves stay float32.",
        stages=ABLATE,
    )
    journal: str = option(
        "",
        "A folder that keeps every finished random set: ablate again with it to resume an "
        "interrupted evaluation ('': none).",
        stages=ABLATE,
        record=False,
    )
    metric: str = option(
        "exact_match",
        "Metric: exact_match (greedy decoding), next_token, logprob, loss... (`tasklens list`).",
        stages=ABLATE + COMPARE,
    )
    cumulativity: bool = option(
        True, "compare: accuracy as the top-k neurons are deactivated.", stages=COMPARE
    )
    interference: bool = option(True, "compare: each set's effect on every task (acc_drop).", stages=COMPARE)
    stability_splits: int = option(
        0, "compare: split-half stability of each set over this many random splits (0: off).", stages=COMPARE
    )
    batch_size: int = option(32, "Prompts per forward pass.")
    device: str = option("cpu", "Torch device: cpu, cuda, cuda:1, mps.", record=False)
    dtype: str = option("float32", "Parameter dtype: float32, bfloat16 or float16.")

    def load(self):
        """The config's model on its device, in its dtype."""
        return load_model_on(self.model, self.device, self.dtype)

    # --- reading and checking -----------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> RunConfig:
        """Build and fully check a config from plain data (e.g. a parsed TOML file)."""
        if not isinstance(data, dict):
            raise TasklensError(f"{source} must be a table of settings, got {type(data).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise TasklensError(f"{source} has unknown keys {unknown}; known keys: {sorted(known)}")
        hints = _field_types()
        for key, value in data.items():
            try:
                TypeAdapter(hints[key]).validate_python(value, strict=True)
            except ValidationError as error:
                expected = getattr(hints[key], "__name__", str(hints[key]))
                raise TasklensError(
                    f"{source}: {key} = {value!r} is not a valid {expected} "
                    f"({error.errors()[0]['msg']}); e.g. {key} = {_toml_repr(known[key])}"
                ) from error
        config = cls(**data)
        config.check()
        return config

    @classmethod
    def from_toml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
        """The config a TOML file holds, with ``overrides`` (e.g. the CLI's ``--device``) in place
        of the file's values."""
        path = Path(path)
        if not path.is_file():
            raise TasklensError(f"Config file {str(path)!r} does not exist")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise TasklensError(f"Config file {str(path)!r} is not valid TOML: {error}") from error
        return cls.from_dict({**data, **(overrides or {})}, source=f"Config file {str(path)!r}")

    def check(self) -> None:
        """Validate every name and value that can be checked without the model."""
        from tasklens.evaluation.metrics import METRICS
        from tasklens.models import UNITS
        from tasklens.registry import load_plugins
        from tasklens.scoring import get_scorer
        from tasklens.selection import SELECTIONS

        load_plugins(self.plugins)
        if not self.tasks:
            raise TasklensError("A run needs at least one task (a built-in name or a JSONL/CSV file)")
        task_names(self.tasks)
        for spec in self.tasks:
            check_task_spec(spec, (self.split, self.eval_split))
        get_scorer(self.method, **resolve_params(self.method, self.params, self.tasks, None))
        SELECTIONS.get(self.select)
        self.intervention_spec()
        METRICS.get(self.metric)
        if self.unit not in UNITS:
            raise TasklensError(f"Unknown neuron unit {self.unit!r}; choose one of {list(UNITS)}")
        check_device(self.device, self.dtype)
        for name, minimum in (("max_prompts", 1), ("batch_size", 1), ("controls", 0)):
            if getattr(self, name) < minimum:
                raise TasklensError(f"{name} must be at least {minimum}, got {getattr(self, name)}")
        from tasklens.models.precision import PRECISIONS

        check_choice("random_precision", self.random_precision, PRECISIONS)
        if self.at_stake and self.at_stake < self.controls:
            raise TasklensError(
                f"at_stake must be 0 (as many as the verdicts need) or at least controls "
                f"({self.controls}), got {self.at_stake}"
            )
        check_choice("controls_on", self.controls_on, ("own", "all"))
        for name in ("value", "factor", "clamp_value"):
            if not math.isfinite(getattr(self, name)):
                raise TasklensError(f"{name} must be a finite number, got {getattr(self, name)}")
        check_out_folder(self.out)

    def intervention_spec(self):
        """The `tasklens.interventions.Intervention` the ablate stage applies (``factor`` and
        ``clamp_value`` feed the built-in kinds; ``intervention_params`` any kind's own)."""
        from tasklens.interventions import Intervention

        given = {"factor": self.factor, "value": self.clamp_value, **self.intervention_params}
        return Intervention(self.intervention, **given)

    # --- writing ------------------------------------------------------------------------
    def to_dict(self, fields: tuple[str, ...] | None = None) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return data if fields is None else {k: data[k] for k in fields}

    def to_toml(self) -> str:
        """The config as TOML (which has no null: keys holding None are left out)."""
        return tomli_w.dumps(_without_none(self.to_dict()))


RUN_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def stage_options(stage: str) -> tuple[str, ...]:
    """The `RunConfig` fields ``stage`` takes (its CLI options), from each field's ``stages``."""
    return tuple(name for name, f in RUN_FIELDS.items() if stage in f.metadata["stages"])


#: the fields each stage records in the run's manifest
STAGE_FIELDS = {
    stage: tuple(name for name in stage_options(stage) if RUN_FIELDS[name].metadata["record"])
    for stage in ALL
}
DTYPES = ("float32", "bfloat16", "float16")


def check_device(device: str, dtype: str = "float32") -> None:
    """``device`` names a torch device this machine has, and ``dtype`` one it can compute in."""
    from tasklens.models.loading import check_device as check_torch_device

    check_choice("dtype", dtype, DTYPES)
    check_torch_device(device, 'device = "cpu"')
    if device.startswith("cuda") and dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise TasklensError(
            f'device {device!r} cannot compute in bfloat16; use dtype = "float16" or "float32"'
        )


def load_model_on(model: str, device: str = "cpu", dtype: str = "float32"):
    """`tasklens.models.load_model` with ``device`` and ``dtype`` (a name) checked first."""
    from tasklens.models import load_model

    check_device(device, dtype)
    return load_model(model, device=device, dtype=getattr(torch, dtype))


def stage_files(config: RunConfig, stage: str) -> list[str]:
    """The files a stage writes into the run folder (checked before any work is done)."""
    names = task_names(config.tasks)

    def table(*tables: str) -> list[str]:
        return [f"{t}.{suffix}" for t in tables for suffix in ("csv", "json")]

    if stage == "locate":
        pairs = [
            f"{kind}/{n}.{suffix}"
            for n in names
            for kind in ("scores", "sets")
            for suffix in ("safetensors", "json")
        ]
        return [*pairs, "config.toml"]
    if stage == "ablate":
        return [
            "matrix_result.json",
            *table("matrix", "matrix_long", "effects", "specificity"),
            "matrix_change.png",
            "effects.png",
        ]
    if stage == "compare":
        files = [
            *table("sharing", "overlap_jaccard", "overlap_shared", "overlap_p_value"),
            "sharing.png",
            "overlap.png",
        ]
        if config.cumulativity:
            files += [*table(*(f"cumulativity_{n}" for n in names)), "cumulativity.png"]
        if (config.cumulativity or config.interference) and len(names) > 1:
            files += table("exclusive_vs_shared")
        if config.interference and len(names) > 1:
            files += [*table("interference"), "interference.png"]
        if config.stability_splits > 0:
            files += table("stability")
        return files
    return ["report.html"] if stage == "report" else []


def check_writable(config: RunConfig, stages: tuple[str, ...] = STAGES) -> None:
    """Refuse before any work if a file of the user's is where one of ``stages`` writes."""
    RunFolder(config.out).check_writable([name for stage in stages for name in stage_files(config, stage)])


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value if v is not None]
    return value


def _field_types() -> dict[str, Any]:
    import typing

    return typing.get_type_hints(RunConfig)


def _toml_repr(f: dataclasses.Field) -> str:
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if isinstance(default, dict):
        return '{ key = "value" }'
    return tomli_w.dumps({"x": default}).split("=", 1)[1].strip()


def task_names(specs: list[str]) -> list[str]:
    """The task name each spec gives (a file's stem); duplicates are an error."""
    names = [Path(s).stem if is_task_file(s) else s for s in specs]
    seen: dict[str, str] = {}
    for spec, name in zip(specs, names, strict=True):
        if name in seen:
            raise TasklensError(
                f"Tasks {seen[name]!r} and {spec!r} are both named {name!r}, so their results would "
                "overwrite each other; rename one file"
            )
        seen[name] = spec
    return names


def check_task_spec(spec: str, splits: tuple[str, ...]) -> None:
    """A task spec names an existing file or a built-in task with the given splits."""
    from tasklens.tasks.builtin import builtin_task_splits
    from tasklens.tasks.task import check_task_path

    if is_task_file(spec):
        check_task_path(Path(spec))
        return
    try:
        available = builtin_task_splits(spec)
    except TasklensError:
        if Path(spec).is_dir():
            check_task_path(Path(spec))  # a folder given for a task file: say so
        raise
    for split in splits:
        if split not in available:
            raise TasklensError(
                f"Built-in task {spec!r} has no split {split!r}; its splits are: {', '.join(available)}"
            )


def load_task(spec: str, split: str, max_prompts: int) -> Task:
    """A built-in task's split, or a task file, sampled to ``max_prompts``."""
    from tasklens.tasks.builtin import load_builtin

    task = Task.from_file(spec) if is_task_file(spec) else load_builtin(spec, split)
    return task.sample(max_prompts)


def resolve_params(method: str, params: dict[str, Any], tasks: list[str], split: str | None) -> dict:
    """Scorer parameters with task names turned into tasks: average precision's ``negatives``
    default to the run's other tasks (each scored task excludes itself)."""
    if method != "average_precision":
        return dict(params)
    negatives = params.get("negatives", tasks)
    if isinstance(negatives, str):
        negatives = [negatives]
    if split is None:  # checking only: the names must be loadable
        for spec in negatives:
            check_task_spec(spec, ())
        return {k: v for k, v in params.items() if k != "negatives"}
    return {**params, "negatives": [load_task(spec, split, 10**9) for spec in negatives]}


# --- the stages ---------------------------------------------------------------------------------
def _reusable(path: Path, scorer, model, task: Task, unit: str) -> NeuronScores | None:
    """Scores a killed or earlier run left at ``path``, if complete and made the same way."""
    try:
        scores = NeuronScores.load(path, model=model)
    except TasklensError:
        return None
    own = scorer.get_params()
    same = (
        scores.method == scorer.name
        and scores.unit == unit
        and scores.task_hash == task.data_hash()
        and {k: scores.params.get(k) for k in own} == own
    )
    return scores if same else None


def locate(config: RunConfig, model=None) -> list[NeuronSet]:
    """The locate stage: `tasklens.analysis.locate.locate` with the config's scorer and
    selection; writes ``scores/``, ``sets/`` and ``config.toml``. Tasks whose scores a
    killed run already completed (same model, data, method and parameters) are not
    scored again."""
    from tasklens.analysis.locate import check_selection
    from tasklens.analysis.locate import locate as locate_sets
    from tasklens.io import atomic_write_text
    from tasklens.models import ModelInfo
    from tasklens.scoring import get_scorer

    config.check()
    run = RunFolder(config.out)
    run.check_writable(stage_files(config, "locate"))
    tasks = [load_task(spec, config.split, config.max_prompts) for spec in config.tasks]
    model = model if model is not None else config.load()
    ModelInfo.of(model).check_unit(config.unit)
    check_selection(model, config.select, config.value)
    params = resolve_params(config.method, config.params, config.tasks, config.split)
    scorer = get_scorer(config.method, **params)
    with run.stage("locate", config.to_dict(STAGE_FIELDS["locate"]), stage_files(config, "locate")) as out:
        for task in tasks:  # checked before reading or writing
            for name in (f"scores/{task.name}", f"sets/{task.name}"):
                out.file(f"{name}.safetensors")
                out.file(f"{name}.json")
        earlier = {}
        for task in tasks:
            scores = _reusable(out.path / "scores" / task.name, scorer, model, task, config.unit)
            if scores is not None:
                earlier[task.name] = scores
        sets = locate_sets(
            model, tasks, scorer, config.select, config.value, unit=config.unit,
            batch_size=config.batch_size, scores=earlier, progress=True,
            on_scores=lambda name, scores: scores.save(out.path / "scores" / name),
        )  # fmt: skip
        for name, neurons in sets.items():
            neurons.save(out.path / "sets" / name)
        atomic_write_text(out.file("config.toml"), config.to_toml())
    return list(sets.values())


def load_sets(run: str | Path, model=None, allow_other_model: bool = False) -> list[NeuronSet]:
    """The neuron sets of a run's finished `locate` stage (checked against ``model``)."""
    files = RunFolder(run).files("locate", "sets/", ".safetensors")
    return [NeuronSet.load(f, model=model, allow_other_model=allow_other_model) for f in files]


def load_scores(run: str | Path, model=None, allow_other_model: bool = False) -> dict[str, NeuronScores]:
    """The scores of a run's finished `locate` stage, by task name."""
    files = RunFolder(run).files("locate", "scores/", ".safetensors")
    return {f.stem: NeuronScores.load(f, model=model, allow_other_model=allow_other_model) for f in files}


def _evaluation_tasks(config: RunConfig) -> list[Task]:
    return [load_task(spec, config.eval_split, config.max_prompts) for spec in config.tasks]


def ablate(config: RunConfig, model=None) -> EvaluationResult:
    """The evaluation matrix of the run's sets on every task; writes ``matrix.*``.

    Each set draws its random sets one at a time up to what its verdict needs
    (`tasklens.analysis.draws.Draws.for_page` over the sets named after tasks)."""
    from tasklens.analysis.matrix import evaluation_matrix

    config.check()
    run = RunFolder(config.out)
    run.record("locate")
    run.check_writable(stage_files(config, "ablate"))
    tasks = _evaluation_tasks(config)
    model = model if model is not None else config.load()
    sets = load_sets(config.out, model)
    spec = config.intervention_spec()
    with run.stage("ablate", config.to_dict(STAGE_FIELDS["ablate"]), stage_files(config, "ablate")) as out:
        draws = run_draws(config, [s.name for s in sets], [t.name for t in tasks])
        bar = tqdm(total=len(sets), desc=f"{spec.label} matrix")
        result = evaluation_matrix(
            model,
            sets,
            tasks,
            metric=config.metric,
            intervention=spec,
            batch_size=config.batch_size,
            progress=lambda _: bar.update(),
            **draws.kwargs(),
            precision=config.random_precision,
            journal=config.journal or None,
        )
        bar.close()
        out.json("matrix_result", result.to_dict())
        out.table("matrix", result.pivot())
        out.table("matrix_long", result.to_frame(), index=False)
        out.figure("matrix_change", change_figure(result))
        if any(s.name in result.tasks for s in sets):
            out.table("effects", result.own_and_others())
            out.figure("effects", result.plot_own_vs_others())
            if len(result.tasks) > 1 and config.controls > 0:
                out.table("specificity", result.specificity())
    return result


def run_draws(config: RunConfig, sets: list[str], tasks: list[str]):
    """The random sets a run's ablate stage draws (`tasklens.analysis.draws.Draws.for_page`): its
    page's tests are the sets named after tasks."""
    from tasklens.analysis.draws import Draws

    tests = sum(name in tasks for name in sets) if len(tasks) > 1 else 1
    return Draws.for_page(
        tests,
        controls=config.controls,
        most=config.at_stake or None,
        sequential=config.sequential,
        controls_on=config.controls_on,
    )


def change_figure(result: EvaluationResult):
    """The change heatmap of an evaluation: rows and columns in the same order (each set on the
    diagonal at its own task), red where the metric falls."""
    from tasklens.analysis.plots import diagonal_order, heatmap

    return heatmap(
        diagonal_order(result.change()),
        f"{result.metric}: change from unmodified, {result.intervention_label}",
        center=True,
        falls="negative",
        xlabel="task evaluated",
        ylabel="neurons intervened on",
    )


def compare(config: RunConfig, model=None) -> dict[str, Any]:
    """Overlap and sharing of the run's sets; cumulativity and interference with the model."""
    from tasklens.analysis.compare import overlap_matrix, sharing_table
    from tasklens.analysis.experiments import cumulativity, exclusive_vs_shared, interference, k_grid
    from tasklens.analysis.plots import curves, heatmap, layer_bars
    from tasklens.models import ModelInfo

    config.check()
    run = RunFolder(config.out)
    run.record("locate")
    run.check_writable(stage_files(config, "compare"))
    causal = config.cumulativity or config.interference
    tasks = {t.name: t for t in _evaluation_tasks(config)} if causal else {}
    needs_model = causal or config.stability_splits > 0
    model = model if model is not None else (config.load() if needs_model else None)
    sets = load_sets(config.out, model)
    results: dict[str, Any] = {
        "overlap_jaccard": overlap_matrix(sets, "jaccard"),
        "overlap_shared": overlap_matrix(sets, "shared"),
        "overlap_p_value": overlap_matrix(sets, "p_value"),
    }
    with run.stage("compare", config.to_dict(STAGE_FIELDS["compare"]), stage_files(config, "compare")) as out:
        sharing = out.table("sharing", sharing_table(sets), index=False)
        out.figure("sharing", layer_bars(sharing, "exclusive vs shared neurons per layer"))
        out.figure("overlap", heatmap(results["overlap_jaccard"], "Jaccard overlap"))
        for name in ("overlap_jaccard", "overlap_shared", "overlap_p_value"):
            out.table(name, results[name])
        if config.cumulativity:
            scores = load_scores(config.out, model)
            n_neurons = ModelInfo.of(model).n_neurons
            curves_ = {}
            for name, task in tqdm(tasks.items(), desc="cumulativity"):
                others = [t for n, t in tasks.items() if n != name]
                curves_[name] = cumulativity(
                    model, scores[name], task, others, k_grid(n_neurons), config.batch_size, config.metric
                )
                out.table(f"cumulativity_{name}", curves_[name], index=False)
            out.figure(
                "cumulativity", curves(curves_, "k", ["accuracy", "others_accuracy"], "top-k deactivated")
            )
            results.update({f"cumulativity_{n}": c for n, c in curves_.items()})
        if causal and len(sets) > 1:
            ordered = [tasks[s.name] for s in sets]
            parts = exclusive_vs_shared(model, sets, ordered, config.metric, config.batch_size)
            results["exclusive_vs_shared"] = out.table("exclusive_vs_shared", parts, index=False)
        if config.interference and len(sets) > 1:
            drop = interference(model, sets, [tasks[s.name] for s in sets], config.batch_size, config.metric)
            out.table("interference", drop)
            out.figure("interference", interference_figure(drop, task_names(config.tasks)))
            results["interference"] = drop
        if config.stability_splits > 0:
            results["stability"] = out.table("stability", _stability(config, model), index=False)
    return results


def interference_figure(drop: pd.DataFrame, order: list[str] | None = None):
    """The acc_drop heatmap: each set's own task on the diagonal (tasks in ``order``), red where a
    task falls."""
    from tasklens.analysis.plots import diagonal_order, heatmap

    return heatmap(
        diagonal_order(drop, order),
        "acc_drop: relative drop of the row's task, the column's neurons off",
        center=True,
        falls="positive",
        xlabel="neurons off",
        ylabel="task evaluated",
    )


def _stability(config: RunConfig, model) -> pd.DataFrame:
    """Split-half Jaccard of each task's set, found again with the run's scorer and selection."""
    from tasklens.analysis.stability import split_half
    from tasklens.scoring import get_scorer

    params = resolve_params(config.method, config.params, config.tasks, config.split)
    scorer = get_scorer(config.method, **params)
    rows = []
    for spec in tqdm(config.tasks, desc="stability"):
        task = load_task(spec, config.split, config.max_prompts)
        stability = split_half(
            model, task, scorer, config.select, float(config.value), n_splits=config.stability_splits,
            unit=config.unit, batch_size=config.batch_size,
        )  # fmt: skip
        rows.append(stability.to_dict())
    return pd.DataFrame(rows)
