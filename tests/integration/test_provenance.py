"""Provenance: a set or scores file made on one model is not silently applied to another."""

from __future__ import annotations

import pytest

from tasklens.data.neurons import NeuronScores, NeuronSet
from tasklens.errors import TasklensError, TasklensWarning
from tasklens.scoring import AttributionPatching
from tasklens.selection import top_percent
from tasklens.tasks.builtin import load_builtin

pytestmark = pytest.mark.reliability


def test_a_set_made_on_one_model_is_not_silently_applied_to_another(organism, same_grid_model, tmp_path):
    scores = AttributionPatching().attribute(organism, load_builtin("continent_of", "detection").head(4))
    top_percent(scores, 1.0).save(tmp_path / "s")
    assert len(NeuronSet.load(tmp_path / "s", model=organism)) == 20
    with pytest.raises(TasklensError, match="other weights"):
        NeuronSet.load(tmp_path / "s", model=same_grid_model)
    with pytest.warns(TasklensWarning, match="other weights"):
        NeuronSet.load(tmp_path / "s", model=same_grid_model, allow_other_model=True)
    scores.save(tmp_path / "scores")
    with pytest.raises(TasklensError, match="other weights"):
        NeuronScores.load(tmp_path / "scores", model=same_grid_model)
