"""Tiny random-weight models of every family tasklens claims, and plain Hugging Face access to
their parts: the independent side of the conformance suite (no TransformerLens, no tasklens).

Each model is built from its ``transformers`` config (no download) with the organism's
tokenizer, norm weights drawn in [0.2, 2] (or their offsets, for Gemma's ``1 + weight``) and
every bias non-zero, so a shortcut that leaves out a norm or a bias shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

CAPS = dict(final_logit_softcapping=0.5, attn_logit_softcapping=2.0)
SIZE = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, max_position_embeddings=64)

#: ``model_type`` -> config overrides (3 layers: first, inner and last are all different)
FAMILIES: dict[str, dict] = {
    "gpt2": dict(n_positions=64, n_embd=32, n_inner=64, n_layer=3, n_head=2),
    "gpt_neox": dict(**SIZE, num_hidden_layers=3, use_parallel_residual=True),
    "phi": dict(**SIZE, num_hidden_layers=3),
    # soft-capping small enough to bend these models' logits and attention scores; Gemma-3 releases
    # cap neither (TransformerLens 4.3's Gemma-3 attention leaves attention soft-capping out)
    "gemma2": dict(**SIZE, num_hidden_layers=3, num_key_value_heads=1, head_dim=16, **CAPS),
    "gemma3_text": dict(
        **SIZE, num_hidden_layers=3, num_key_value_heads=1, head_dim=16, final_logit_softcapping=0.5
    ),
    "qwen2": dict(**SIZE, num_hidden_layers=3, num_key_value_heads=1),
    "qwen3": dict(**SIZE, num_hidden_layers=3, num_key_value_heads=1, head_dim=16),
    "olmo2": dict(**SIZE, num_hidden_layers=3, num_key_value_heads=2),
    "mistral": dict(**SIZE, num_hidden_layers=3, num_key_value_heads=1),
    "llama": dict(**SIZE, num_hidden_layers=3, num_key_value_heads=1, attention_bias=True, mlp_bias=True),
}

#: names of the MLP's down projection (its input is ``hook_post``), gate / input projection
DOWN = ("down_proj", "c_proj", "dense_4h_to_h", "fc2")
GATE_OR_IN = ("gate_proj", "c_fc", "dense_h_to_4h", "fc1")
UP = ("up_proj",)


def build_family(folder: Path, family: str, seed: int = 0) -> Path:
    """Save a tiny random ``family`` model (weights as described above) with the organism's tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tasklens.models import ORGANISM_DIR

    tokenizer = AutoTokenizer.from_pretrained(ORGANISM_DIR)
    config = AutoConfig.for_model(
        family, vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=0, **FAMILIES[family]
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    generator = torch.Generator().manual_seed(seed + 1)
    offset = family.startswith("gemma")  # Gemma's RMSNorm multiplies by 1 + weight
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim != 1:
                continue
            if _is_norm(model, name):
                drawn = torch.rand(param.shape, generator=generator) * 1.8 + 0.2
                param.copy_(drawn - 1 if offset else drawn)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _is_norm(model, name: str) -> bool:
    owner = model.get_submodule(name.rsplit(".", 1)[0])
    return isinstance(owner, nn.LayerNorm) or "Norm" in type(owner).__name__


@dataclass
class Plain:
    """A plain Hugging Face causal LM and its parts, found by module names alone."""

    model: nn.Module
    family: str

    @classmethod
    def load(cls, folder: Path, family: str) -> Plain:
        from transformers import AutoModelForCausalLM

        # eager attention: scaled-dot-product kernels leave out Gemma's attention soft-capping
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, attn_implementation="eager"
        ).eval()
        return cls(model, family)

    @property
    def layers(self) -> list[nn.Module]:
        for path in ("model.layers", "transformer.h", "gpt_neox.layers"):
            try:
                return list(self.model.get_submodule(path))
            except AttributeError:
                continue
        raise AttributeError(self.family)

    def mlp_part(self, layer: int, names: tuple[str, ...]) -> nn.Module:
        mlp = self.layers[layer].mlp
        return next(getattr(mlp, n) for n in names if hasattr(mlp, n))

    def down(self, layer: int) -> nn.Module:
        return self.mlp_part(layer, DOWN)

    def w_out(self, layer: int) -> torch.Tensor:
        """``[d_mlp, d_model]``: the row each neuron writes (GPT-2's Conv1D stores it as is)."""
        down = self.down(layer)
        weight = down.weight.detach()
        return weight if type(down).__name__ == "Conv1D" else weight.T

    def post_mlp_norm(self, layer: int) -> nn.Module | None:
        return getattr(self.layers[layer], "post_feedforward_layernorm", None)

    def pre_mlp_norm(self, layer: int) -> nn.Module | None:
        """The norm the MLP reads through; None where the block normalises outputs only (OLMo-2)."""
        block = self.layers[layer]
        if hasattr(block, "post_feedforward_layernorm") and not hasattr(block, "pre_feedforward_layernorm"):
            return None
        names = ("pre_feedforward_layernorm", "ln_2", "post_attention_layernorm", "input_layernorm")
        return next(getattr(block, n) for n in names if hasattr(block, n))

    @property
    def final_norm(self) -> nn.Module:
        for path in ("model.norm", "model.final_layernorm", "transformer.ln_f", "gpt_neox.final_layer_norm"):
            try:
                return self.model.get_submodule(path)
            except AttributeError:
                continue
        raise AttributeError(self.family)

    @property
    def embedding(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight.detach()

    def logits(self, ids: list[int], pre_hooks: dict[int, callable] | None = None) -> torch.Tensor:
        """``[pos, vocab]`` of one unpadded sequence; ``pre_hooks[layer](act)`` may replace the
        down projection's input (the neuron activations) of that layer."""
        handles = [
            self.down(layer).register_forward_pre_hook(lambda module, args, f=f: (f(args[0]),))
            for layer, f in (pre_hooks or {}).items()
        ]
        try:
            return self.model(torch.tensor([ids])).logits[0]
        finally:
            for handle in handles:
                handle.remove()


def sequence_ids(task, model) -> list[tuple[list[int], list[int]]]:
    """Per prompt of ``task``: (prompt ids, prompt + answer ids) as tasklens tokenises them."""
    from tasklens.tasks.tokenize import TokenizedTask

    tokenized = TokenizedTask.for_model(task, model)
    pairs = zip(tokenized.prompt_ids, tokenized.answer_ids, strict=True)
    return [(list(prompt), list(prompt) + list(answer)) for prompt, answer in pairs]


def answer_logprob(logits: torch.Tensor, n_prompt: int, ids: list[int]) -> torch.Tensor:
    """Sum of log p(answer token | everything before it), teacher forced."""
    logp = logits[n_prompt - 1 : len(ids) - 1].double().log_softmax(-1)
    return logp.gather(-1, torch.tensor(ids[n_prompt:])[:, None]).sum()


def frozen_jvp(norm, x: torch.Tensor, direction: torch.Tensor, t: float = 1e-3) -> torch.Tensor:
    """The change of ``norm``'s output per unit of ``direction`` with its scale held at its value
    at ``x`` (one position), from the module's own outputs: the part of the direction along the
    (centred) input is passed as ``norm(x) - bias``, the rest by a central difference, along
    which the scale moves only at second order."""
    centring = isinstance(norm, torch.nn.LayerNorm)
    centre = (lambda v: v - v.mean(-1, keepdim=True)) if centring else (lambda v: v)
    bias = norm.bias if getattr(norm, "bias", None) is not None else torch.zeros(())
    cx, cd = centre(x), centre(direction)
    along = (cd @ cx) / (cx @ cx)
    across = cd - along * cx
    scale = float(cx.norm() / across.norm().clamp_min(1e-30)) * t
    with torch.no_grad():
        out = norm(x)
        moved = (norm(x + scale * across) - norm(x - scale * across)) / (2 * scale)
    return moved + along * (out - bias)


# --- the conformance table ------------------------------------------------------------------------
#: (family, feature) -> (status, largest difference measured); filled by the conformance tests
RESULTS: dict[tuple[str, str], tuple[str, float]] = {}
STATUSES = ("verified", "falls back", "not supported")
TABLE = Path(__file__).resolve().parents[1] / "docs" / "conformance.md"


def record(family: str, feature: str, difference: float, status: str = "verified") -> None:
    """Note one cell of the conformance table (call it after the cell's assertions passed)."""
    assert status in STATUSES, status
    RESULTS[(family, feature)] = (status, float(difference))
