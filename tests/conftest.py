from __future__ import annotations

import pytest

from tasklens.models import load_model


@pytest.fixture(scope="session")
def organism():
    """The shipped organism, loaded once for the whole session."""
    return load_model("organism")


@pytest.fixture
def tiny_model(tmp_path):
    """Factory: ``tiny_model(arch, n_layers)`` loads a random-init model of another architecture."""

    def make(arch: str, n_layers: int = 2):
        return load_model(str(build_tiny(tmp_path / f"{arch}_{n_layers}", arch, n_layers)))

    return make


def build_tiny(folder, arch: str, n_layers: int = 2, seed: int = 0):
    """A random-init Hugging Face model of another architecture, saved with the organism's tokenizer."""
    import torch
    from transformers import (
        AutoTokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    from tasklens.models import ORGANISM_DIR

    tokenizer = AutoTokenizer.from_pretrained(ORGANISM_DIR)
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    if arch == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=vocab,
                n_positions=64,
                n_embd=32,
                n_layer=n_layers,
                n_head=2,
                bos_token_id=1,
                eos_token_id=2,
            )
        )
    elif arch == "pythia":
        model = GPTNeoXForCausalLM(
            GPTNeoXConfig(
                vocab_size=vocab,
                hidden_size=32,
                intermediate_size=128,
                num_hidden_layers=n_layers,
                num_attention_heads=2,
                max_position_embeddings=64,
                bos_token_id=1,
                eos_token_id=2,
            )
        )
    elif arch == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=vocab,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=n_layers,
                num_attention_heads=2,
                num_key_value_heads=2,
                max_position_embeddings=64,
                bos_token_id=1,
                eos_token_id=2,
                pad_token_id=0,
                initializer_range=0.3,
            )
        )
    else:
        raise ValueError(arch)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def pytest_terminal_summary(terminalreporter):
    """Print how many reliability cases (tests/test_reliability.py) were replayed."""
    outcomes = {}
    for key in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(key, []):
            if "test_reliability.py" in report.nodeid and report.when in ("call", "setup"):
                if key != "passed" or report.when == "call":
                    outcomes[key] = outcomes.get(key, 0) + 1
    if outcomes:
        total = sum(outcomes.values())
        parts = ", ".join(f"{n} {k}" for k, n in outcomes.items())
        terminalreporter.write_line(f"reliability: {total} cases replayed ({parts})")
