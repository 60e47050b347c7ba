"""Every scorer checked against an independent reference."""

from __future__ import annotations

import pytest
import torch

from tasklens.data.neurons import NeuronSet
from tasklens.errors import TasklensError
from tasklens.evaluation.known import load_for_model
from tasklens.evaluation.metrics import answer_logprob
from tasklens.interventions import ablate
from tasklens.scoring import (
    CGVST,
    SCORERS,
    ActivationStats,
    AttributionPatching,
    AveragePrecisionExpertise,
    ExactAblation,
    GradientAttribution,
    IntegratedGradients,
    PromptMeans,
    get_scorer,
)
from tasklens.scoring.cgvst import marker_loss
from tasklens.tasks import Task
from tasklens.tasks.builtin import load_builtin
from tasklens.tasks.tokenize import TokenizedTask, marker_positions


@pytest.fixture(scope="module")
def capitals():
    return load_builtin("capital_of", "detection").head(6)


def test_every_scorer_has_the_same_entry_point(organism, capitals):
    negatives = [load_builtin("element_symbol", "detection").head(24)]
    marked = load_builtin("currency_of", "heldout_template").head(4)
    for name, cls in SCORERS.items():
        scorer = cls(negatives=negatives) if name == "average_precision" else cls()
        task = marked if name == "cgvst" else capitals.head(3)
        scores = scorer.attribute(organism, task, unit="hook_post", batch_size=4)
        assert scores.shape == (4, 512) and scores.method == name
        assert torch.isfinite(scores.values).all() and scores.values.abs().sum() > 0
        assert scores.task_hash == task.data_hash()


def test_cgvst_hook_form_equals_parameter_gradient(organism):
    task = load_builtin("currency_of", "heldout_template").head(4)
    scores = CGVST(n_demo=1).attribute(organism, task, batch_size=2)
    positions = marker_positions(task, organism.tokenizer)
    tokenized = TokenizedTask.for_model(task, organism)
    layers = organism.original_model.model.layers
    weights = [layer.mlp.up_proj.weight for layer in layers]
    reference = torch.zeros(4, 512, dtype=torch.float64)
    for batch in tokenized.batches(1, with_answers=False):
        loss = marker_loss(organism(batch.tokens), batch, positions, n_demo=1).sum()
        grads = torch.autograd.grad(loss, weights)
        for layer, grad in enumerate(grads):
            reference[layer] += grad.double().sum(1).abs()
    torch.testing.assert_close(scores.values.double(), reference, rtol=1e-4, atol=1e-7)


def test_cgvst_needs_markers(organism, capitals):
    with pytest.raises(TasklensError, match="no markers"):
        CGVST().attribute(organism, capitals)


def test_neuron_atp_sums_to_transformerlens_component_atp(organism):
    from transformer_lens.tools.analysis.attribution_patching import attribution_patch

    clean = Task.from_lists("c", ["Q: What is the capital of Peru? A:"], [" Lima"])
    corrupt_prompt = "Q: What is the capital of Chad? A:"
    tok = TokenizedTask.for_model(clean, organism)
    batch = next(tok.batches(1))
    corrupt_ids = TokenizedTask.for_model(Task.from_lists("x", [corrupt_prompt], [" Lima"]), organism)
    corrupt_batch = next(corrupt_ids.batches(1))
    assert corrupt_batch.tokens.shape == batch.tokens.shape

    def metric(logits):
        return answer_logprob(logits, batch)[0]

    result = attribution_patch(organism, batch.tokens, corrupt_batch.tokens, metric)
    # TransformerLens's form is denoising (gradient on the corrupt run, a_clean - a_corrupt):
    # our noising form with clean and corrupt swapped is the same estimate, reported as a drop.
    swapped = Task.from_lists("s", [corrupt_prompt], [" Lima"], corrupted_prompts=[clean.prompts[0]])
    ours = AttributionPatching(baseline="corrupted").attribute(organism, swapped)
    for layer in range(4):
        tl = sum(
            v for node, v in result.node_scores.items() if node.kind == "mlp_out" and node.layer == layer
        )
        assert float(tl) == pytest.approx(-float(ours.values[layer].sum()), rel=1e-3, abs=1e-5)


