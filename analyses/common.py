"""What the analysis scripts share: their arguments checked before any work (bad input ends a
script with one line and exit code 2, as in the CLI), and tasks in the form that suits the model,
filtered to what it knows."""

from __future__ import annotations

import argparse
import math
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tasklens.analysis.locate import locate
from tasklens.analysis.stability import held_out_effect, split_half
from tasklens.cli import PATH_ERRORS, error_line
from tasklens.data.neurons import NeuronScores, NeuronSet
from tasklens.errors import TasklensError
from tasklens.evaluation.known import default_style, known_by, load_for_model
from tasklens.io import check_own_folder, hold_folder, release_all
from tasklens.selection import contrast as contrast_scores
from tasklens.tasks.builtin import builtin_task_info, builtin_task_names
from tasklens.tasks.builtin.natural import natural_tasks
from tasklens.tasks.task import Task

#: the smallest value of each whole-number option of the scripts (by argparse name)
AT_LEAST = {
    "batch_size": 1, "detection_prompts": 1, "eval_prompts": 1, "test_prompts": 1, "steps": 1,
    "asked": 1, "max_relations": 2, "min_known": 1, "controls": 2, "settled": 1, "cumulativity_controls": 0,
    "interference_prompts": 0, "other_prompts": 1, "stability_splits": 0, "shots": 0, "n_demo": 1,
    "min_language_known": 0, "stability_sizes": 2,
}  # fmt: skip
#: options that are a share of the neurons, in percent
PERCENTS = ("percent", "percents", "base_percent")
#: options that must be a positive number
POSITIVE = ("lr_neurons", "lr_full", "factors", "generic_ratio")
#: options naming built-in tasks
TASK_OPTIONS = ("tasks", "relations", "stability_task")
WHAT = "the results of this analysis"


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit code 2, as the CLI's are."""

    def error(self, message: str) -> typing.NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def run_main(main: Callable[[], None]) -> None:
    """Run a script's ``main``: bad input (a `TasklensError`, an operating-system error about a
    path) ends it with one line on stderr and exit code 2, never a traceback."""
    try:
        main()
    except (TasklensError, *PATH_ERRORS) as error:
        print(error_line(error), file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        release_all()  # the run's --out lock; an --out it created and left empty goes with it


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _values(value) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


def check_args(
    args: argparse.Namespace, at_least: dict[str, int] | None = None, tasks: str = "builtin", out: bool = True
) -> None:
    """Check every option a script shares before any work: whole numbers against `AT_LEAST`
    (``at_least`` overrides), percentages in (0, 100], metrics registered, task names known
    (``tasks="finetune"``: fine-tuning tasks or task files) and ``--out`` a folder tasklens may
    write (`tasklens.io.check_own_folder`: missing, empty, or holding only tasklens's files).

    Raises:
        TasklensError: naming the option, the value and the fix.
    """
    values = vars(args)
    for name, least in {**AT_LEAST, **(at_least or {})}.items():
        for value in _values(values.get(name)):
            if value is not None and value < least:
                raise TasklensError(f"{_flag(name)} must be at least {least}, got {value}")
    for name in PERCENTS:
        for value in _values(values.get(name)):
            if value is not None and not 0 < value <= 100:
                raise TasklensError(
                    f"{_flag(name)} is a share of the neurons, in percent: give a number in (0, 100], "
                    f"got {value:g}"
                )
    for name in POSITIVE:
        for value in _values(values.get(name)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise TasklensError(f"{_flag(name)} must be a positive number, got {value:g}")
    for name in ("metric", "metrics", "tasks", "relations", "percents", "methods", "factors"):
        if values.get(name) == []:
            raise TasklensError(
                f"{_flag(name)} was given without a value; name at least one, or leave it out"
            )
    if "metric" in values or "metrics" in values:
        import tasklens.evaluation.evaluate  # noqa: F401 (registers greedy_match)
        from tasklens.evaluation.metrics import METRICS

        for metric in _values(values.get("metric")) + _values(values.get("metrics")):
            if metric is not None:
                METRICS.get(metric)
    for name in TASK_OPTIONS:
        for task in _values(values.get(name)):
            if task is not None:
                check_task_name(task, tasks, _flag(name))
    if out and values.get("out") is not None:
        lock_out(values["out"])


def lock_out(path, what: str = WHAT) -> Path:
    """``path`` checked as a folder tasklens may write (`tasklens.io.check_own_folder`), then held
    by this run until it ends (`tasklens.io.hold_folder`: a second run on it stops at once, naming
    the first), the leftovers of killed runs in it removed."""
    check_own_folder(path, what)
    hold_folder(path, what)
    return check_own_folder(path, what)


def check_task_name(name: str, kind: str = "builtin", flag: str = "--tasks") -> None:
    """A `TasklensError` unless ``name`` is a built-in task (``kind="finetune"``: a fine-tuning
    task or a task file)."""
    if kind == "finetune":
        from tasklens.finetune import new_task_names
        from tasklens.tasks.task import is_task_file

        known = [*new_task_names(), *builtin_task_names()]
        if name not in known and not is_task_file(name):
            raise TasklensError(
                f"{flag}: unknown task {name!r}; choose one of {', '.join(known)}, or a JSONL/JSON/CSV file"
            )
        return
    known = list(dict.fromkeys([*builtin_task_names(), *natural_tasks()]))
    if name not in known:
        raise TasklensError(f"{flag}: unknown task {name!r}; choose one of {', '.join(known)}")


#: every kind of task
KINDS = ("relation", "algorithmic", "classification", "translation")


def check_model_tasks(
    model, names: list[str] | None, kinds: tuple[str, ...] = KINDS, style: str | None = None
) -> None:
    """A `TasklensError` if a task the user named is not asked of this model in its form (of
    these ``kinds``, in any language)."""
    if (style or default_style(model)) == "organism":
        available = [r["name"] for r in builtin_task_info() if r["kind"] in kinds]
    else:
        available = [n for n, t in natural_tasks().items() if t.kind in kinds]
    missing = [n for n in names or () if n not in available]
    if missing:
        raise TasklensError(
            f"{model.cfg.model_name} is not asked {', '.join(missing)} in its form; choose among "
            f"{', '.join(available)}"
        )


def task_names(model, kinds: tuple[str, ...], style: str | None = None, language: str = "en") -> list[str]:
    """The built-in tasks of these kinds that exist in the style the model is asked in."""
    if (style or default_style(model)) == "organism":
        return [r["name"] for r in builtin_task_info() if r["kind"] in kinds and r["language"] == language]
    return [n for n, t in natural_tasks().items() if t.kind in kinds and t.language == language]


@dataclass
class Prepared:
    """Detection and evaluation prompts per task, and how many facts the model knows."""

    detection: dict[str, Task] = field(default_factory=dict)
    evaluation: dict[str, Task] = field(default_factory=dict)
    counts: pd.DataFrame = field(default_factory=pd.DataFrame)

    def keep(self, names: list[str]) -> Prepared:
        return Prepared(
            {n: self.detection[n] for n in names},
            {n: self.evaluation[n] for n in names},
            self.counts[self.counts.task.isin(names)].reset_index(drop=True),
        )


def _same(task: Task) -> Task:
    return task


def _known_or_empty(model, task: Task, need: int) -> Task | None:
    try:
        return known_by(model, task, need=need)
    except TasklensError:  # the model knows none of them
        return None


def prepare(
    model,
    names: list[str],
    detection_prompts: int,
    eval_prompts: int,
    *,
    shots: int = 1,
    style: str | None = None,
    known_eval: bool = True,
    asked: int = 300,
    min_known: int = 1,
    transform: Callable[[Task], Task] | None = None,
) -> Prepared:
    """Detection prompts the model knows, and evaluation prompts (known ones when ``known_eval``).

    Each split is asked in a random order until enough known prompts are found
    (``detection_prompts``, ``eval_prompts``) or ``asked`` prompts were asked, so a
    well-known task costs few questions and the counts table reports the share known
    among those asked (the relation paper detects on known facts only). With
    ``known_eval=False`` the evaluation split is not asked at all: it is all prompts, so
    "original" accuracy is the model's real one. Tasks with fewer than ``min_known`` known
    prompts in a split that needs them are left out (the counts table still lists them).
    ``transform`` is applied to each split before it is asked.
    """
    if detection_prompts < 1 or eval_prompts < 1:
        raise SystemExit(
            "--detection-prompts and --eval-prompts must be at least 1 "
            f"(got {detection_prompts}, {eval_prompts})"
        )
    out = Prepared()
    rows = []
    for name in names:
        split_tasks = {
            split: (transform or _same)(
                load_for_model(model, name, split, known=False, style=style, shots=shots)
            )
            for split in ("detection", "evaluation")
        }
        need = {"detection": detection_prompts, "evaluation": eval_prompts if known_eval else 0}
        known = {
            split: _known_or_empty(model, task.sample(asked), need[split])
            for split, task in split_tasks.items()
            if need[split]
        }
        n_known = {split: len(t) if t is not None else 0 for split, t in known.items()}
        n_asked = {
            split: t.meta["n_asked"] if t is not None else min(asked, len(split_tasks[split]))
            for split, t in known.items()
        }
        rows.append(
            dict(
                task=name,
                asked_detection=n_asked["detection"],
                known_detection=n_known["detection"],
                asked_evaluation=n_asked.get("evaluation", float("nan")),  # not asked: all prompts used
                known_evaluation=n_known.get("evaluation", float("nan")),
                known_total=sum(n_known.values()),
                share_known=sum(n_known.values()) / max(sum(n_asked.values()), 1),
            )
        )
        if min(n_known.values()) < min_known:
            continue
        out.detection[name] = known["detection"]
        evaluation = known["evaluation"] if known_eval else split_tasks["evaluation"]
        out.evaluation[name] = evaluation.sample(eval_prompts, seed=3)
    out.counts = pd.DataFrame(rows)
    return out


def locate_saved(
    model,
    detection: dict[str, Task],
    scorer,
    rule: str,
    value: float,
    folder: Path,
    *,
    contrast: bool = False,
    **options,
) -> tuple[list[NeuronSet], dict[str, NeuronScores]]:
    """Each task's set (`tasklens.analysis.locate.locate` on its detection prompts, ``options``
    passed on), and the scores it was selected on (contrasted ones with ``contrast``), each
    saved in ``folder`` under the task's name."""
    scores: dict[str, NeuronScores] = {}
    sets = locate(model, detection, scorer, rule, value, contrast=contrast, scores=scores, **options)
    ranked = contrast_scores(scores) if contrast else scores
    for name, task_scores in ranked.items():
        task_scores.save(folder / name)
    return list(sets.values()), ranked


def describe_counts(counts: pd.DataFrame, model_name: str) -> str:
    return (
        f"{model_name} knows: "
        + ", ".join(
            f"{r.task} {r.known_total}/{r.asked_detection + np.nan_to_num(r.asked_evaluation):.0f}"
            for r in counts.itertuples()
        )
        + " (known/asked; asking stops once a split has enough known prompts)"
    )


def own_effect_table(result) -> pd.DataFrame:
    """Per set named after a task: the task's score unmodified, with random sets of the same
    per-layer counts off (mean, std), with the set off; and the other tasks' mean score
    unmodified and with the set off (is the set specific to its task?)."""
    own = result.own_and_others()
    others_original = [result.baseline.drop(name).mean() for name in own.index]
    return pd.DataFrame(
        dict(
            task=own.index,
            original=own.baseline.to_numpy(),
            random_off=(own.baseline + own.control_own_change).to_numpy(),
            random_std=own.control_own_std.to_numpy(),
            set_off=own.value.to_numpy(),
            others_original=others_original,
            others_off=[o + c for o, c in zip(others_original, own.others_change, strict=True)],
        )
    )


def held_out_effects(model, sets, data: Prepared, out, n_controls: int) -> pd.DataFrame:
    """Each set's log-prob change on the prompts it was found on vs its task's held-out
    prompts (as many of each; random sets of the same per-layer counts beside each), as a
    table and a finding."""
    frames = []
    for s in sets:
        found_on, held_out = data.detection[s.name], data.evaluation[s.name]
        n = min(len(found_on), len(held_out))
        frames.append(
            held_out_effect(
                model,
                s,
                found_on.sample(n, seed=5),
                held_out.sample(n, seed=5),
                "logprob",
                n_controls=n_controls,
            )
        )
    effects = pd.concat(frames, ignore_index=True)
    out.table("held_out_effect", effects, index=False)
    pivot = effects.pivot(index="set", columns="sample", values="change")
    out.finding(
        "log-prob change with each set off, on the prompts it was found on vs held-out prompts: "
        + ", ".join(
            f"{s.name} {pivot.loc[s.name, 'found_on']:.2f} vs {pivot.loc[s.name, 'held_out']:.2f}"
            for s in sets
        )
    )
    return effects


def set_stability(
    model,
    detection: dict[str, Task],
    scorer_for: Callable[[str], object],
    rule: str,
    value: float,
    n_neurons: int,
    out,
    n_splits: int,
    unit: str | None = None,
) -> pd.DataFrame:
    """Split-half stability of every task's set: Jaccard of the sets ``scorer_for(task)`` and
    ``rule`` find on two disjoint halves of its detection prompts, over ``n_splits`` random
    splits, as ``stability.csv`` and one finding (beside two random sets of the same size)."""
    if n_splits < 1:
        out.finding("split-half stability: off (--stability-splits 0)")
        return pd.DataFrame()
    rows = []
    for name, task in detection.items():
        kwargs = {} if unit is None else {"unit": unit}
        rows.append(
            split_half(model, task, scorer_for(name), rule, value, n_splits=n_splits, **kwargs).to_dict()
        )
    table = out.table("stability", pd.DataFrame(rows), index=False)
    size = table["sizes"].map(lambda s: sum(s) / len(s)).mean()
    out.finding(
        f"split-half stability of each set ({table.method.iloc[0]}, {rule} {value:g}, "
        f"mean Jaccard [interval] over {n_splits} splits of the detection prompts): "
        + ", ".join(
            f"{r.task} {r.mean:.2f} [{r.low:.2f}, {r.high:.2f}] ({r.n_prompts}+{r.n_prompts} prompts)"
            for r in table.itertuples()
        )
        + f"; two random sets of that size: {size / (2 * n_neurons - size):.3f}"
    )
    return table


#: the two selections every set is made by (disjoint halves of the detection prompts)
HALVES = ("half 1", "half 2")


def halves(detection: dict[str, Task], seed: int = 0) -> dict[str, dict[str, Task]]:
    """Each task's detection prompts split at random into two disjoint halves, by `HALVES` name:
    two independent selections, neither touching the evaluation prompts."""
    out: dict[str, dict[str, Task]] = {h: {} for h in HALVES}
    for name, task in detection.items():
        order = np.random.default_rng(seed).permutation(len(task)).tolist()
        for part, half in enumerate(HALVES):
            out[half][name] = task.subset(sorted(order[part::2]), split=f"{task.split}, {half}")
    return out


def stable(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``table`` (verdicts after the page's error control, a ``half`` column naming the selection)
    with ``stable``: for rows whose set was selected on both halves, whether both selections pass
    (``"yes"`` / ``"no"``); empty where only one selection was tested. Stable across selections is
    not a replication: both halves' sets are tested on the same evaluation prompts, floors and
    random-set seeds, and they overlap."""
    what = table.get("what", pd.Series("specific", table.index)).fillna("specific")
    levels = table["level"] if "level" in table else table["verdict"].str.split(":").str[0]
    passed = (levels == what).rename("ok")
    groups = table[keys].astype(str).agg(" | ".join, axis=1)
    both = (
        table.assign(_group=groups, _ok=passed)
        .groupby("_group")
        .agg(n=("half", "nunique"), ok=("_ok", "all"))
    )
    status = groups.map(lambda g: ("yes" if both.loc[g, "ok"] else "no") if both.loc[g, "n"] == 2 else "")
    return table.assign(stable=status.to_numpy())
