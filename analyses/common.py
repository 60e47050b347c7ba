"""What the analysis scripts share: tasks in the form that suits the model, filtered to what it knows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tasklens.analysis.locate import locate
from tasklens.analysis.stability import held_out_effect, split_half
from tasklens.data.neurons import NeuronScores, NeuronSet
from tasklens.errors import TasklensError
from tasklens.evaluation.known import default_style, known_by, load_for_model
from tasklens.selection import contrast as contrast_scores
from tasklens.tasks.builtin import builtin_task_info
from tasklens.tasks.builtin.natural import natural_tasks
from tasklens.tasks.task import Task


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
