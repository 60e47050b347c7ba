"""Random-set evaluation (`tasklens.analysis.engine`) against a plain Hugging Face float32 forward.

For each model, on the same ``continent_of`` evaluation prompts (48, 24 on the Qwen models, as
the ladder evaluates), sorted into the same batches (``--batch-size``), timed alternately, the
median of ``--repeats`` rounds after a warm-up:

- ``hf_forward``: the plain Hugging Face model (``AutoModelForCausalLM``, float32, no hooks),
  all logits: the reference;
- ``float32`` and ``bfloat16``: the engine evaluating ``--sets`` random sets of a 1 % set (its
  per-layer counts from gradient attribution on 16 detection prompts) with exact match and
  answer log-probability, as `evaluation_matrices` does for every verdict.

The ratio printed is random-set evaluations per second over plain forwards per second (above 1:
a random set costs less than one plain forward of its prompts). The same random sets in both
precisions give the largest per-prompt log-probability difference and the share of exact-match
values that flip. With ``--torchrun``, the same measurement runs in 2 processes (gloo, 1 thread
each, the random sets shared between them) and reports the ratio per process against the plain
forward timed in each process alongside.

    python benchmarks/engine.py --model smollm2-135m gemma3-270m qwen2.5-coder-0.5b [--torchrun]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

#: prompts per model, as the ladder evaluates (`analyses/ladder.py`, SCALES)
PROMPTS = {"qwen2.5-coder-0.5b": 24, "qwen2.5-coder-1.5b": 16}
METRICS = ("exact_match", "logprob")


def setup(name: str, n_prompts: int | None, batch_size: int):
    """The tasklens model, the plain HF model, the prompts, their batches and a 1 % set."""
    from transformers import AutoModelForCausalLM

    from tasklens.evaluation.known import load_for_model
    from tasklens.models import load_model, model_folder
    from tasklens.scoring import GradientAttribution
    from tasklens.selection import top_percent
    from tasklens.tasks.tokenize import TokenizedTask

    model = load_model(name)
    hf = AutoModelForCausalLM.from_pretrained(model_folder(name), use_safetensors=True).eval()
    n = n_prompts or PROMPTS.get(name, 48)
    task = load_for_model(model, "continent_of", "evaluation", known=False, n=n)
    detection = load_for_model(model, "continent_of", "detection", known=False, n=16)
    found = top_percent(GradientAttribution().attribute(model, detection), 1.0).renamed("continent_of")
    batches = list(TokenizedTask.for_model(task, model).batches(batch_size, sort=True))
    return model, hf, task, found, batches


def hf_forward(hf, batches) -> None:
    with torch.no_grad():
        for batch in batches:
            hf(input_ids=batch.tokens)


def engines(model, task, batch_size: int, **kwargs):
    from tasklens.analysis.engine import RandomSets
    from tasklens.interventions import Zero

    return {
        precision: RandomSets(
            model, [task], METRICS, Zero(), batch_size=batch_size, precision=precision, **kwargs
        )
        for precision in ("float32", "bfloat16")
    }


def measure(name: str, args) -> dict:
    """One process: the alternated timings, the ratios and the precision's differences."""
    from tasklens import distributed

    model, hf, task, found, batches = setup(name, args.prompts, args.batch_size)
    engine = engines(model, task, args.batch_size)
    hf_forward(hf, batches)  # warm-up
    for e in engine.values():
        e.draws(found, 1)
    seconds: dict[str, list[float]] = {"hf_forward": [], "float32": [], "bfloat16": []}
    values = {}
    for round_ in range(args.repeats):
        distributed.barrier()
        start = time.perf_counter()
        hf_forward(hf, batches)
        seconds["hf_forward"].append(time.perf_counter() - start)
        for precision, e in engine.items():
            e.seed = 1000 * (round_ + 1)  # new random sets every round, the same in both precisions
            distributed.barrier()
            start = time.perf_counter()
            draws = e.draws(found, args.sets * distributed.world_size())
            distributed.barrier()
            seconds[precision].append((time.perf_counter() - start) / (args.sets * distributed.world_size()))
            values.setdefault(precision, []).extend(d.values[task.name] for d in draws)
    full, reduced = torch.stack(values["float32"]), torch.stack(values["bfloat16"])
    median = {k: statistics.median(v) for k, v in seconds.items()}
    ranks = distributed.world_size()
    return {
        "model": name,
        "prompts": len(task),
        "tokens": sum(int(b.lengths.sum()) for b in batches),
        "padded_tokens": sum(b.tokens.numel() for b in batches),
        "set_size": len(found),
        "processes": ranks,
        "threads_per_process": torch.get_num_threads(),
        "seconds": seconds,
        "median_seconds": median,
        # per process: each rank evaluated sets / ranks of every round's random sets
        "float32_vs_hf_forward": median["hf_forward"] / (median["float32"] * ranks),
        "bfloat16_vs_hf_forward": median["hf_forward"] / (median["bfloat16"] * ranks),
        "bfloat16_max_logprob_difference": float((reduced[..., 1] - full[..., 1]).abs().max()),
        "bfloat16_mean_logprob_difference": float((reduced[..., 1] - full[..., 1]).abs().mean()),
        "bfloat16_exact_match_flips": float((reduced[..., 0] != full[..., 0]).double().mean()),
        "random_sets_compared": int(full.shape[0]),
    }


def worker(args) -> None:
    """One rank under torchrun: measure, rank 0 writes the result."""
    from tasklens import distributed

    distributed.init()
    torch.set_num_threads(1)
    result = measure(args.model[0], args)
    if distributed.is_main():
        Path(args.out).write_text(json.dumps(result))


def under_torchrun(name: str, args) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = Path(args.out_dir) / f".engine_{name}.torchrun.json"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
        "127.0.0.1", "--master-port", str(port), __file__, "--work", "--model", name,
        "--sets", str(args.sets), "--repeats", str(args.repeats), "--batch-size", str(args.batch_size),
        "--out", str(out),
    ] + (["--prompts", str(args.prompts)] if args.prompts else [])  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, timeout=7200, env=env)
    result = json.loads(out.read_text())
    out.unlink()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["smollm2-135m"])
    parser.add_argument("--prompts", type=int, default=None, help="default: 48 (24 on Qwen2.5-Coder-0.5B)")
    parser.add_argument("--sets", type=int, default=4, help="random sets per round and precision")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--torchrun", action="store_true", help="also 2 processes under torchrun")
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--work", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.work:
        worker(args)
        return
    from tasklens.io import write_json

    torch.set_num_threads(args.threads)
    for name in args.model:
        load = os.getloadavg()[0]
        rows = [measure(name, args)]
        if args.torchrun:
            rows.append(under_torchrun(name, args))
        for row in rows:
            print(
                f"{name} ({row['prompts']} prompts, {row['processes']} process(es) x "
                f"{row['threads_per_process']} threads): random sets per second / plain HF float32 "
                f"forwards per second: float32 {row['float32_vs_hf_forward']:.2f}, bfloat16 "
                f"{row['bfloat16_vs_hf_forward']:.2f}; bfloat16 vs float32 per prompt: log-probability "
                f"within {row['bfloat16_max_logprob_difference']:.3f} (mean "
                f"{row['bfloat16_mean_logprob_difference']:.4f}), exact match flips "
                f"{row['bfloat16_exact_match_flips']:.1%}",
                flush=True,
            )
        write_json(
            Path(args.out_dir) / f"engine_{name}.json",
            {"model": name, "date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(),
             "load_1min_at_start": load, "command": " ".join(sys.argv), "results": rows},
        )  # fmt: skip


if __name__ == "__main__":
    main()
