from __future__ import annotations

import warnings
import weakref

import pytest
import torch

import tasklens.models.loading
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
    monkeypatch.setattr(tasklens.models.loading, "_WARNED_EMPTY_CACHE", weakref.WeakSet())
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


# --- each kind a class owning its parameters; user kinds by name everywhere ---------------------
SHIFT_PLUGIN = '''
from dataclasses import dataclass

import tasklens
from tasklens.interventions import Intervention


@tasklens.register_intervention("iv_shift")
@dataclass(frozen=True, eq=False, kw_only=True)
class Shift(Intervention):
    """Add ``offset`` to the neurons."""

    offset: float

    def edit(self, layer, idx, current):
        return current + self.offset
'''


@pytest.fixture
def user_kinds(tmp_path, monkeypatch):
    """A working folder for plug-in modules; kinds they register are forgotten afterwards."""
    import sys

    from tasklens.interventions import INTERVENTIONS

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(INTERVENTIONS, "_items", dict(INTERVENTIONS._items))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if str(tmp_path) in (getattr(sys.modules[name], "__file__", "") or ""):
            del sys.modules[name]


def test_each_kind_is_a_class_owning_its_parameters_and_built_by_name():
    from tasklens.interventions import INTERVENTIONS, Amplify, Clamp, Intervention, Mean, Resample, Zero

    neurons = NeuronSet.from_pairs([(1, 3)], (4, 512), "s")
    for name, cls in [("zero", Zero), ("mean", Mean), ("resample", Resample), ("amplify", Amplify)]:
        assert INTERVENTIONS.get(name) is cls and type(Intervention(name)) is cls
    spec = Intervention("amplify", neurons, positions=[-1], factor=3)
    assert isinstance(spec, Amplify) and spec.factor == 3.0 and isinstance(spec.factor, float)
    assert spec.positions == (-1,) and spec.kind == "amplify" and spec.parameters() == {"factor": 3.0}
    assert Intervention("clamp", value=2.5).to_dict() == {
        "kind": "clamp",
        "unit": "hook_post",
        "positions": None,
        "value": 2.5,
    }
    assert Intervention().kind == "zero" and Clamp(neurons, value=1.0).on(neurons).value == 1.0
    # the one-dataclass keywords are accepted by every kind, and kept only by the kind owning them
    assert Intervention("zero", neurons, factor=2.0, value=3.0).to_dict().keys() == {
        "kind",
        "unit",
        "positions",
        "neurons",
    }
    with pytest.raises(
        TasklensError, match=r"'amplify' has no parameter \['scale'\]; its parameters: \['factor'\]"
    ):
        Intervention("amplify", scale=2.0)
    with pytest.raises(TasklensError, match="factor must be a finite number"):
        Amplify(factor=float("nan"))


def test_saved_intervention_records_of_every_shape_still_load(organism):
    from tasklens.analysis.matrix import EvaluationResult, evaluation_matrix
    from tasklens.interventions import Amplify, Intervention, Resample

    old_resample = {"kind": "resample", "unit": "hook_post", "positions": [-1], "source": {"name": "src"},
                    "mean": None, "seed": 4}  # fmt: skip
    spec = Intervention.from_dict(old_resample)
    assert isinstance(spec, Resample) and spec.seed == 4 and spec.source is None and spec.positions == (-1,)
    assert Intervention.from_dict({"kind": "mean", "mean": {"shape": [4, 512], "sha256": "ab"}}).mean is None

    task = Task.from_lists("t", ["Q: What is the capital of France? A:"], [" Paris"])
    neurons = NeuronSet.from_pairs([(0, i) for i in range(64)], (4, 512), "s")
    result = evaluation_matrix(organism, [neurons], [task], n_controls=0, metric="logprob")
    data = result.to_dict()
    data["intervention"] = {"kind": "amplify", "unit": "hook_post", "positions": None, "factor": 3.0}
    again = EvaluationResult.from_dict(data)
    assert again.intervention_label == "amplify x3"
    assert isinstance(Intervention.from_dict(again.intervention), Amplify)


def test_a_function_kind_keeps_its_params(organism, user_kinds):
    import tasklens
    from tasklens.interventions import INTERVENTIONS, Intervention

    def shift(model, intervention):
        return lambda layer, idx, current: current + intervention.params["by"]

    assert tasklens.register_intervention("iv_fn_shift", shift) is shift
    neurons = NeuronSet.from_pairs([(1, 3)], (4, 512), "s")
    spec = Intervention("iv_fn_shift", neurons, by=2.0)
    assert spec.to_dict()["params"] == {"by": 2.0} and isinstance(spec, INTERVENTIONS.get("iv_fn_shift"))
    assert Intervention("iv_fn_shift", neurons, params={"by": 2.0}).params == {"by": 2.0}
    clean = post(organism, 1)[..., 3]
    with Intervention.from_dict(spec.to_dict(), neurons).apply(organism):
        torch.testing.assert_close(post(organism, 1)[..., 3], clean + 2.0)


