"""The conformance oracles on the downloadable models (``tests/families.py``): exact ablation of
inner and last-layer neurons against an own loop on the plain Hugging Face model, and output
decoding against each neuron's write through the model's own norms.

SmolLM2-135M (Llama), Gemma-3-270M (post-MLP norm, 262k vocabulary) and Qwen2.5-Coder-0.5B
(biases). The 1.5B is left out: its float32 copy needs about 14 GB beside the test suite.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from families import Plain, answer_logprob, frozen_jvp, sequence_ids

from tasklens.data.neurons import NeuronSet
from tasklens.errors import TasklensWarning
from tasklens.evaluation.known import load_for_model
from tasklens.models import load_model, zoo
from tasklens.scoring import ExactAblation
from tasklens.views.vocab import decode_neurons

pytestmark = pytest.mark.network

MODELS = ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b")


@pytest.fixture(scope="module", params=MODELS)
def pair(request):
    name = request.param
    if not zoo.is_downloaded(name):
        zoo.download(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TasklensWarning)
        model = load_model(name)
    plain = Plain.load(zoo.local_folder(name), model.original_model.config.model_type)
    return name, model, plain


def test_exact_ablation_of_inner_and_last_layer_neurons_equals_an_own_loop(pair):
    name, model, plain = pair
    task = load_for_model(model, "continent_of", "detection", known=False).head(4)
    last = model.cfg.n_layers - 1
    generator = torch.Generator().manual_seed(0)
    neurons = torch.randperm(model.cfg.d_mlp, generator=generator)[:6].tolist()
    tested = NeuronSet.from_pairs(
        [(layer, n) for layer in (last // 2, last) for n in neurons], (model.cfg.n_layers, model.cfg.d_mlp)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", TasklensWarning)
        scores = ExactAblation(only=tested).attribute(model, task, batch_size=4)
    assert model.__dict__["_tasklens_shortcuts"]["analytic_last_layer"] is True
    ids = sequence_ids(task, model)
    with torch.no_grad():
        clean = sum(float(answer_logprob(plain.logits(full), len(p), full)) for p, full in ids)
        for layer, neuron in tested.pairs():

            def zero(act, neuron=neuron):
                act = act.clone()
                act[..., neuron] = 0.0
                return act

            ablated = sum(
                float(answer_logprob(plain.logits(full, {layer: zero}), len(p), full)) for p, full in ids
            )
            assert float(scores.values[layer, neuron]) == pytest.approx(clean - ablated, abs=1e-4), (
                name,
                layer,
                neuron,
            )


def test_output_decoding_follows_each_write_through_the_models_own_norms(pair):
    """100 neurons in each of three layers: the same top 10 tokens (up to float32 ties) as the
    write measured through the post-MLP norm (Gemma) and the final norm, each with its scale held."""
    name, model, plain = pair
    n_layers = model.cfg.n_layers
    layers = (n_layers // 4, n_layers // 2, n_layers - 1)
    neurons = torch.arange(0, model.cfg.d_mlp, model.cfg.d_mlp // 100)[:100]
    chosen = NeuronSet.from_pairs(
        [(layer, int(n)) for layer in layers for n in neurons], (n_layers, model.cfg.d_mlp)
    )
    vocab = decode_neurons(model, k=10, neurons=chosen)
    captured = {}

    def keep(key):
        def hook(module, args):
            captured[key] = args[0][0, -1].detach().double()

        return hook

    handles = [plain.final_norm.register_forward_pre_hook(keep("final"))]
    for layer in layers:
        norm = plain.post_mlp_norm(layer)
        if norm is not None:
            handles.append(norm.register_forward_pre_hook(keep(layer)))
    ids = model.tokenizer("The capital of France is")["input_ids"]
    with torch.no_grad():
        plain.logits(ids)
    for handle in handles:
        handle.remove()
    head = plain.model.get_output_embeddings().weight.detach()
    final = plain.final_norm.double()
    for layer in layers:
        post = plain.post_mlp_norm(layer)
        writes = plain.w_out(layer)[neurons].double()
        if post is not None:
            post = post.double()
            writes = torch.stack([frozen_jvp(post, captured[layer], w) for w in writes])
        changes = torch.stack([frozen_jvp(final, captured["final"], w) for w in writes])
        logits = changes @ head.double().T  # [neurons, vocab]
        tenth = logits.topk(10).values[:, -1]
        spread = logits.amax(-1) - logits.amin(-1)
        for row, neuron in enumerate(neurons.tolist()):
            # the same ten tokens, up to float32 ties: each scores at least the oracle's tenth best
            chosen = logits[row, vocab.top_ids[layer, neuron]]
            assert float(chosen.min()) >= float(tenth[row] - 1e-5 * spread[row]), (name, layer, neuron)
