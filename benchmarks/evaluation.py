"""Teacher-forced evaluation against a plain Hugging Face forward, measured side by side.

For ``continent_of`` prompts in the natural form, and in the chat form where the model has a
ChatML template, times (alternated, best of ``--repeats``) on the same sorted batches:

- ``hf_forward``: the plain Hugging Face model (``AutoModelForCausalLM``), all logits;
- ``evaluate``: `evaluate_metrics` (exact match and answer log-probability) on the bridge,
  logits only in each row's answer window;
- ``evaluate_shared_prefix``: the same with ``share_prefix=True`` (the prompts' common
  beginning run once, each row's rest on its key-value cache), checked to give the same values.

    python benchmarks/evaluation.py --model smollm2-135m   # benchmarks/results/evaluation_smollm2-135m.json
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from tasklens.evaluation.evaluate import evaluate_metrics
from tasklens.evaluation.known import load_for_model
from tasklens.io import write_json
from tasklens.models import load_model, model_folder
from tasklens.tasks.builtin.natural import has_chatml
from tasklens.tasks.tokenize import TokenizedTask

METRICS = ("exact_match", "logprob")


def measure(model, hf, task, batch_size: int, repeats: int) -> dict:
    """Seconds of each run on ``task`` (best of ``repeats``), their ratios, and the largest
    difference between the shared-prefix values and the whole-sequence ones."""
    batches = list(TokenizedTask.for_model(task, model).batches(batch_size, sort=True))

    def hf_forward():
        with torch.no_grad():
            for batch in batches:
                hf(input_ids=batch.tokens)

    runs = {
        "hf_forward": hf_forward,
        "evaluate": lambda: evaluate_metrics(model, task, METRICS, batch_size),
        "evaluate_shared_prefix": lambda: evaluate_metrics(model, task, METRICS, batch_size, True),
    }
    values = {key: fn() for key, fn in runs.items()}  # warm-up, and the values compared
    seconds = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for key, fn in runs.items():
            start = time.perf_counter()
            fn()
            seconds[key] = min(seconds[key], time.perf_counter() - start)
    return {
        "prompts": len(task),
        "tokens": sum(int(b.lengths.sum()) for b in batches),
        "padded_tokens": sum(b.tokens.numel() for b in batches),
        "seconds": seconds,
        "evaluate_vs_hf_forward": seconds["evaluate"] / seconds["hf_forward"],
        "shared_prefix_vs_evaluate": seconds["evaluate_shared_prefix"] / seconds["evaluate"],
        "max_abs_diff_shared_prefix": float(
            (values["evaluate_shared_prefix"] - values["evaluate"]).abs().max()
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="default: benchmarks/results/evaluation_MODEL.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    load = os.getloadavg()[0]
    from transformers import AutoModelForCausalLM

    model = load_model(args.model)
    hf = AutoModelForCausalLM.from_pretrained(model_folder(args.model), use_safetensors=True).eval()
    styles = ["natural", "chat"] if has_chatml(model.tokenizer) else ["natural"]
    results = {}
    for style in styles:
        task = load_for_model(model, "continent_of", "evaluation", known=False, style=style, shots=1)
        row = measure(model, hf, task.sample(args.prompts, seed=3), args.batch_size, args.repeats)
        results[style] = row
        print(
            f"{style:<8} {row['prompts']} prompts, {row['tokens']} tokens: evaluate / plain HF forward "
            f"{row['evaluate_vs_hf_forward']:.2f}; shared prefix / evaluate "
            f"{row['shared_prefix_vs_evaluate']:.2f} "
            f"(values differ by at most {row['max_abs_diff_shared_prefix']:.1e}); seconds {row['seconds']}"
        )
    out = args.out or f"benchmarks/results/evaluation_{args.model}.json"
    setup = {"model": args.model, "cores": os.cpu_count(), "load_1min_at_start": load}
    write_json(out, {**setup, "batch_size": args.batch_size, "repeats": args.repeats, "results": results})


if __name__ == "__main__":
    main()
