from __future__ import annotations

import warnings
import weakref

import pytest
import torch

import tasklens.models
from tasklens.data.neurons import NeuronScores, NeuronSet
from tasklens.errors import TasklensError, TasklensWarning
from tasklens.evaluation.evaluate import greedy_generate
from tasklens.interventions import ablate, amplify
from tasklens.tasks import Task
from tasklens.tasks.tokenize import TokenizedTask

PROMPT = "Q: What is the capital of France? A:"


def post(model, layer: int) -> torch.Tensor:
    _, cache = model.run_with_cache(PROMPT, names_filter=f"blocks.{layer}.mlp.hook_post")
    return cache[f"blocks.{layer}.mlp.hook_post"]


def test_zero_ablation_zeroes_exactly_the_set_and_is_removed(organism):
    neurons = NeuronSet.from_pairs([(1, 3), (1, 200), (3, 7)], (4, 512), "s")
    clean = post(organism, 1)
    with ablate(organism, neurons):
        ablated = post(organism, 1)
    assert torch.all(ablated[..., [3, 200]] == 0)
    keep = torch.ones(512, dtype=torch.bool)
    keep[[3, 200]] = False
    torch.testing.assert_close(ablated[..., keep], clean[..., keep], atol=0, rtol=0)
    torch.testing.assert_close(post(organism, 1), clean, atol=0, rtol=0)


def test_hooks_removed_after_an_exception(organism):
    neurons = NeuronSet.from_pairs([(0, 1)], (4, 512))
    tokens = organism.to_tokens(PROMPT)
    clean = organism(tokens)
    with pytest.raises(RuntimeError, match="boom"), ablate(organism, neurons):
        raise RuntimeError("boom")
    torch.testing.assert_close(organism(tokens), clean, atol=0, rtol=0)


def test_nested_interventions_compose(organism):
    a = NeuronSet.from_pairs([(2, 5)], (4, 512))
    clean = post(organism, 2)[..., 5]
    with amplify(organism, a, 2.0), amplify(organism, a, 3.0):
        torch.testing.assert_close(post(organism, 2)[..., 5], 6 * clean)