def test_integrated_gradients_equals_captum(organism):
    from references import captum_reference

    task = Task.from_lists(
        "t", ["Q: What is the capital of Peru? A:", "Element: Iron. Symbol:"], [" Lima", " Fe"]
    )
    # (captum's "riemann_trapezoid" weights its m points 1/m with halved ends, summing to
    # (m-1)/m; tasklens uses the standard rule, 1/(m-1), so only the Riemann rules match)
    for rule in ("riemann_left", "riemann_right"):
        ours = IntegratedGradients(steps=8, rule=rule).per_prompt(organism, task)
        reference = captum_reference(organism, task, steps=8, rule=rule, layers=(0, 3))
        assert reference[:, [0, 3]].abs().max() > 1e-4
        torch.testing.assert_close(ours[:, [0, 3]], reference[:, [0, 3]], rtol=1e-4, atol=1e-6)


def test_exact_ablation_equals_a_plain_loop(organism, capitals):
    task = capitals.head(3)
    exact = ExactAblation(max_rows=96).attribute(organism, task, batch_size=3)
    tok = TokenizedTask.for_model(task, organism)
    batch = next(tok.batches(3))
    with torch.no_grad():
        clean = answer_logprob(organism(batch.tokens), batch)
        generator = torch.Generator().manual_seed(0)
        for flat in torch.randperm(2048, generator=generator)[:40].tolist():
            layer, index = divmod(flat, 512)
            with ablate(organism, NeuronSet.from_pairs([(layer, index)], (4, 512))):
                ablated = answer_logprob(organism(batch.tokens), batch)
            assert float(exact.values[layer, index]) == pytest.approx(
                float((clean - ablated).sum()), rel=1e-4, abs=1e-5
            )


def test_zero_ablation_estimate_is_exact_for_a_linear_readout(tiny_model):
    model = tiny_model("llama", n_layers=1)
    task = Task.from_lists(
        "t", ["Q: What is the capital of Peru? A:", "reverse: a b c ->"], [" Lima", " c b a"]
    )
    # freezing the final norm's scale makes the read-out (norm + unembed) linear in the residual
    frozen = [("ln_final.hook_scale", lambda scale, hook: torch.ones_like(scale))]
    with model.hooks(fwd_hooks=frozen):
        estimate = AttributionPatching(metric="logit").attribute(model, task)
        exact = ExactAblation(metric="logit").attribute(model, task)
    scale = float(exact.values.abs().max())
    assert scale > 0.1
    torch.testing.assert_close(estimate.values, exact.values, rtol=1e-4, atol=1e-4 * scale)


