"""TransformerLens 3: every public function takes a classic HookedTransformer the user built,
and gives the same results as on the TransformerBridge of the same weights; SAELens beside it."""

from __future__ import annotations

import pytest
import torch

from tasklens import ablate, accuracy, clamp, evaluation_matrix, load_builtin
from tasklens.data.neurons import NeuronSet
from tasklens.models import ModelInfo
from tasklens.scoring import (
    CGVST,
    ActivationStats,
    AttributionPatching,
    AveragePrecisionExpertise,
    ExactAblation,
    GradientAttribution,
    IntegratedGradients,
    VerifiedPatching,
)
from tasklens.views.contexts import top_contexts
from tasklens.views.vocab import decode_neurons

GRID = (4, 512)


@pytest.fixture(scope="module")
def capitals():
    return load_builtin("capital_of", "detection").head(4)


def test_the_model_is_used_as_it_is(hooked_organism):
    info = ModelInfo.of(hooked_organism)
    assert not info.bridge and info.shape == GRID
    assert info.mlp_input_name(1) == "blocks.1.ln2.hook_normalized"


@pytest.mark.parametrize(
    "scorer",
    [
        ActivationStats(),
        GradientAttribution(),
        AttributionPatching(),
        AttributionPatching(baseline="corrupted"),
        ExactAblation(),
        VerifiedPatching(candidate_percent=2.0),
        IntegratedGradients(steps=4),
    ],
    ids=lambda s: s.name,
)
def test_scorers_agree_with_the_bridge(organism, hooked_organism, capitals, scorer):
    ours = scorer.attribute(hooked_organism, capitals).values
    bridge = scorer.attribute(organism, capitals).values
    torch.testing.assert_close(ours, bridge, rtol=2e-3, atol=2e-4)


def test_cgvst_and_average_precision(organism, hooked_organism):
    marked = load_builtin("currency_of", "heldout_template").head(3)
    torch.testing.assert_close(
        CGVST().attribute(hooked_organism, marked).values,
        CGVST().attribute(organism, marked).values,
        rtol=2e-3,
        atol=1e-5,
    )
    negatives = [load_builtin("element_symbol", "detection").head(12)]
    scorer = AveragePrecisionExpertise(negatives=negatives)
    task = load_builtin("capital_of", "detection").head(3)
    torch.testing.assert_close(
        scorer.attribute(hooked_organism, task).values, scorer.attribute(organism, task).values
    )


def test_generation_interventions_and_evaluation(organism, hooked_organism):
    task = load_builtin("continent_of", "evaluation").head(24)
    assert accuracy(hooked_organism, task) == accuracy(organism, task) > 0.9
    neurons = NeuronSet.from_pairs([(0, i) for i in range(512)], GRID, "layer0")
    with ablate(hooked_organism, neurons):
        off = accuracy(hooked_organism, task)
    with ablate(organism, neurons):
        assert off == accuracy(organism, task) < 0.5
    result = evaluation_matrix(hooked_organism, [neurons], [task], n_controls=1, metric="logprob")
    reference = evaluation_matrix(organism, [neurons], [task], n_controls=1, metric="logprob")
    torch.testing.assert_close(
        torch.tensor(result.values.to_numpy()),
        torch.tensor(reference.values.to_numpy()),
        rtol=1e-3,
        atol=1e-3,
    )
    with clamp(hooked_organism, NeuronSet.from_pairs([(3, 5)], GRID), 3.0):
        _, cache = hooked_organism.run_with_cache(
            "Q: What is 2 + 2? A:", names_filter="blocks.3.mlp.hook_post"
        )
    assert torch.all(cache["blocks.3.mlp.hook_post"][..., 5] == 3.0)


def test_views(organism, hooked_organism):
    a, b = decode_neurons(hooked_organism, "output", k=5), decode_neurons(organism, "output", k=5)
    assert torch.equal(a.top_ids, b.top_ids)
    task = load_builtin("addition", "detection").head(8)
    chosen = NeuronSet.from_pairs([(1, 3), (2, 4)], GRID)
    torch.testing.assert_close(
        top_contexts(hooked_organism, task, chosen, k=3).values,
        top_contexts(organism, task, chosen, k=3).values,
        rtol=1e-4,
        atol=1e-4,
    )


def test_beside_saelens(hooked_organism):
    """A HookedSAETransformer with an SAE spliced in (random weights): tasklens scores and
    ablates neurons on it with the SAE's hooks present, and the SAE changes the results."""
    sae_lens = pytest.importorskip("sae_lens")
    from conftest import hooked_transformer

    from tasklens.models import ORGANISM_DIR

    model = hooked_transformer(ORGANISM_DIR, sae_lens.HookedSAETransformer)
    config = sae_lens.StandardSAEConfig(d_in=128, d_sae=256)
    config.metadata.hook_name = "blocks.1.hook_resid_post"
    torch.manual_seed(0)
    sae = sae_lens.StandardSAE(config)
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.normal_(0, 0.05)
    task = load_builtin("continent_of", "detection").head(8)
    clean = GradientAttribution().attribute(model, task).values
    model.add_sae(sae)
    assert "blocks.1.hook_resid_post.hook_sae_acts_post" in model.hook_dict
    spliced = GradientAttribution().attribute(model, task)
    assert spliced.shape == GRID and torch.isfinite(spliced.values).all()
    assert not torch.allclose(spliced.values[0], clean[0])  # layer 0 feeds the SAE: its gradients change
    neurons = NeuronSet.from_pairs([(2, i) for i in range(256)], GRID)
    with ablate(model, neurons):
        _, cache = model.run_with_cache(
            "Country: Chad. Continent:", names_filter=lambda n: "mlp.hook_post" in n or "sae" in n
        )
    assert torch.all(cache["blocks.2.mlp.hook_post"][..., :256] == 0)
    assert "blocks.1.hook_resid_post.hook_sae_acts_post" in cache
