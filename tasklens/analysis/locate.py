"""Locating task neurons: score every task's neurons with one scorer, then select each task's set."""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, Sequence

import torch
from tqdm.auto import tqdm

from tasklens import distributed
from tasklens.data.neurons import NeuronScores, NeuronSet
from tasklens.errors import TasklensError
from tasklens.models import DEFAULT_UNIT, ModelInfo
from tasklens.scoring import Scorer, get_scorer
from tasklens.selection import contrast as contrast_scores
from tasklens.selection import excluding, select
from tasklens.tasks.task import Task

Tasks = Mapping[str, Task] | Sequence[Task]


def locate(
    model,
    tasks: Tasks,
    scorer: Scorer | str = "gradient_attribution",
    rule: str = "top_percent",
    value: int | float = 1.0,
    *,
    unit: str = DEFAULT_UNIT,
    batch_size: int = 32,
    contrast: bool | Tasks = False,
    scores: MutableMapping[str, NeuronScores] | None = None,
    on_scores: Callable[[str, NeuronScores], None] | None = None,
    progress: bool = False,
    exclude: NeuronSet | None = None,
) -> dict[str, NeuronSet]:
    r"""Each task's neuron set: ``scorer``'s scores on the task's prompts, selected by ``rule``.

    Under torchrun the ranks share each task's prompts (`tasklens.distributed.attribute`).
    The rule and its value are checked on the model's shape before any scoring.

    Args:
        model (TransformerBridge): the model, e.g. from `tasklens.load_model`.
        tasks (Mapping[str, Task] or Sequence[Task]): the tasks, by name (a sequence is
            named by each task's ``name``); every prompt given is scored.
        scorer (Scorer or str, optional): a scorer, or a registered scorer's name (built
            with its defaults). Default: ``"gradient_attribution"``.
        rule (str, optional): a registered selection rule (`tasklens.list_selections`).
            Default: ``"top_percent"``.
        value (int or float, optional): the rule's value (a percent, k, a threshold...). Default: 1.0.
        unit (str, optional): the neuron unit scored. Default: ``"hook_post"``.
        batch_size (int, optional): prompts per forward pass. Default: 32.
        contrast (bool or tasks, optional): select on task-specific scores, each task's
            score minus the mean of the other tasks' (`tasklens.selection.contrast`).
            ``True`` contrasts the tasks with one another; tasks given here are scored
            too and join the mean (a located task among them is scored once), but only
            ``tasks`` get a set. Default: False.
        scores (MutableMapping[str, NeuronScores], optional): scores already computed, by
            task name: a task found here is not scored again. Every task's scores
            (``contrast`` tasks' included, before contrasting) are written into it.
        on_scores (Callable[[str, NeuronScores], None], optional): called with each task's
            name and scores as soon as they are computed (not for those found in
            ``scores``), e.g. to save them so that a killed run can resume.
        progress (bool, optional): show a progress bar. Default: False.
        exclude (NeuronSet, optional): neurons no set may hold, e.g. the generic units of
            `tasklens.analysis.generic.generic_units`: they are ranked last
            (`tasklens.selection.excluding`), so each set keeps its size from the other neurons.

    Returns:
        dict[str, NeuronSet]: one set per task of ``tasks``, in their order, named after it.

    Raises:
        TasklensError: two tasks of one name in a sequence, an unknown scorer or rule, a
            value the rule refuses, or ``contrast`` with fewer than two tasks in all.

    Example:
        >>> import tasklens
        >>> from tasklens.analysis.locate import locate
        >>> model = tasklens.load_model("organism")
        >>> tasks = [tasklens.load_builtin(n, "detection").sample(8) for n in ("continent_of", "addition")]
        >>> sets = locate(model, tasks, "activation_stats", "top_k", 5, contrast=True)
        >>> {name: len(neurons) for name, neurons in sets.items()}
        {'continent_of': 5, 'addition': 5}
    """
    named = _by_name(tasks)
    extra = _by_name(contrast) if not isinstance(contrast, bool) else {}
    everything = {**extra, **named}  # a task both located and contrasted with is scored once
    method = get_scorer(scorer) if isinstance(scorer, str) else scorer
    check_selection(model, rule, value)
    if contrast is not False and len(everything) < 2:
        raise TasklensError("contrast needs at least two tasks in all; give more tasks or contrast=False")
    found = scores if scores is not None else {}
    for name, task in tqdm(everything.items(), desc=f"locating ({method.name})", disable=not progress):
        if name not in found:
            found[name] = distributed.attribute(method, model, task, unit=unit, batch_size=batch_size)
            if on_scores is not None:
                on_scores(name, found[name])
    ranked = {name: found[name] for name in everything}
    if contrast is not False:
        ranked = contrast_scores(ranked)
    if exclude is not None:
        return {
            name: (select(excluding(ranked[name], exclude), rule, value) - exclude).renamed(name)
            for name in named
        }
    return {name: select(ranked[name], rule, value).renamed(name) for name in named}


def check_selection(model, rule: str, value: int | float) -> None:
    """Raise `TasklensError` unless ``rule`` is a registered selection that takes ``value`` on
    ``model``'s neurons (checked on zero scores, so before any scoring)."""
    info = ModelInfo.of(model)
    select(NeuronScores(torch.zeros(info.shape), model=info.name, task="check", method="check"), rule, value)


def _by_name(tasks: Tasks) -> dict[str, Task]:
    if isinstance(tasks, Mapping):
        return dict(tasks)
    named: dict[str, Task] = {}
    for task in tasks:
        if task.name in named:
            raise TasklensError(f"Two tasks are named {task.name!r}; give them as a dict with distinct names")
        named[task.name] = task
    return named