def test_graddrop_leaves_last_layer_neurons_unchanged(organism, capitals):
    task = capitals.head(2)
    plain = AttributionPatching(absolute=True).attribute(organism, task)
    dropped = AttributionPatching(graddrop=True).attribute(organism, task)
    # cutting an earlier layer's outputs does not change gradients at the last layer
    torch.testing.assert_close(dropped.values[3], plain.values[3], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(dropped.values[0], plain.values[0], rtol=1e-2)


def test_gradient_attribution_aggregations(organism, capitals):
    task = capitals.head(4)
    per_prompt = GradientAttribution("abs_of_sum").attribute(organism, task, batch_size=1)
    batched = GradientAttribution("abs_of_sum").attribute(organism, task, batch_size=4)
    torch.testing.assert_close(per_prompt.values, batched.values, rtol=1e-4, atol=1e-7)
    tokenwise = GradientAttribution("sum_of_abs").attribute(organism, task)
    total = GradientAttribution("abs_of_total").attribute(organism, task)
    # |sum| <= sum |.| at each level of aggregation
    assert torch.all(total.values <= per_prompt.values + 1e-6)
    assert torch.all(per_prompt.values <= tokenwise.values + 1e-6)


def test_activation_stats_stream_matches_one_cache(organism, capitals):
    task = capitals.head(5)
    streamed = ActivationStats("mean", "all").accumulate(organism, task, batch_size=2)
    tok = TokenizedTask.for_model(task, organism)
    total = torch.zeros(512)
    count = 0
    for ids, ans in zip(tok.prompt_ids, tok.answer_ids, strict=True):
        _, cache = organism.run_with_cache(torch.tensor([ids + ans]))
        total += cache["blocks.2.mlp.hook_post"][0].sum(0)
        count += len(ids) + len(ans)
    torch.testing.assert_close(streamed.statistic("mean")[2].float(), total / count, rtol=1e-4, atol=1e-6)
    assert streamed.n_tokens == count
    # a scorer accumulates only the sums its statistic reads: the same values, the others NaN
    only = ActivationStats("mean", "all").accumulate(organism, task, batch_size=2, sums=("sum",))
    assert torch.equal(only.sum, streamed.sum) and only.sum_sq.isnan().all() and only.fires.isnan().all()
    for statistic in ("mean", "mean_abs", "std", "firing_rate"):
        scores = ActivationStats(statistic, "all").attribute(organism, task, batch_size=2).values
        assert torch.equal(scores, streamed.statistic(statistic).float()), statistic


def test_average_precision_matches_a_direct_computation():
    from tasklens.scoring.expertise import average_precision

    scores = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.7, 0.3]])
    labels = torch.tensor([True, False, True, False])
    ap = average_precision(scores, labels)
    # column 0 ranks: pos(0.9), neg(0.8), neg(0.7), pos(0.1): AP = (1/1 + 2/4) / 2
    assert float(ap[0]) == pytest.approx(0.75)
    # column 1 ranks: pos(0.9), neg(0.3), neg(0.2), pos(0.1): same
    assert float(ap[1]) == pytest.approx(0.75)


def test_scorers_work_unchanged_on_other_architectures(tiny_model):
    task = Task.from_lists(
        "t",
        ["Q: What is the capital of Peru? A:", "Q: Iron symbol? A:"],
        [" Lima", " Fe"],
        markers=("Q:", "A:"),
    )
    for arch in ("gpt2", "pythia"):
        model = tiny_model(arch)
        for scorer in (
            ActivationStats(),
            GradientAttribution(),
            CGVST(),
            AttributionPatching(),
            IntegratedGradients(steps=4),
            ExactAblation(),
        ):
            scores = scorer.attribute(model, task)
            assert scores.shape == (2, model.cfg.d_mlp) and scores.values.abs().sum() > 0, (arch, scorer)
        with pytest.raises(TasklensError, match="exists only in gated"):
            ActivationStats().attribute(model, task, unit="hook_pre_linear")


def test_shared_prompt_means_give_the_same_expertise_and_compute_each_prompt_once(organism):
    names = ("capital_of", "continent_of", "currency_of")
    tasks = {n: load_for_model(organism, n, "detection", known=False).sample(12) for n in names}
    means = PromptMeans()
    for name, task in tasks.items():
        others = [t for n, t in tasks.items() if n != name]
        alone = AveragePrecisionExpertise(negatives=others).attribute(organism, task)
        shared = AveragePrecisionExpertise(negatives=others, means=means).attribute(organism, task)
        assert (alone.values - shared.values).abs().max() < 1e-3, name
        assert "means" not in shared.params and shared.params["negative_ratio"] == 4
    assert len(means) == len({p for t in tasks.values() for p in t.prompts})  # each prompt once
    with pytest.raises(TasklensError, match="another model"):
        means(object(), tasks["capital_of"], "hook_post", 8)


def test_bad_scorer_inputs(organism, capitals):
    with pytest.raises(TasklensError, match="Unknown scorer"):
        get_scorer("saliency")
    with pytest.raises(TasklensError, match="Unknown neuron unit"):
        ActivationStats().attribute(organism, capitals, unit="hook_mid")
    with pytest.raises(TasklensError, match="Unknown baseline"):
        AttributionPatching(baseline="noise")
    with pytest.raises(TasklensError, match="needs negatives"):
        AveragePrecisionExpertise().attribute(organism, capitals)

    class DropsAnswers:
        bos_token_id, pad_token_id, eos_token_id = 1, 0, 2

        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[] if t.startswith(" ") else [5, 6] for t in texts]}

    with pytest.raises(TasklensError, match="empty after tokenisation"):
        TokenizedTask.build(capitals, DropsAnswers(), n_ctx=64)


