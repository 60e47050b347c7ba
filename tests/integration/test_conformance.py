"""Conformance over model families: every scorer and the output decoding of tasklens against an
independent implementation on the plain Hugging Face model (`tests/families.py`).

Exact ablation at every layer (the last one by tasklens's analytic shortcut), attribution
patching and |a * g| against own autograd, output decoding against the logit change a neuron's
write makes through the model's own norms. The sibling file checks the other scorers and views;
``test_conformance_table.py`` compares what both found with ``docs/conformance.md``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from families import FAMILIES, Plain, answer_logprob, frozen_jvp, record, sequence_ids

from tasklens.data.neurons import NeuronSet
from tasklens.errors import TasklensError, TasklensWarning
from tasklens.models import load_model
from tasklens.models.shortcuts import VERIFIED_FAMILIES
from tasklens.scoring import AttributionPatching, ExactAblation, GradientAttribution
from tasklens.tasks import Task
from tasklens.views.vocab import decode_neurons

PROMPTS = ["Q: What is the capital of Peru? A:", "reverse: a b c ->", "Element: Iron. Symbol:"]
ANSWERS = [" Lima", " c b a", " Fe"]
ONE_THREAD = True
#: neurons tested per layer (every layer: first, inner, last)
PER_LAYER = 2


def _pair(family_folder, family: str):
    folder = family_folder(family)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TasklensWarning)  # a claimed family takes no fallback
        model = load_model(str(folder))
    task = Task.from_lists("t", PROMPTS, ANSWERS)
    return family, model, Plain.load(folder, family), task, sequence_ids(task, model)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request, family_folder):
    """(family, tasklens model, plain model, task, (prompt ids, prompt + answer ids) per prompt)."""
    return _pair(family_folder, request.param)


def _tested(model) -> NeuronSet:
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    pairs = [
        (layer, n) for layer in range(n_layers) for n in torch.arange(d_mlp)[3 :: d_mlp // PER_LAYER].tolist()
    ]
    return NeuronSet.from_pairs(pairs, (n_layers, d_mlp), "tested")


def _plain_drops(plain: Plain, ids, layer: int, neuron: int, clean: list[float] | None = None) -> float:
    """The drop in the summed answer log-probability when the neuron is zeroed at every position."""

    def zero(act):
        act = act.clone()
        act[..., neuron] = 0.0
        return act

    clean = clean or _plain_clean(plain, ids)
    with torch.no_grad():
        ablated = [float(answer_logprob(plain.logits(full, {layer: zero}), len(p), full)) for p, full in ids]
    return sum(clean) - sum(ablated)


def _plain_clean(plain: Plain, ids) -> list[float]:
    with torch.no_grad():
        return [float(answer_logprob(plain.logits(full), len(p), full)) for p, full in ids]


def test_exact_ablation_at_every_layer(pair):
    family, model, plain, task, ids = pair
    tested = _tested(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TasklensWarning)
        scores = ExactAblation(only=tested).attribute(model, task, batch_size=2)
    assert model.__dict__["_tasklens_shortcuts"]["analytic_last_layer"] is True
    assert model.__dict__["_tasklens_shortcuts"]["analytic_write"] is True
    worst, clean = 0.0, _plain_clean(plain, ids)
    for layer, neuron in tested.pairs():
        reference = _plain_drops(plain, ids, layer, neuron, clean)
        worst = max(worst, abs(float(scores.values[layer, neuron]) - reference))
        assert float(scores.values[layer, neuron]) == pytest.approx(reference, rel=1e-4, abs=1e-5), (
            layer,
            neuron,
        )
    last = model.cfg.n_layers - 1
    # the last layer (the analytic shortcut) has effects well above the tolerance to compare
    assert max(abs(float(scores.values[last, n])) for _, n in tested.pairs()) > 3e-5
    record(family, "exact_ablation", worst)


def _plain_grads(plain: Plain, ids, loss: bool):
    """Per prompt and layer: (activations, d metric / d activations) of the down projections' inputs."""
    out = []
    for prompt, full in ids:
        acts: dict[int, torch.Tensor] = {}

        def keep(act, layer, acts=acts):
            acts[layer] = act
            return act

        hooks = {layer: (lambda a, layer=layer: keep(a, layer)) for layer in range(len(plain.layers))}
        value = answer_logprob(plain.logits(full, hooks), len(prompt), full)
        if loss:
            value = -value / (len(full) - len(prompt))
        grads = torch.autograd.grad(value, [acts[i] for i in range(len(acts))])
        out.append([(acts[i][0].detach(), g[0]) for i, g in enumerate(grads)])
    return out


def test_attribution_patching_and_gradient_attribution_against_own_autograd(pair):
    family, model, plain, task, ids = pair
    atp = AttributionPatching(baseline="zero").attribute(model, task, batch_size=2).values.double()
    ga = GradientAttribution().attribute(model, task, batch_size=2).values.double()
    atp_ref = sum(
        torch.stack([(a * g).sum(0) for a, g in per]).double() for per in _plain_grads(plain, ids, False)
    )
    ga_ref = sum(
        torch.stack([(a * g).sum(0).abs() for a, g in per]).double() for per in _plain_grads(plain, ids, True)
    )
    for name, ours, ref in (("attribution_patching", atp, atp_ref), ("gradient_attribution", ga, ga_ref)):
        assert ref.abs().max() > 1e-5
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()), msg=name)
        record(family, name, float((ours - ref).abs().max() / ref.abs().max()))


