"""tasklens: find, test and compare the MLP neurons a language model uses for a task.

The main entry points, re-exported here:

- `load_model(spec)`: a TransformerLens bridge (``"organism"``, a local folder, a hub name);
- `Task`, `load_builtin(name, split)`: task data;
- `NeuronScores`, `NeuronSet`: the data model;
- scorers in `tasklens.scoring`, selections in `tasklens.selection`;
- `ablate`, `amplify`: interventions as context managers;
- `accuracy`, `exact_match`, `evaluation_matrix`: evaluation.
"""

__version__ = "0.1.0"

from tasklens.errors import TasklensError
from tasklens.evaluate import accuracy, exact_match
from tasklens.interventions import ablate, amplify
from tasklens.matrix import evaluation_matrix
from tasklens.models import ModelInfo, load_model
from tasklens.neurons import NeuronScores, NeuronSet
from tasklens.tasks import Task
from tasklens.tasks.builtin import load_builtin

__all__ = [
    "ModelInfo",
    "NeuronScores",
    "NeuronSet",
    "Task",
    "TasklensError",
    "ablate",
    "accuracy",
    "amplify",
    "evaluation_matrix",
    "exact_match",
    "load_builtin",
    "load_model",
]
