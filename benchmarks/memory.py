"""Peak memory of a model in float32 and in bfloat16, measured side by side.

Each dtype runs in its own process (so one's peak cannot hide the other's): load the model
from a folder stored in that dtype, then score the gradient attribution of ``--prompts``
prompts; the process's peak resident memory (``ru_maxrss``) after loading and after scoring
is reported beside the seconds each took, and their bfloat16 / float32 ratios. Where the
downloaded folder holds the other dtype, a separate process first writes a copy in the
measured one to a temporary folder (what ``tasklens models download NAME --dtype bfloat16``
would store; casting on load would read, and count, the float32 weights too); the
downloaded folder is only read.

    python benchmarks/memory.py --model qwen2.5-coder-1.5b [--out benchmarks/results/memory_MODEL.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DTYPES = ("float32", "bfloat16")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def stored_dtype(name: str) -> str:
    from tasklens.models import model_folder

    config = json.loads((model_folder(name) / "config.json").read_text())
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def copy_in(name: str, dtype: str, folder: str) -> None:
    """In this process: write the model ``name`` to ``folder`` with its weights in ``dtype``."""
    import torch
    from transformers import AutoModelForCausalLM

    from tasklens.models import model_folder

    source = model_folder(name)
    model = AutoModelForCausalLM.from_pretrained(source, use_safetensors=True, dtype=getattr(torch, dtype))
    model.save_pretrained(folder)
    for path in source.iterdir():  # the tokenizer and chat template
        if path.is_file() and path.suffix != ".safetensors" and not (Path(folder) / path.name).exists():
            shutil.copy(path, folder)


def measure(name: str, dtype: str, n_prompts: int) -> dict:
    """In this process: load ``name`` in ``dtype``, score ``n_prompts`` prompts, report peaks."""
    import torch

    from tasklens.evaluation.known import load_for_model
    from tasklens.models import load_model
    from tasklens.scoring import GradientAttribution

    torch.set_num_threads(2)
    start = time.perf_counter()
    model = load_model(name, dtype=getattr(torch, dtype))
    loaded = time.perf_counter() - start
    after_load = peak_mb()
    task = load_for_model(model, "continent_of", "detection", known=False, n=n_prompts)
    start = time.perf_counter()
    scores = GradientAttribution().attribute(model, task, batch_size=n_prompts)
    return {
        "dtype": dtype,
        "parameters_mb": round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20),
        "load_seconds": round(loaded, 1),
        "peak_after_load_mb": round(after_load),
        "score_seconds": round(time.perf_counter() - start, 1),
        "peak_after_scoring_mb": round(peak_mb()),
        "prompts": len(task),
        "scores_finite": bool(torch.isfinite(scores.values).all()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--dtype", choices=DTYPES, help=argparse.SUPPRESS)  # one child's measurement
    parser.add_argument("--copy-to", help=argparse.SUPPRESS)  # with --dtype: write a copy instead
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.dtype and args.copy_to:
        copy_in(args.model, args.dtype, args.copy_to)
        return
    if args.dtype:
        print(json.dumps(measure(args.model, args.dtype, args.prompts)))
        return
    from tasklens.io import write_json

    def child(*extra: str) -> str:
        command = [sys.executable, __file__, "--prompts", str(args.prompts), *extra]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f"{' '.join(extra)} failed:\n{done.stderr[-2000:]}")
        return done.stdout

    rows = {}
    for dtype in DTYPES:
        with tempfile.TemporaryDirectory(prefix=f"tasklens-{dtype}-") as scratch:
            model = args.model
            if stored_dtype(args.model) != dtype:
                child("--model", args.model, "--dtype", dtype, "--copy-to", scratch)
                model = scratch
            rows[dtype] = json.loads(child("--model", model, "--dtype", dtype).strip().splitlines()[-1])
        row = rows[dtype]
        row["stored_as"] = dtype if model == args.model else f"{dtype} copy (save_pretrained)"
        print(
            f"{args.model} {dtype:<8}: parameters {row['parameters_mb']} MB; peak "
            f"{row['peak_after_load_mb']} MB after loading ({row['load_seconds']} s), "
            f"{row['peak_after_scoring_mb']} MB after scoring {row['prompts']} prompts "
            f"({row['score_seconds']} s)",
            flush=True,
        )
    ratios = {
        key: round(rows["bfloat16"][key] / rows["float32"][key], 2)
        for key in ("parameters_mb", "peak_after_load_mb", "peak_after_scoring_mb", "score_seconds")
    }
    print("bfloat16 / float32: " + ", ".join(f"{k} {v}" for k, v in ratios.items()))
    out = Path(args.out or f"benchmarks/results/memory_{args.model}.json")
    write_json(out, {"model": args.model, "dtypes": rows, "bfloat16_vs_float32": ratios})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
