"""An intervention as plain data: what it names, how it round-trips through JSON."""

from __future__ import annotations

import json

import pytest

from tasklens.data.neurons import NeuronSet
from tasklens.errors import TasklensError
from tasklens.interventions import Intervention

pytestmark = pytest.mark.reliability

GRID = (4, 512)


def test_an_intervention_is_plain_data_and_round_trips():
    neurons = NeuronSet.from_pairs([(0, 1), (3, 4)], GRID, "s")
    spec = Intervention("clamp", neurons, positions=(-1,), value=5.0)
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["neurons"]["size"] == 2 and data["value"] == 5.0 and data["positions"] == [-1]
    again = Intervention.from_dict(data, neurons)
    assert again.to_dict() == spec.to_dict() and again.label == "clamp = 5"
    with pytest.raises(TasklensError, match="Unknown intervention"):
        Intervention("ablate-ish", neurons)