def test_output_decoding_against_the_write_through_the_models_own_norms(pair):
    family, model, plain, _, ids = pair
    k = 10
    vocab = decode_neurons(model, k=k, chunk=16)
    head = plain.model.get_output_embeddings()
    captured = {}

    def keep(name):
        def hook(module, args):
            captured[name] = args[0][0, -1].detach()

        return hook

    post = {layer: plain.post_mlp_norm(layer) for layer in range(len(plain.layers))}
    handles = [plain.final_norm.register_forward_pre_hook(keep("final"))]
    handles += [n.register_forward_pre_hook(keep(layer)) for layer, n in post.items() if n is not None]
    with torch.no_grad():
        plain.logits(ids[0][1])
    for h in handles:
        h.remove()
    overlap, worst = 1.0, 0.0
    for layer in range(len(plain.layers)):
        w_out = plain.w_out(layer)
        for neuron in range(0, w_out.shape[0], 7):
            write = w_out[neuron].double()
            if post[layer] is not None:
                write = frozen_jvp(post[layer].double(), captured[layer].double(), write)
            change = frozen_jvp(plain.final_norm.double(), captured["final"].double(), write)
            with torch.no_grad():
                logits = head.double()(change) - head.double()(torch.zeros_like(change))
            top = logits.topk(k)
            ours = vocab.top_ids[layer, neuron]
            overlap = min(overlap, len(set(ours.tolist()) & set(top.indices.tolist())) / k)
            # the same ranking, and values that differ by one positive factor (the norms' scales)
            ours_values = vocab.top_values[layer, neuron].double()
            factor = float(ours_values @ top.values / (top.values @ top.values))
            assert factor > 0
            spread = (ours_values / factor - top.values).abs().max() / top.values.abs().max()
            worst = max(worst, float(spread))
    head.float(), plain.final_norm.float()
    for n in post.values():
        if n is not None:
            n.float()
    assert overlap == 1.0, (family, overlap)
    assert worst < 1e-4, (family, worst)
    record(family, "output_decoding", worst)


# --- shortcuts that check themselves ----------------------------------------------------------------
def test_every_family_of_the_suite_is_the_verified_set():
    assert set(FAMILIES) == VERIFIED_FAMILIES


def test_a_family_outside_the_table_takes_the_exact_paths_and_says_so_once(family_folder, monkeypatch):
    _, model, _, task, _ = _pair(family_folder, "gemma3_text")
    fresh = load_model(model.cfg.model_name)
    monkeypatch.setattr(fresh.original_model.config, "model_type", "gemma99")
    tested = _tested(fresh)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exact = ExactAblation(only=tested).attribute(fresh, task, batch_size=2)
        ExactAblation(only=tested).attribute(fresh, task, batch_size=2)
        measured = decode_neurons(fresh, k=5)
        decode_neurons(fresh, k=5)
    notes = [str(w.message) for w in caught if issubclass(w.category, TasklensWarning)]
    assert len(notes) == 2 and all("gemma99" in n and "exact path" in n for n in notes), notes
    with pytest.warns(TasklensWarning), pytest.raises(TasklensError, match="not verified on"):
        decode_neurons(fresh, side="hook_pre", k=5)  # input decoding has no exact path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TasklensWarning)
        analytic = ExactAblation(only=tested).attribute(model, task, batch_size=2)
        read_off = decode_neurons(model, k=5)
    torch.testing.assert_close(exact.values, analytic.values, rtol=1e-4, atol=1e-6)
    assert torch.equal(measured.top_ids, read_off.top_ids)


def test_a_shortcut_that_disagrees_with_the_model_is_dropped_with_one_note(family_folder, monkeypatch):
    """The analytic last layer as it was before the post-MLP norm was taken into account: on
    Gemma its own check catches it and the exact path runs."""
    import tasklens.scoring.exact as exact

    _, model, plain, task, ids = _pair(family_folder, "gemma2")
    fresh = load_model(model.cfg.model_name)
    monkeypatch.setattr(exact, "mlp_write_change", lambda model, layer, raw, new_raw: new_raw - raw)
    last = fresh.cfg.n_layers - 1
    only = NeuronSet.from_pairs([(last, n) for n in range(8)], (fresh.cfg.n_layers, fresh.cfg.d_mlp))
    with pytest.warns(TasklensWarning, match="differs from the model's own forward"):
        scores = ExactAblation(only=only).attribute(fresh, task, batch_size=2)
    assert fresh.__dict__["_tasklens_shortcuts"]["analytic_last_layer"] is False
    for neuron in range(8):
        assert float(scores.values[last, neuron]) == pytest.approx(
            _plain_drops(plain, ids, last, neuron), rel=1e-4, abs=1e-5
        )
