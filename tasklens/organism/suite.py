"""Per-task accuracy of a model on the built-in suite (the organism's model card)."""

from __future__ import annotations

from tasklens.evaluation.evaluate import accuracy
from tasklens.tasks.builtin import builtin_task_info, load_builtin

#: evaluation key -> built-in split it is measured on
EVAL_SPLITS = {
    "train_template": "train",
    "heldout_template": "heldout_template",
    "heldout_instance": "heldout_instance",
}


def evaluate_suite(model, names: list[str] | None = None, max_prompts: int = 300, progress=None) -> dict:
    """Greedy exact-match accuracy per built-in task and split.

    Returns:
        ``{task: {"train_template": acc, "heldout_template": acc, "heldout_instance": acc}}``
        with only the keys that task has.
    """
    info = {row["name"]: row for row in builtin_task_info()}
    names = names or sorted(info)
    results: dict[str, dict[str, float]] = {}
    for name in names:
        results[name] = {}
        for key, split in EVAL_SPLITS.items():
            if split not in info[name]["splits"]:
                continue
            task = load_builtin(name, split).sample(max_prompts)
            results[name][key] = round(accuracy(model, task), 4)
            if progress is not None:
                progress(name, key, results[name][key])
    return results