def test_a_user_kind_with_its_own_parameters_works_from_python_the_cli_and_toml(organism, user_kinds):
    import json

    from typer.testing import CliRunner

    from tasklens.cli import app
    from tasklens.interventions import Intervention
    from tasklens.registry import load_plugins
    from tasklens.runs.pipeline import RunConfig, locate
    from tasklens.runs.pipeline import ablate as run_ablate

    (user_kinds / "iv_shift_plugins.py").write_text(SHIFT_PLUGIN)
    load_plugins(["iv_shift_plugins"])

    # Python, by name
    neurons = NeuronSet.from_pairs([(2, 5), (2, 9)], (4, 512), "s")
    spec = Intervention("iv_shift", neurons, offset=1.5)
    assert type(spec).__name__ == "Shift" and spec.label == "iv_shift"
    assert Intervention.from_dict(spec.to_dict(), neurons).offset == 1.5
    clean = post(organism, 2)[..., 5]
    with spec.apply(organism):
        torch.testing.assert_close(post(organism, 2)[..., 5], clean + 1.5)
    with pytest.raises(
        TasklensError, match=r"needs the parameter\(s\) \['offset'\].*--intervention-param offset="
    ):
        Intervention("iv_shift", neurons)

    # a run located once, then ablated from the CLI and from a TOML config
    base = dict(tasks=["continent_of"], max_prompts=4, method="activation_stats", value=0.5)
    locate(RunConfig.from_dict({**base, "out": "run"}), organism)
    cli = CliRunner().invoke(
        app,
        ["ablate", "--out", "run", "--plugin", "iv_shift_plugins", "--intervention", "iv_shift",
         "--intervention-param", "offset=-40", "--controls", "0", "--metric", "logprob"],
    )  # fmt: skip
    assert cli.exit_code == 0, cli.output
    recorded = json.loads((user_kinds / "run/matrix_result.json").read_text())["intervention"]
    assert recorded == {"kind": "iv_shift", "unit": "hook_post", "positions": None, "offset": -40.0}
    from_cli = recorded

    (user_kinds / "run.toml").write_text(
        'tasks = ["continent_of"]\nmax_prompts = 4\nout = "run"\nplugins = ["iv_shift_plugins"]\n'
        'intervention = "iv_shift"\ncontrols = 0\nmetric = "logprob"\n[intervention_params]\noffset = 3\n'
    )
    config = RunConfig.from_toml(user_kinds / "run.toml")
    assert config.intervention_params == {"offset": 3}
    result = run_ablate(config, organism)
    assert result.intervention == {**from_cli, "offset": 3.0} and result.intervention_label == "iv_shift"
    assert result.values.loc["continent_of", "continent_of"] != result.baseline["continent_of"]

    bad = CliRunner().invoke(
        app,
        ["ablate", "--out", "run", "--plugin", "iv_shift_plugins", "--intervention", "iv_shift",
         "--intervention-param", "offse=1"],
    )  # fmt: skip
    assert bad.exit_code == 2 and "'iv_shift' has no parameter ['offse']" in bad.output


# --- replayed review cases: hooks after an error, positions outside the pass ------------------------
GRID = (4, 512)


@pytest.mark.reliability
def test_hooks_are_removed_after_an_error_inside_an_intervention(organism):
    from tasklens.interventions import Intervention

    tokens = organism.to_tokens("Q: What is the capital of Peru? A:")
    clean = organism(tokens)
    neurons = NeuronSet.from_pairs([(0, 1), (2, 3)], GRID)
    for kind in ("zero", "amplify", "clamp"):
        with pytest.raises(RuntimeError), Intervention(kind, neurons, value=3.0).apply(organism):
            raise RuntimeError("inside")
        torch.testing.assert_close(organism(tokens), clean, atol=0, rtol=0)


@pytest.mark.reliability
def test_positions_beyond_the_prompt_are_a_clear_error(organism):
    from tasklens.interventions import Intervention

    neurons = NeuronSet.from_pairs([(0, 1)], GRID)
    with pytest.raises(TasklensError, match="outside this forward pass"):
        with Intervention("zero", neurons, positions=(50,)).apply(organism):
            organism(organism.to_tokens("short prompt"))


