from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from tasklens.errors import TasklensError
from tasklens.models import ORGANISM_DIR, ModelInfo, forward_keeping, load_model


def test_organism_description(organism):
    info = ModelInfo.of(organism)
    assert info.shape == (4, 512) and info.n_neurons == 2048
    assert info.gated and info.units == ("hook_post", "hook_pre", "hook_pre_linear")
    assert info.hook_name(2) == "blocks.2.mlp.hook_post"
    # every hook name the description spells exists on the bridge
    for unit in info.units:
        for name in info.hook_names(unit):
            assert name in organism.hook_dict or organism.get_hook_point(name) is not None


def test_swiglu_units_are_consistent(organism):
    _, cache = organism.run_with_cache("The capital of France is")
    post = cache["blocks.1.mlp.hook_post"]
    expected = (
        torch.nn.functional.silu(cache["blocks.1.mlp.hook_pre"]) * cache["blocks.1.mlp.hook_pre_linear"]
    )
    torch.testing.assert_close(post, expected)


def test_forward_keeping_computes_only_the_kept_positions_logits(organism):
    tokens = organism.to_tokens(["What is 12 plus 30? Answer:", "Paris is in"], padding_side="right")
    full = organism(tokens)
    last, kept = forward_keeping(organism, tokens, 1)
    assert kept and last.shape == (2, 1, full.shape[-1])
    torch.testing.assert_close(last[:, 0], full[:, -1])
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    mask[0, 2], mask[1, 4] = True, True
    picked, kept = forward_keeping(organism, tokens, mask)
    assert kept
    torch.testing.assert_close(picked, full[mask])
    assert forward_keeping(organism, tokens, 1, return_type=None) == (None, True)


def test_logits_at_reads_a_mask_or_positions_per_row_as_full_logits_would(organism, monkeypatch):
    import tasklens.models.forward as forward

    tokens = organism.to_tokens(["What is 12 plus 30? Answer:", "Paris is in"], padding_side="right")
    full = organism(tokens)
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    mask[0, 2], mask[0, 5], mask[1, 4] = True, True, True
    positions = torch.tensor([[1, 3], [4, 0]])
    at_positions = torch.stack([full[0, [1, 3]], full[1, [4, 0]]])
    for what in ("kept", "full"):  # through logits_to_keep, then a model that ignores it
        if what == "full":
            monkeypatch.setattr(forward, "forward_keeping", lambda model, tokens, keep: (model(tokens), True))
        torch.testing.assert_close(forward.logits_at(organism, tokens, mask), full[mask], atol=1e-5, rtol=0)
        torch.testing.assert_close(
            forward.logits_at(organism, tokens, positions), at_positions, atol=1e-5, rtol=0
        )


def test_unknown_unit_and_non_gated_unit():
    info = ModelInfo("gpt2", 12, 3072, gated=False, n_ctx=1024, device="cpu", dtype="float32")
    with pytest.raises(TasklensError, match="exists only in gated"):
        info.hook_name(0, "hook_pre_linear")
    with pytest.raises(TasklensError, match="Unknown neuron unit"):
        info.hook_name(0, "hook_mid")


def test_local_folder_loads_the_same_model(tmp_path, organism):
    folder = tmp_path / "copy"
    shutil.copytree(ORGANISM_DIR, folder)
    copy = load_model(str(folder))
    tokens = organism.to_tokens("What is 12 plus 30? Answer:")
    torch.testing.assert_close(copy(tokens), organism(tokens))


def test_hub_name_offline_is_a_clear_error():
    with pytest.raises(TasklensError, match=r"spec='organism'.*local Hugging Face folder"):
        load_model("tasklens-test/not-a-cached-model")


