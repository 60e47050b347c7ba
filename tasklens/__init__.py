"""tasklens: find, test and compare the MLP neurons a language model uses for a task.

The main entry points, re-exported here:

- `load_model(spec)`: a TransformerLens bridge (``"organism"``, a local folder, a hub name);
- `Task`, `load_builtin(name, split)`: task data;
- `NeuronScores`, `NeuronSet`: the data model;
- scorers in `tasklens.scoring`, selections in `tasklens.selection`;
- `Intervention` (plain data) and the short forms `ablate`, `amplify`, `clamp`;
- `evaluate`, `accuracy`, `evaluation_matrix` (an `EvaluationResult`): evaluation;
- one registry per kind of plug-in: ``list_scorers()`` / ``register_scorer``, and the
  same for metrics, selections and interventions.
"""

from tasklens._version import __version__
from tasklens.analysis.matrix import EvaluationResult, evaluation_matrices, evaluation_matrix
from tasklens.data.neurons import NeuronScores, NeuronSet
from tasklens.errors import TasklensError, TasklensWarning
from tasklens.evaluation.evaluate import accuracy, evaluate, exact_match, greedy_match
from tasklens.evaluation.metrics import METRICS
from tasklens.interventions import INTERVENTIONS, Intervention, ablate, amplify, clamp
from tasklens.models import ModelInfo, load_model
from tasklens.registry import load_plugins
from tasklens.scoring import SCORERS, get_scorer
from tasklens.selection import SELECTIONS
from tasklens.tasks import Task
from tasklens.tasks.builtin import load_builtin


def list_scorers() -> list[str]:
    """Names of the registered scorers (`tasklens.scoring`)."""
    return SCORERS.names()


def list_metrics() -> list[str]:
    """Names of the registered metrics (`tasklens.evaluation.metrics`; ``greedy_match`` decodes greedily)."""
    return METRICS.names()


def list_selections() -> list[str]:
    """Names of the registered selection rules (`tasklens.selection`)."""
    return SELECTIONS.names()


def list_interventions() -> list[str]:
    """Names of the registered intervention kinds (`tasklens.interventions`)."""
    return INTERVENTIONS.names()


def register_scorer(cls=None, *, name: str | None = None, overwrite: bool = False):
    """Register a scorer class (with a ``name`` class attribute and an ``attribute`` method).

    Use as a decorator: ``@register_scorer`` or ``@register_scorer(name="my_scorer")``.
    """
    return SCORERS.register(name, cls, overwrite=overwrite)


def register_metric(name: str | None = None, fn=None, *, overwrite: bool = False):
    """Register a per-prompt metric ``(logits, batch) -> [batch]`` (decorator or direct call)."""
    return METRICS.register(name, fn, overwrite=overwrite)


def register_selection(name: str | None = None, fn=None, *, overwrite: bool = False):
    """Register a selection rule ``(scores, value) -> NeuronSet`` (decorator or direct call)."""
    return SELECTIONS.register(name, fn, overwrite=overwrite)


def register_intervention(name: str | None = None, fn=None, *, overwrite: bool = False):
    """Register an intervention kind (decorator or direct call): a frozen dataclass subclass of
    `Intervention` owning its parameters, or a function ``(model, intervention) -> edit``
    (see `tasklens.interventions.register`)."""
    from tasklens.interventions import register

    return register(name, fn, overwrite=overwrite)


__all__ = [
    "EvaluationResult",
    "Intervention",
    "ModelInfo",
    "NeuronScores",
    "NeuronSet",
    "Task",
    "TasklensError",
    "TasklensWarning",
    "__version__",
    "ablate",
    "accuracy",
    "amplify",
    "clamp",
    "evaluate",
    "evaluation_matrices",
    "evaluation_matrix",
    "exact_match",
    "get_scorer",
    "greedy_match",
    "list_interventions",
    "list_metrics",
    "list_scorers",
    "list_selections",
    "load_builtin",
    "load_model",
    "load_plugins",
    "register_intervention",
    "register_metric",
    "register_scorer",
    "register_selection",
]
