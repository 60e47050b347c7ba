"""A model folder's weights against its config: every parameter present and used, shapes agreeing,
checked before anything is allocated (`tasklens.models.weights`)."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from tasklens.cli import app
from tasklens.errors import TasklensError
from tasklens.models import ORGANISM_DIR, load_model

ONE_THREAD = True
pytestmark = pytest.mark.reliability
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    """A tiny GPT-2 (2 layers, every bias non-zero) with the organism's tokenizer."""
    from conftest import build_tiny

    folder = build_tiny(tmp_path_factory.mktemp("gpt2") / "model", "gpt2")
    weights = load_file(folder / "model.safetensors")
    generator = torch.Generator().manual_seed(3)
    for name, tensor in weights.items():
        if name.endswith(".bias"):
            weights[name] = torch.randn(tensor.shape, generator=generator) * 0.5
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.fixture
def copy(gpt2_folder, tmp_path):
    """A fresh copy of the tiny GPT-2 folder (to damage)."""
    folder = tmp_path / "model"
    shutil.copytree(gpt2_folder, folder)
    return folder


def edit_weights(folder, edit) -> None:
    weights = load_file(folder / "model.safetensors")
    edit(weights)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def edit_config(folder, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def one_line_cli_error(folder, tmp_path, *needles) -> None:
    result = CliRunner().invoke(app, ["locate", "--model", str(folder), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.strip().count("\n") == 0, result.output
    for needle in needles:
        assert needle in result.output, (needle, result.output)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["transformer.h.0.mlp.c_fc.bias", "transformer.h.1.mlp.c_proj.weight"])
def test_a_weight_missing_from_the_file_is_refused_not_initialised_at_random(
    copy, gpt2_folder, tmp_path, name
):
    """It loaded, `locate` exited 0, and the missing weight was freshly initialised."""
    full = load_model(str(gpt2_folder))
    tokens = full.to_tokens(PROMPT)
    edit_weights(copy, lambda w: w.pop(name))
    with pytest.raises(TasklensError, match=rf"the weights lack 1 parameter\(s\) a GPT2 model .*\({name}\)"):
        load_model(str(copy))
    one_line_cli_error(copy, tmp_path, name, "would fill them with random values")
    assert full(tokens).isfinite().all()  # the intact folder still loads


def test_a_tensor_the_model_does_not_use_is_refused(copy):
    edit_weights(copy, lambda w: w.update({"transformer.h.0.mlp.extra.weight": torch.ones(3)}))
    with pytest.raises(TasklensError, match=r"hold 1 tensor\(s\) a GPT2 model .* does not use"):
        load_model(str(copy))


def test_a_config_of_another_architecture_is_refused_before_any_allocation(copy, tmp_path):
    """A GPT-2 folder whose config says llama: the process was killed for memory (exit 137)."""
    edit_config(copy, model_type="llama", architectures=["LlamaForCausalLM"])
    start = time.perf_counter()
    with pytest.raises(TasklensError, match=r"describes a Llama model .* hold none of its parameters"):
        load_model(str(copy))
    assert time.perf_counter() - start < 30
    one_line_cli_error(copy, tmp_path, "does not belong to these weights")


def test_a_config_claiming_thousands_of_layers_is_refused_at_once(copy):
    """10,000 layers in the config beside 2 of weights: still running after 120 s at 2.7 GB."""
    edit_config(copy, n_layer=10_000)
    start = time.perf_counter()
    with pytest.raises(
        TasklensError, match=r"gives 10,000 layers .* the weights hold 2 \(transformer\.h\.0 to"
    ):
        load_model(str(copy))
    assert time.perf_counter() - start < 20
    edit_config(copy, n_layer=1)
    with pytest.raises(TasklensError, match=r"gives 1 layers .* the weights hold 2"):
        load_model(str(copy))


@pytest.mark.parametrize(
    ("change", "tensor"),
    [
        (dict(vocab_size=900), "transformer.wte.weight"),
        (dict(n_inner=48), "transformer.h.0.mlp.c_fc"),
        (dict(n_positions=32), "transformer.wpe.weight"),
    ],
)
def test_a_config_whose_sizes_differ_from_the_weights_names_the_tensor(copy, change, tensor):
    edit_config(copy, **change)
    with pytest.raises(TasklensError, match=rf"config\.json and the weights disagree on {tensor}"):
        load_model(str(copy))


def test_a_truncated_weights_file_is_refused_as_truncated(copy):
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(
        TasklensError,
        match=r"model\.safetensors' is corrupt or incomplete \(not a readable safetensors file.*truncated",
    ):
        load_model(str(copy))


def test_a_shard_the_index_names_must_be_there(copy):
    weights = load_file(copy / "model.safetensors")
    (copy / "model.safetensors").unlink()
    names = sorted(weights)
    save_file(
        {k: weights[k] for k in names[:10]}, copy / "model-00001-of-00002.safetensors", {"format": "pt"}
    )
    index = {
        "metadata": {},
        "weight_map": {k: f"model-0000{1 + (i >= 10)}-of-00002.safetensors" for i, k in enumerate(names)},
    }
    (copy / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(TasklensError, match=r"lacks the weight file\(s\) model-00002-of-00002\.safetensors"):
        load_model(str(copy))
    save_file(
        {k: weights[k] for k in names[10:]}, copy / "model-00002-of-00002.safetensors", {"format": "pt"}
    )
    assert load_model(str(copy))(torch.tensor([[1, 5, 9]])).isfinite().all()


def test_a_folder_without_tokenizer_files_names_the_tokenizer(copy):
    """It said "answer ' Europe' is empty after tokenisation"."""
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (copy / name).unlink(missing_ok=True)
    with pytest.raises(TasklensError, match=r"has no tokenizer files .*tokenizer\.save_pretrained"):
        load_model(str(copy))


def test_a_tokenizer_larger_than_the_embedding_is_refused_and_a_smaller_one_loads(tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(ORGANISM_DIR)
    for name, rows in (("small", len(tokenizer) - 8), ("padded", len(tokenizer) + 56)):
        config = LlamaConfig(
            vocab_size=rows, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        )  # fmt: skip
        LlamaForCausalLM(config).save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    with pytest.raises(
        TasklensError,
        match=rf"tokenizer has {len(tokenizer):,} tokens but its embedding only {len(tokenizer) - 8:,}",
    ):
        load_model(str(tmp_path / "small"))
    padded = load_model(str(tmp_path / "padded"))  # embeddings padded beyond the vocabulary are usual
    assert padded(padded.to_tokens(PROMPT)).shape[-1] == len(tokenizer) + 56


@pytest.mark.parametrize("spec", [None, 3, "", ["organism"]])
def test_load_model_names_what_it_got_and_what_it_needs(spec):
    """load_model(None) was a raw TypeError."""
    with pytest.raises(TasklensError, match=r"load_model needs a model spec, got .*'organism'"):
        load_model(spec)


def test_a_dtype_is_a_floating_point_torch_dtype_or_its_name():
    with pytest.raises(TasklensError, match=r"dtype must be a floating-point torch dtype, got torch\.int8"):
        load_model("organism", dtype=torch.int8)
    with pytest.raises(TasklensError, match=r"got 'float33'"):
        load_model("organism", dtype="float33")
    assert load_model("organism", dtype="bfloat16").cfg.dtype == torch.bfloat16


def test_a_floating_point_parameter_stored_as_integers_is_refused(copy):
    """Integer weights for a float parameter loaded silently (cast to float)."""
    edit_weights(copy, lambda w: w.update({"transformer.h.0.ln_1.weight": torch.ones(32, dtype=torch.int64)}))
    with pytest.raises(
        TasklensError, match=r"store transformer\.h\.0\.ln_1\.weight as I64 .* floating-point"
    ):
        load_model(str(copy))
    edit_weights(
        copy, lambda w: w.update({"transformer.h.0.ln_1.weight": torch.ones(32, dtype=torch.float16)})
    )
    assert load_model(str(copy))(torch.tensor([[1, 5, 9]])).isfinite().all()  # another float dtype is fine
