"""The ``>>>`` examples in the public modules' docstrings, run with the standard `doctest` module.

Every public scorer's ``attribute`` and every public selection rule must have one, so the
run cannot pass by having no examples.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import pytest

# packages are walked: their submodules' examples run too
PUBLIC = (
    "tasklens.scoring",
    "tasklens.selection",
    "tasklens.evaluation",
    "tasklens.analysis.stats",
    "tasklens.analysis.matrix",
    "tasklens.analysis.verdict",
    "tasklens.analysis.verdict_table",
    "tasklens.analysis.draws",
    "tasklens.analysis.plots",
    "tasklens.runs.folder",
    "tasklens.analysis.generic",
    "tasklens.interventions",
    "tasklens.models.forward",
    "tasklens.tasks.tokenize",
    "tasklens.tasks.builtin.natural",
    "tasklens.io",
)
SCORERS = (
    "ActivationStats",
    "AveragePrecisionExpertise",
    "GradientAttribution",
    "CGVST",
    "AttributionPatching",
    "IntegratedGradients",
    "VerifiedPatching",
    "ExactAblation",
)
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def module_names() -> list[str]:
    names = []
    for name in PUBLIC:
        names.append(name)
        module = importlib.import_module(name)
        if hasattr(module, "__path__"):
            names += sorted(info.name for info in pkgutil.walk_packages(module.__path__, f"{name}."))
    return names


def examples(obj) -> list[doctest.Example]:
    return doctest.DocTestParser().get_examples(inspect.getdoc(obj) or "")


@pytest.mark.parametrize("name", module_names())
def test_docstring_examples_pass(name):
    module = importlib.import_module(name)
    tests = [t for t in doctest.DocTestFinder().find(module, name) if t.examples]
    if not tests:
        pytest.skip(f"{name} has no docstring examples")
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in tests:
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.attempted == sum(len(t.examples) for t in tests)
    assert result.failed == 0, "".join(report)


def test_every_public_scorer_and_selection_rule_has_an_example():
    import tasklens.scoring
    import tasklens.selection

    registered = {
        cls.__name__
        for cls in (tasklens.scoring.SCORERS.get(n) for n in tasklens.scoring.SCORERS.names())
        if cls.__module__.startswith("tasklens.scoring.")
    }
    assert set(SCORERS) <= registered
    rules = [
        fn
        for name, fn in inspect.getmembers(tasklens.selection, inspect.isfunction)
        if not name.startswith("_") and fn.__module__ == "tasklens.selection"
    ]
    assert {"top_k", "top_percent", "lape", "knowledge_neurons", "shared_by"} <= {f.__name__ for f in rules}
    missing = [
        f"{name}.attribute"
        for name in sorted(registered)
        if not examples(getattr(tasklens.scoring, name).attribute)
    ]
    missing += [f"tasklens.selection.{fn.__name__}" for fn in rules if not examples(fn)]
    assert not missing, f"no >>> example in the docstring of {missing}"


def test_a_wrong_example_fails():
    """The runner used above reports a wrong expected output as a failure."""
    wrong = doctest.DocTestParser().get_doctest(">>> 1 + 1\n3\n", {}, "wrong", None, 0)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    runner.run(wrong, out=lambda text: None)
    assert runner.summarize(verbose=False).failed == 1
