"""Neuron-level fine-tuning (Leng & Xiong, COLING 2025): train only a task's neurons.

- `finetune(model, task, neurons, config)`: train a `NeuronSet`'s parameters (each
  neuron's rows of the input/gate/up projections and column of the output
  projection) or ``"full"`` (every parameter), merge the result into the model and
  return a `FinetuneRun` (``restore()``, or use it as a context manager);
  checkpoints resume bit for bit.
- `single_task_runs`, `fine_tuning_table`, `transfer_pairs`, `transfer_correlations`:
  task neurons vs random neurons vs zero-shot, and real transfer between tasks.
- `continual_learning`: SeqFT, NCFT and W-NCFT over a task sequence, with the
  accuracy matrix a[i, j], CL and FG.
- `ControlledContinual`: NCFT and W-NCFT on the task neurons against random neurons of the same
  per-layer counts, SeqFT and each task alone, over seeds, each at the learning rate one search
  picked; `Outcomes`: average accuracy, forgetting and forward transfer with intervals over seeds
  and prompts; `tasklens.finetune.verdict`: the tests and a page's verdicts.
- `load_finetune_task`: tasks the organism never saw (a low start), and built-in ones.
"""

from tasklens.finetune.config import FinetuneConfig
from tasklens.finetune.continual import (
    METHODS,
    ContinualResult,
    SequenceValues,
    continual_learning,
    run_sequence,
    summary_table,
)
from tasklens.finetune.controls import ControlledContinual, LearningRates, held_out, random_sets
from tasklens.finetune.deltas import NeuronDeltas
from tasklens.finetune.evaluation import accuracies, mixed_accuracy, mixed_values, prompt_values
from tasklens.finetune.full import FullParameters, preserved
from tasklens.finetune.locate import task_neurons
from tasklens.finetune.outcomes import OUTCOMES, Outcomes, sequence_outcomes
from tasklens.finetune.routing import TaskRouter
from tasklens.finetune.tasks import load_finetune_task, new_task_names
from tasklens.finetune.trainer import FULL, FinetuneRun, finetune
from tasklens.finetune.transfer import (
    SCOPES,
    SingleTaskRuns,
    fine_tuning_table,
    single_task_runs,
    transfer_correlations,
    transfer_pairs,
)

__all__ = [
    "FULL",
    "METHODS",
    "OUTCOMES",
    "SCOPES",
    "ContinualResult",
    "ControlledContinual",
    "FinetuneConfig",
    "FinetuneRun",
    "FullParameters",
    "LearningRates",
    "NeuronDeltas",
    "Outcomes",
    "SequenceValues",
    "SingleTaskRuns",
    "TaskRouter",
    "accuracies",
    "continual_learning",
    "fine_tuning_table",
    "finetune",
    "held_out",
    "load_finetune_task",
    "mixed_accuracy",
    "mixed_values",
    "new_task_names",
    "preserved",
    "prompt_values",
    "random_sets",
    "run_sequence",
    "sequence_outcomes",
    "single_task_runs",
    "summary_table",
    "task_neurons",
    "transfer_correlations",
    "transfer_pairs",
]
