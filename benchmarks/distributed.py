"""The same scoring work in 1 and in 2 processes (torchrun, gloo), side by side in one run.

Each configuration splits the machine's cores evenly between its processes, scores
``--prompts`` prompts with gradient attribution and evaluates them (log-probability),
and reports the wall time of that work (model loading excluded). Prints the speed-up
of 2 processes over 1 and writes JSON.

    python benchmarks/distributed.py [--model organism] [--prompts 256] [--out ...]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def work(model_name: str, n_prompts: int, out: str) -> None:
    """One rank's part (run under torchrun)."""
    import torch

    from tasklens import distributed
    from tasklens.evaluation.evaluate import evaluate
    from tasklens.models import load_model
    from tasklens.scoring import GradientAttribution
    from tasklens.tasks.builtin import load_builtin

    distributed.init()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // distributed.world_size()))
    model = load_model(model_name)
    task = load_builtin("capital_of", "detection").sample(n_prompts, seed=2)
    distributed.attribute(GradientAttribution(), model, task.sample(8))  # warm-up
    distributed.barrier()
    start = time.perf_counter()
    distributed.attribute(GradientAttribution(), model, task)
    evaluate(model, task, "logprob")
    distributed.barrier()
    seconds = time.perf_counter() - start
    if distributed.is_main():
        Path(out).write_text(json.dumps({"seconds": seconds, "ranks": distributed.world_size()}))


def launch(n: int, args) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = Path(args.out).with_suffix(f".{n}.tmp")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-addr",
        "127.0.0.1", "--master-port", str(port), __file__, "--work", "--model", args.model,
        "--prompts", str(args.prompts), "--out", str(result),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=3600)
    seconds = json.loads(result.read_text())["seconds"]
    result.unlink()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/distributed.json")
    parser.add_argument("--work", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.work:
        work(args.model, args.prompts, args.out)
        return
    times = {1: [], 2: []}
    for _ in range(args.repeats):  # alternated, so that load on the machine hits both alike
        for n in (1, 2):
            times[n].append(launch(n, args))
    best = {n: min(t) for n, t in times.items()}
    result = {
        "model": args.model,
        "prompts": args.prompts,
        "cores": os.cpu_count(),
        "load_1min_at_end": os.getloadavg()[0],
        "seconds": times,
        "speedup_2_vs_1": best[1] / best[2],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"1 process {best[1]:.1f} s, 2 processes {best[2]:.1f} s: speed-up {result['speedup_2_vs_1']:.2f}x")


if __name__ == "__main__":
    main()