@pytest.mark.parametrize("arch", ["gpt2", "pythia", "llama"])
def test_exact_ablation_replaying_later_blocks_equals_full_forwards(tiny_model, arch):
    model = tiny_model(arch, n_layers=3)
    task = Task.from_lists(
        "t",
        ["Q: What is the capital of Peru? A:", "reverse: a b c ->", "Q: Iron? A:"],
        [" Lima", " c b a", " Fe"],
    )
    fast = ExactAblation().attribute(model, task, batch_size=2)
    full = ExactAblation(replay=False).attribute(model, task, batch_size=2)
    assert fast.values.abs().max() > 1e-3
    # differences of log-probabilities near -10 carry float32 rounding of about 1e-6
    torch.testing.assert_close(fast.values, full.values, rtol=1e-4, atol=1e-5)


# --- replayed review cases: what scorers record, warn and fall back to -------------------------------
GRID = (4, 512)


@pytest.mark.reliability
def test_scores_of_exact_ablation_on_a_set_save_whole(organism, tmp_path):
    import json

    from tasklens.data.neurons import NeuronScores

    only = NeuronSet.from_pairs([(3, 1), (3, 2)], GRID, "candidates")
    scores = ExactAblation(only=only).attribute(organism, load_builtin("continent_of", "detection").head(2))
    scores.save(tmp_path / "exact")
    meta = json.loads((tmp_path / "exact.json").read_text())
    assert meta["params"]["only"]["size"] == 2 and meta["params"]["only"]["name"] == "candidates"
    assert NeuronScores.load(tmp_path / "exact").params == scores.params


@pytest.mark.reliability
def test_scores_show_themselves_in_a_notebook(organism, continent):
    scores = ActivationStats().attribute(organism, continent)
    page = scores._repr_html_()
    assert "activation_stats" in page and "continent_of" in page and "<table" in page
    frame = scores.to_frame(5)
    assert list(frame.columns) == ["rank", "layer", "neuron", "score"] and frame.score.is_monotonic_decreasing


@pytest.mark.reliability
def test_cgvst_records_the_unit_it_scores(organism):
    from tasklens.scoring import CGVST

    task = load_builtin("currency_of", "heldout_template").head(2)
    assert CGVST().attribute(organism, task).unit == "hook_pre_linear"
    with pytest.raises(TasklensError, match="up projection"):
        CGVST().attribute(organism, task, unit="hook_pre")


@pytest.mark.reliability
def test_corrupted_pairs_of_another_length_are_counted_not_silently_dropped(organism):
    from tasklens.errors import TasklensWarning

    task = Task.from_lists(
        "pairs",
        ["Q: What is the capital of Peru? A:", "Q: What is the capital of Chad? A:"],
        [" Lima", " N'Djamena"],
        corrupted_prompts=[
            "Q: What is the capital of Chad? A:",
            "Q: What is the capital of the Central African Republic? A:",
        ],
    )
    with pytest.warns(TasklensWarning, match="1 of 2 corrupted prompts"):
        scores = AttributionPatching(baseline="corrupted").attribute(organism, task)
    assert scores.params["n_dropped_pairs"] == 1 and scores.n_prompts == 1


@pytest.mark.reliability
def test_exact_ablation_falls_back_to_full_forwards_with_one_warning(organism, monkeypatch):
    import warnings

    import tasklens.scoring.exact as exact
    from tasklens.errors import TasklensWarning

    task = load_builtin("continent_of", "detection").head(2)
    only = NeuronSet.from_pairs([(0, 1), (1, 2), (2, 3)], GRID, "few")
    replayed = ExactAblation(only=only).attribute(organism, task).values
    monkeypatch.setattr(exact, "replay_blocks", lambda *args: None)
    monkeypatch.delattr(organism, "_tasklens_replay_warned", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        full = ExactAblation(only=only).attribute(organism, task).values
        ExactAblation(only=only).attribute(organism, task)
    assert len([w for w in caught if issubclass(w.category, TasklensWarning)]) == 1
    torch.testing.assert_close(full, replayed, rtol=1e-4, atol=1e-6)
