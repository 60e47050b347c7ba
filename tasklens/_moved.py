"""Old module paths that keep working: ``import tasklens.matrix`` gives `tasklens.analysis.matrix`.

The modules moved into layer packages; user code written against the flat layout still
imports, and gets the very same module object (so monkeypatching and ``isinstance``
behave as before).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys

MOVED = {
    "tasklens.zoo": "tasklens.models.zoo",
    "tasklens.neurons": "tasklens.data.neurons",
    "tasklens.provenance": "tasklens.data.provenance",
    "tasklens.evaluate": "tasklens.evaluation.evaluate",
    "tasklens.metrics": "tasklens.evaluation.metrics",
    "tasklens.tasks.known": "tasklens.evaluation.known",
    "tasklens.matrix": "tasklens.analysis.matrix",
    "tasklens.experiments": "tasklens.analysis.experiments",
    "tasklens.compare": "tasklens.analysis.compare",
    "tasklens.stability": "tasklens.analysis.stability",
    "tasklens.plots": "tasklens.analysis.plots",
    "tasklens.stats": "tasklens.analysis.stats",
    "tasklens.multitask": "tasklens.selection",
    "tasklens.pipeline": "tasklens.runs.pipeline",
    "tasklens.outputs": "tasklens.runs.outputs",
    "tasklens.report": "tasklens.runs.report",
    "tasklens.demo": "tasklens.runs.demo",
}


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module name and loads it as the module that now holds its code."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def __init__(self) -> None:
        self.specs: dict[str, importlib.machinery.ModuleSpec] = {}

    def create_module(self, spec):
        module = importlib.import_module(MOVED[spec.name])
        self.specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module):
        # the import system set the old name's spec on the module: give it back its own
        old = module.__spec__.name
        module.__spec__ = self.specs.pop(old)


def install() -> None:
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(MovedModules())
