"""Peak memory of a model in float32 and in bfloat16, measured side by side.

Each dtype runs in its own process (so one's peak cannot hide the other's): load the model,
then score the gradient attribution of ``--prompts`` known prompts; the process's peak
resident memory (``ru_maxrss``) after loading and after scoring is reported beside the
seconds each took, and their bfloat16 / float32 ratios.

    python benchmarks/memory.py --model qwen2.5-coder-1.5b [--out benchmarks/results/memory_MODEL.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

DTYPES = ("float32", "bfloat16")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


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
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.dtype:
        print(json.dumps(measure(args.model, args.dtype, args.prompts)))
        return
    from tasklens.io import write_json

    rows = {}
    for dtype in DTYPES:
        command = [sys.executable, __file__, "--model", args.model, "--prompts", str(args.prompts)]
        done = subprocess.run([*command, "--dtype", dtype], capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f"measuring {dtype} failed:\n{done.stderr[-2000:]}")
        rows[dtype] = json.loads(done.stdout.strip().splitlines()[-1])
        row = rows[dtype]
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