def test_generation_under_ablation_matches_a_reference_loop(organism):
    # every neuron of layer 0: the organism's outputs change (it is robust to smaller sets)
    neurons = NeuronSet.from_pairs([(0, i) for i in range(512)], (4, 512))
    task = Task.from_lists("t", [PROMPT, "What is 12 plus 30? Answer:", "reverse: a b c ->"], [" x"] * 3)
    prompts = TokenizedTask.for_model(task, organism).prompt_ids
    with ablate(organism, neurons):
        batched = greedy_generate(organism, prompts, max_new_tokens=4)
        reference = []
        for ids in prompts:
            seq = torch.tensor([ids])
            for _ in range(4):
                seq = torch.cat([seq, organism(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
            reference.append(seq[0, len(ids) :].tolist())
    assert batched == reference
    assert batched != greedy_generate(organism, prompts, max_new_tokens=4)


def test_the_bridge_keeps_its_key_value_cache_and_decoding_warns_nothing(organism):
    """On the transformers pip resolves (5.24 passes the cache as ``cache=``) as on earlier
    ones: the prompt's cache is filled, and cached decoding equals rerunning whole sequences."""
    from tasklens.evaluation.evaluate import _generate_without_cache
    from tasklens.models import cached_calls

    task = Task.from_lists("t", [PROMPT, "What is 12 plus 30? Answer:", "reverse: a b c ->"], [" x"] * 3)
    prompts = TokenizedTask.for_model(task, organism).prompt_ids
    tokens = torch.tensor([prompts[0]])
    with cached_calls():
        _, kv = organism(tokens, return_type="logits_and_cache")
    assert kv.get_seq_length() == tokens.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cached = greedy_generate(organism, prompts, max_new_tokens=5)
    assert cached == _generate_without_cache(organism, prompts, 5, batch_size=8)


def test_an_empty_key_value_cache_falls_back_to_exact_reruns(organism, monkeypatch):
    # TransformerLens 4.3 with transformers 5.24 hands back an empty cache; decoding on it
    # would ignore the prompt. Forced here, so the fallback is tested on every version.
    from transformers import DynamicCache

    from tasklens.scoring import IntegratedGradients

    task = Task.from_lists("t", [PROMPT, "What is 12 plus 30? Answer:", "reverse: a b c ->"], [" x"] * 3)
    prompts = TokenizedTask.for_model(task, organism).prompt_ids
    cached = greedy_generate(organism, prompts, max_new_tokens=4)
    facts = Task.from_lists(
        "f", ["Q: What is the capital of Peru? A:", "Element: Iron. Symbol:"], [" Lima", " Fe"]
    )
    ig = IntegratedGradients(steps=4).per_prompt(organism, facts)
    forward = organism.forward

    def empty_cache(*args, **kwargs):
        out = forward(*args, **kwargs)
        return (out[0], DynamicCache()) if kwargs.get("return_type") == "logits_and_cache" else out

    monkeypatch.setattr(organism, "forward", empty_cache)
    monkeypatch.setattr(tasklens.models, "_WARNED_EMPTY_CACHE", weakref.WeakSet())
    with pytest.warns(UserWarning, match="empty key-value cache"):
        assert greedy_generate(organism, prompts, max_new_tokens=4) == cached
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.testing.assert_close(IntegratedGradients(steps=4).per_prompt(organism, facts), ig)
        # one scaled copy per pass (max_tokens below a prompt's length) gives the same integral
        torch.testing.assert_close(IntegratedGradients(steps=4, max_tokens=5).per_prompt(organism, facts), ig)
    assert not [w for w in caught if "key-value cache" in str(w.message)]  # warned once per model


def test_bad_intervention_inputs(organism):
    with pytest.raises(TasklensError, match="another model"):
        with ablate(organism, NeuronSet.from_pairs([(0, 0)], (12, 3072))):
            pass
    with pytest.raises(TasklensError, match="empty"):
        with ablate(organism, NeuronSet(torch.zeros(4, 512, dtype=torch.bool))):
            pass
    with pytest.raises(TasklensError, match="finite"):
        with amplify(organism, NeuronSet.from_pairs([(0, 0)], (4, 512)), float("inf")):
            pass


def test_mean_resample_and_position_ablation(organism):
    neurons = NeuronSet.from_pairs([(1, 3), (1, 200)], (4, 512), "s")
    mean = torch.zeros(4, 512)
    mean[1, 3], mean[1, 200] = 0.5, -0.25
    with ablate(organism, neurons, mode="mean", mean=mean):
        acts = post(organism, 1)
    assert torch.all(acts[..., 3] == 0.5) and torch.all(acts[..., 200] == -0.25)

    source = Task.from_lists("src", ["reverse: a b c ->", "copy: x y ->"], [" c b a", " x y"])
    _, cache = organism.run_with_cache(organism.to_tokens(source.prompts[0] + " c b a"))
    pool = {round(float(v), 5) for v in cache["blocks.1.mlp.hook_post"][0, :, 3]}
    with ablate(organism, neurons, mode="resample", source=source.head(1)):
        acts = post(organism, 1)
    # every position got a value that neuron really took on a token of the source
    assert {round(float(v), 5) for v in acts[0, :, 3]} <= pool

    clean = post(organism, 1)
    with ablate(organism, neurons, positions=[-1]):
        last_only = post(organism, 1)
    assert torch.all(last_only[0, -1, [3, 200]] == 0)
    torch.testing.assert_close(last_only[0, :-1], clean[0, :-1], atol=0, rtol=0)
    with pytest.raises(TasklensError, match="needs source"):
        with ablate(organism, neurons, mode="resample"):
            pass


@pytest.mark.reliability
def test_a_mean_of_another_shape_or_with_nan_is_refused(organism):
    neurons = NeuronSet.from_pairs([(1, 3)], (4, 512), "s")
    nan = torch.zeros(4, 512)
    nan[2, 7] = float("nan")
    for mean, message in [
        (torch.zeros(12, 3072), r"mean for mean ablation has shape \(12, 3072\) but the model's neuron grid"),
        (nan, r"NaN or inf at 1 neurons \(first: layer, neuron \(2, 7\)\)"),
    ]:
        with pytest.raises(TasklensError, match=message):
            with ablate(organism, neurons, mode="mean", mean=mean):
                pass


@pytest.mark.reliability
def test_a_set_found_on_another_model_is_refused_in_memory(organism, tmp_path):
    from tasklens.data.provenance import model_fingerprint
    from tasklens.selection import top_k

    def found_on(fingerprint: str) -> NeuronSet:
        values = torch.arange(4 * 512, dtype=torch.float32).view(4, 512)
        scores = NeuronScores(values, model="organism", task="t", method="m", model_fingerprint=fingerprint)
        return top_k(scores, 3)

    elsewhere = found_on("0123456789abcdef")
    with pytest.raises(TasklensError, match="other weights; recompute it on this model, or to use it anyway"):
        with ablate(organism, elsewhere):
            pass
    with ablate(organism, found_on(model_fingerprint(organism))):  # found on this model
        assert torch.all(post(organism, 3)[..., -3:] == 0)
    with ablate(organism, NeuronSet(elsewhere.mask, elsewhere.name)):  # provenance dropped: the user's call
        assert torch.all(post(organism, 3)[..., -3:] == 0)
    elsewhere.save(tmp_path / "s")
    with pytest.warns(TasklensWarning, match="other weights"):
        allowed = NeuronSet.load(tmp_path / "s", model=organism, allow_other_model=True)
    with ablate(organism, allowed):  # loaded for this model with allow_other_model=True
        assert torch.all(post(organism, 3)[..., -3:] == 0)