def test_missing_and_corrupt_folders(tmp_path):
    with pytest.raises(TasklensError, match="does not exist"):
        load_model(str(tmp_path / "nowhere") + "/")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TasklensError, match=r"no config\.json"):
        load_model(str(empty))
    corrupt = tmp_path / "corrupt"
    shutil.copytree(ORGANISM_DIR, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(TasklensError, match="corrupt or incomplete"):
        load_model(str(corrupt))
    broken_config = tmp_path / "broken_config"
    shutil.copytree(ORGANISM_DIR, broken_config)
    (broken_config / "config.json").write_text("{ not json")
    with pytest.raises(TasklensError, match="not valid JSON"):
        load_model(str(broken_config))


@pytest.mark.reliability
def test_a_corrupt_downloaded_model_names_the_command_that_repairs_it(tmp_path, monkeypatch):
    """A folder downloaded before sizes were recorded: loading fails with the repair command."""
    from tasklens.models import zoo

    monkeypatch.setenv("TASKLENS_HOME", str(tmp_path))
    folder = tmp_path / "models" / "smollm2-135m"
    shutil.copytree(ORGANISM_DIR, folder)
    (folder / zoo.MARKER).write_text('{"name": "smollm2-135m"}')
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    repair = r"corrupt or incomplete.*run `tasklens models download smollm2 --force`$"
    with pytest.raises(TasklensError, match=repair):
        load_model("smollm2-135m")


@pytest.fixture
def bert_folder(tmp_path):
    """A masked language model (BERT) saved as Hugging Face saves it, with the organism's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(ORGANISM_DIR)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertForMaskedLM(config).save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    return tmp_path / "bert"


@pytest.mark.reliability
def test_a_masked_language_model_is_refused_before_any_work(bert_folder, tmp_path):
    """transformers would load it as BertLMHeadModel with a fresh head and tasklens would run on it."""
    from typer.testing import CliRunner

    from tasklens.cli import app

    with pytest.raises(TasklensError, match=r"holds a BertForMaskedLM, not a causal language model"):
        load_model(str(bert_folder))
    result = CliRunner().invoke(app, ["locate", "--model", str(bert_folder), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.strip().count("\n") == 0 and "not a causal language model" in result.output
    assert not (tmp_path / "run").exists()
    config = json.loads((bert_folder / "config.json").read_text())
    for changed in (
        {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]},
        {"model_type": None},
    ):
        (bert_folder / "config.json").write_text(json.dumps({**config, **changed}))
        with pytest.raises(TasklensError, match="cannot run as a causal language model"):
            load_model(str(bert_folder))


@pytest.mark.reliability
@pytest.mark.parametrize("arch", ["gpt2", "pythia", "llama", "llama without architectures"])
def test_causal_language_models_of_other_architectures_still_load(tmp_path, arch):
    from conftest import build_tiny

    folder = build_tiny(tmp_path / "model", arch.split()[0])
    if arch.endswith("without architectures"):  # a config written by hand names no class
        config = json.loads((folder / "config.json").read_text())
        del config["architectures"]
        (folder / "config.json").write_text(json.dumps(config))
    model = load_model(str(folder))
    assert model(model.to_tokens("The capital of France is")).isfinite().all()


@pytest.mark.reliability
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_local_folder_with_non_finite_weights_is_refused_on_load(tmp_path, value):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "model"
    shutil.copytree(ORGANISM_DIR, folder)
    weights = load_file(folder / "model.safetensors")
    name = "model.layers.2.mlp.down_proj.weight"
    weights[name][3, :5] = value
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        TasklensError, match=rf"has 5 NaN or infinite weights in {name}; the weights file is damaged"
    ):
        load_model(str(folder))


@pytest.mark.reliability
def test_a_device_this_torch_cannot_use_is_refused_not_ignored():
    """On a CPU-only torch, device='cuda' gave a model on the CPU whose config said cuda."""
    refused = ["cuda:99", "tpu"] + ([] if torch.cuda.is_available() else ["cuda"])
    refused += [] if torch.backends.mps.is_available() else ["mps"]
    for device in refused:
        with pytest.raises(TasklensError, match=rf"device '{device}'|Unknown device '{device}'"):
            load_model("organism", device=device)


@pytest.mark.reliability
def test_a_file_given_as_the_model_says_to_give_its_folder(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    shutil.copytree(ORGANISM_DIR, folder)
    holder = re.escape(repr(str(folder)))
    looks_like = rf"is a file, not a model folder; .* \({holder}, which holds it, looks like one\)"
    with pytest.raises(TasklensError, match=looks_like):
        load_model(str(folder / "model.safetensors"))
    monkeypatch.chdir(folder)
    with pytest.raises(TasklensError, match=r"'config\.json' is a file, not a model folder"):
        load_model("config.json")


@pytest.fixture(scope="module")
def opt_folder(tmp_path_factory):
    """A tiny OPT whose MLP (fc1: ffn_dim 64) is not 4 x hidden_size (128)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ORGANISM_DIR)
    config = AutoConfig.for_model(
        "opt", vocab_size=len(tokenizer), hidden_size=32, ffn_dim=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=64, word_embed_proj_dim=32,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("opt") / "model"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.reliability
# transformers' notice about OPT's attention arguments under the bridge's key-value cache adapter
@pytest.mark.filterwarnings("ignore:Both `past_key_values` and `cache` are set:FutureWarning")
def test_the_mlp_width_is_read_from_the_blocks_weights_not_the_config(opt_folder):
    """A tiny OPT (ffn_dim 64) was read as 2 x 128, then raw RuntimeError / IndexError from the scorers."""
    from tasklens import NeuronSet
    from tasklens.interventions import ablate
    from tasklens.scoring import ActivationStats, GradientAttribution
    from tasklens.tasks.task import Task

    model = load_model(str(opt_folder))
    info = ModelInfo.of(model)
    assert info.shape == (2, 64) and not info.gated
    task = Task.from_lists("t", ["Paris is in", "Rome is in"], [" Europe", " Europe"])
    # TransformerLens hooks a copy of OPT's activations: gradient scores were silently all 0
    with pytest.raises(
        TasklensError, match=r"gradient of the objective does not reach blocks\.0\.mlp\.hook_post"
    ):
        GradientAttribution().attribute(model, task)
    scores = ActivationStats().attribute(model, task)
    assert scores.shape == (2, 64) and scores.values.isfinite().all() and scores.values.abs().sum() > 0
    tokens = model.to_tokens(task.prompts[0])
    with ablate(model, NeuronSet.from_pairs([(1, j) for j in range(64)], info.shape)):
        ablated = model(tokens)
    assert (ablated - model(tokens)).abs().max() > 1e-4


@pytest.mark.reliability
def test_a_model_whose_mlp_tasklens_cannot_find_is_named(organism):
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = torch.nn.Linear(2, 2)  # no W_in / W_out

    class Unknown(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cfg = organism.cfg
            self.blocks = torch.nn.ModuleList([Block()])

    with pytest.raises(TasklensError, match=r"cannot find the MLP of layer 0 .* not one tasklens supports"):
        ModelInfo.of(Unknown())
    for not_a_model in (None, "organism", torch.zeros(3)):
        with pytest.raises(TasklensError, match=r"Expected a model loaded with tasklens\.load_model"):
            ModelInfo.of(not_a_model)


def test_lean_norms_give_the_bridges_own_outputs_and_keep_every_hook(organism):
    """Each norm bridge runs the wrapped norm alone while no hook watches it: the same logits to the
    bit as the bridge's own forward (which computes the norm twice), gradients included; a hook on
    hook_scale or hook_normalized (run_with_cache, an edit) takes the bridge's own path again."""
    from transformer_lens.model_bridge.generalized_components.normalization import NormalizationBridge

    from tasklens.models.lean import lean_norms

    norms = [m for m in organism.modules() if isinstance(m, NormalizationBridge)]
    assert norms and all("forward" in m.__dict__ for m in norms) and lean_norms(organism) == 0
    tokens = torch.tensor([[1, 5, 7, 9, 11, 13]])
    weight = organism.blocks[1].ln2.original_component.weight

    def gradient() -> torch.Tensor:
        (grad,) = torch.autograd.grad(organism(tokens)[0, -1].logsumexp(-1), weight)
        return grad

    lean = {id(m): m.__dict__.pop("forward") for m in norms}
    try:
        own, own_grad = organism(tokens), gradient()
        _, own_cache = organism.run_with_cache(tokens, names_filter=lambda n: "hook_scale" in n)
    finally:
        for m in norms:
            m.__dict__["forward"] = lean[id(m)]
    assert torch.equal(organism(tokens), own) and torch.equal(gradient(), own_grad)
    _, cache = organism.run_with_cache(tokens, names_filter=lambda n: "hook_scale" in n)
    assert set(cache.keys()) == set(own_cache.keys()) and len(cache) == len(norms)
    for name in cache:
        assert torch.equal(cache[name], own_cache[name])

    def double(act, hook):
        return act * 2

    with organism.hooks(fwd_hooks=[("blocks.1.ln2.hook_normalized", double)]):
        edited = organism(tokens)
    assert not torch.allclose(edited, own)  # the edit went through the bridge's own path
