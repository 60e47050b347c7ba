"""Conformance over model families of what the random-set engine computes its own way: bfloat16
products (`tasklens.models.precision`) and several random sets in one forward pass
(`tasklens.interventions.rows`), against the plain Hugging Face model in float32
(`tests/families.py`) with the same neurons zeroed by forward pre-hooks on its down projections.

Per prompt, the answer's log-probability under bfloat16 must lie within
`tasklens.models.precision.TOLERANCE` of float32's; in float32, the engine's copies must equal the
plain model to float rounding.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from families import FAMILIES, Plain, answer_logprob, record, sequence_ids

from tasklens.data.neurons import NeuronSet
from tasklens.errors import TasklensWarning
from tasklens.evaluation.evaluate import evaluate_copies
from tasklens.interventions import Zero
from tasklens.interventions.rows import apply_by_rows
from tasklens.models import load_model
from tasklens.models.precision import TOLERANCE, reduced_precision
from tasklens.tasks import Task

ONE_THREAD = True
PROMPTS = ["Q: What is the capital of Peru? A:", "reverse: a b c ->", "Element: Iron. Symbol:"]
ANSWERS = [" Lima", " c b a", " Fe"]


def _sets(n_layers: int, d_mlp: int) -> list[NeuronSet]:
    """Two sets of every layer's neurons (different ones), as two random sets of one set."""
    shape = (n_layers, d_mlp)
    return [
        NeuronSet.from_pairs([(layer, n) for layer in range(n_layers) for n in range(start, d_mlp, 5)], shape)
        for start in (0, 2)
    ]


def _plain(plain: Plain, ids, neurons: NeuronSet) -> torch.Tensor:
    """Per prompt: the plain float32 model's answer log-probability with ``neurons`` zeroed."""

    def zero(index):
        def hook(act):
            act = act.clone()
            act[..., index] = 0.0
            return act

        return hook

    hooks = {layer: zero(neurons.mask[layer].nonzero().flatten()) for layer in range(neurons.shape[0])}
    with torch.no_grad():
        return torch.stack([answer_logprob(plain.logits(full, hooks), len(p), full) for p, full in ids])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_random_sets_in_one_pass_and_in_bfloat16_against_the_plain_model(family_folder, family):
    folder = family_folder(family)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TasklensWarning)
        model = load_model(str(folder))
    plain = Plain.load(folder, family)
    task = Task.from_lists("t", PROMPTS, ANSWERS)
    ids = sequence_ids(task, model)
    sets = _sets(model.cfg.n_layers, model.cfg.d_mlp)
    reference = torch.stack([_plain(plain, ids, s) for s in sets])  # [set, prompt]
    clean = _plain(plain, ids, NeuronSet(torch.zeros_like(sets[0].mask)))
    assert float((reference - clean).abs().max()) > 1e-3  # the sets move the answers
    with apply_by_rows(model, [Zero(s) for s in sets]):
        full = evaluate_copies(model, task, ["logprob"], len(sets), batch_size=2)[..., 0]
        with reduced_precision(model, "bfloat16"):
            reduced = evaluate_copies(model, task, ["logprob"], len(sets), batch_size=2)[..., 0]
    torch.testing.assert_close(full, reference, rtol=0, atol=1e-5)
    gap = float((reduced - reference).abs().max())
    assert 0 < gap <= TOLERANCE["logprob"], gap
    record(family, "bfloat16_random_sets", gap)