def test_position_matched_mean_ablation_keeps_position_zero_apart(organism):
    from tasklens.interventions import Intervention, PositionMean
    from tasklens.models.hooks import position_means
    from tasklens.tasks.builtin import load_builtin

    source = load_builtin("continent_of", "detection").head(6)
    first, rest = position_means(organism, source)
    tokenized = TokenizedTask.for_model(source, organism)
    by_hand_first, by_hand_rest = [], []
    for prompt, answer in zip(tokenized.prompt_ids, tokenized.answer_ids, strict=True):
        _, cache = organism.run_with_cache(
            torch.tensor([prompt + answer]), names_filter="blocks.2.mlp.hook_post"
        )
        acts = cache["blocks.2.mlp.hook_post"][0]
        by_hand_first.append(acts[0])
        by_hand_rest.append(acts[1:])
    torch.testing.assert_close(first[2], torch.stack(by_hand_first).mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(rest[2], torch.cat(by_hand_rest).mean(0), atol=1e-5, rtol=1e-4)
    assert (first[2] - rest[2]).abs().max() > 0.05  # position 0 differs: one mean would mix the two

    neurons = NeuronSet.from_pairs([(2, 5), (2, 40)], (4, 512), "s")
    with Intervention("position_mean", neurons, source=source).apply(organism):
        edited = post(organism, 2)[0]
    torch.testing.assert_close(edited[0, [5, 40]], first[2, [5, 40]])
    torch.testing.assert_close(edited[1:, [5, 40]], rest[2, [5, 40]].expand(edited.shape[0] - 1, 2))
    with pytest.raises(TasklensError, match="takes no positions"):
        with PositionMean(neurons, positions=(1,), source=source).apply(organism):
            pass
    with pytest.raises(TasklensError, match="needs source="):
        with PositionMean(neurons).apply(organism):
            pass


@pytest.mark.reliability
def test_a_model_edited_in_one_thread_refuses_another_threads_passes(organism):
    """Two threads on one model: the thread that did not ablate saw the other's ablation in 10 of 10
    passes, with no warning."""
    import threading

    tokens = organism.to_tokens("The capital of France is")
    clean = organism(tokens)
    neurons = NeuronSet.from_pairs(
        [(layer, i) for layer in range(4) for i in range(0, 512, 2)], (4, 512), "half"
    )
    entered, done = threading.Event(), threading.Event()
    seen: dict[str, list] = {"passes": [], "ablate": []}

    def ablating():
        with ablate(organism, neurons):
            entered.set()
            done.wait(30)

    def other():
        for _ in range(10):
            try:
                seen["passes"].append(organism(tokens))
            except TasklensError as error:
                seen["passes"].append(str(error))
        try:
            with ablate(organism, neurons):
                seen["ablate"].append("entered")
        except TasklensError as error:
            seen["ablate"].append(str(error))

    owner = threading.Thread(target=ablating, name="ablating")
    owner.start()
    assert entered.wait(30)
    reader = threading.Thread(target=other, name="reader")
    reader.start()
    reader.join(60)
    done.set()
    owner.join(30)
    assert len(seen["passes"]) == 10 and len(seen["ablate"]) == 1
    for outcome in [*seen["passes"], *seen["ablate"]]:
        assert isinstance(outcome, str), "another thread's pass ran through the ablation"
        assert "in use by thread 'ablating'" in outcome and "Load one model per thread" in outcome
    # once the block is closed any thread may use the model, and nesting in one thread is fine
    result = {}

    def after():
        result["clean"] = organism(tokens)
        with ablate(organism, neurons), amplify(organism, neurons, 2.0):
            result["nested"] = organism(tokens)

    worker = threading.Thread(target=after)
    worker.start()
    worker.join(60)
    torch.testing.assert_close(result["clean"], clean)
    assert (result["nested"] - clean).abs().max() > 1e-3


@pytest.mark.reliability
def test_a_position_past_a_short_prompt_in_a_padded_batch_is_refused(organism):
    """ablate(positions=...) past a short prompt's tokens edited its padding: nothing, silently."""
    from tasklens.evaluation.evaluate import evaluate_prompts

    task = Task.from_lists(
        "t", ["Paris is in", "The capital city of the country of France is in"], [" Europe", " Europe"]
    )
    every = NeuronSet.from_pairs([(layer, i) for layer in range(4) for i in range(512)], (4, 512), "all")
    base = evaluate_prompts(organism, task, "logprob")
    for positions in ([8], [-1]):
        with pytest.raises(TasklensError, match=r"lie past the real tokens of 1 of this batch's 2 sequences"):
            with ablate(organism, every, positions=positions):
                evaluate_prompts(organism, task, "logprob")
    with ablate(organism, every, positions=[2]):  # a position both have edits both
        edited = evaluate_prompts(organism, task, "logprob")
    assert ((edited - base).abs() > 1e-3).all()
    with pytest.raises(TasklensError, match=r"outside this forward pass's \d+ tokens"):
        with ablate(organism, every, positions=[8]):
            evaluate_prompts(organism, task.head(1), "logprob")
