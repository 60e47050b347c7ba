"""Speed and memory of looking at neurons, measured in one run on one model.

- vocabulary decoding of every MLP neuron to its top-10 / bottom-10 tokens (output side,
  and the gate's input side): wall time and peak memory (RSS sampled while decoding);
- top-activating contexts of every neuron over the built-in tasks' prompts: tokens per
  second, beside a plain forward pass over the same batches (the ratio is the cost of
  keeping the contexts).

    python benchmarks/views.py [--model organism] [--out benchmarks/results/views_organism.json]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import torch

from tasklens.io import write_json
from tasklens.models import ModelInfo, load_model
from tasklens.tasks.builtin import builtin_task_names, load_builtin
from tasklens.tasks.task import Task
from tasklens.views.contexts import _batches, sequences, top_contexts
from tasklens.views.vocab import decode_neurons


def rss_mb() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_while(fn):
    """(result, seconds, RSS before in MB, peak RSS in MB while ``fn`` runs)."""
    base, peak, done = rss_mb(), [rss_mb()], []

    def watch():
        while not done:
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.005)

    thread = threading.Thread(target=watch)
    thread.start()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    done.append(1)
    thread.join()
    return result, seconds, base, peak[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument("--prompts", type=int, default=40, help="prompts per built-in task for contexts")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_model(args.model)
    info = ModelInfo.of(model)
    results: dict[str, dict] = {"model": {"name": args.model, "neurons": info.n_neurons}}

    for side in ("output", "hook_pre"):
        vocab, seconds, base, peak = peak_while(lambda side=side: decode_neurons(model, side, k=10))
        results[f"decode_{side}"] = {
            "seconds": round(seconds, 2),
            "neurons": info.n_neurons,
            "rss_before_mb": round(base),
            "peak_rss_mb": round(peak),
            "example": vocab.top(info.n_layers - 1, 0)[:3],
        }
        print(
            f"decode {side:<9} {info.n_neurons} neurons in {seconds:6.1f} s, peak RSS {peak:.0f} MB",
            flush=True,
        )

    tasks = [load_builtin(name, "detection").sample(args.prompts) for name in builtin_task_names()]
    pooled = Task.from_lists(
        "all", [p for t in tasks for p in t.prompts], [a for t in tasks for a in t.answers]
    )
    seqs = sequences(model, pooled)
    n_tokens = sum(map(len, seqs))

    def plain():
        with torch.no_grad():
            for tokens in _batches(seqs, 16):
                model(tokens.clamp_min(0).to(model.cfg.device), return_type=None)

    def contexts():
        return top_contexts(model, pooled, k=10, window=8, batch_size=16)

    plain()  # warm-up: the first passes over each sequence length are slow in any case
    contexts()
    plain_times, context_times = [], []
    for _ in range(3):  # alternate, keep the best of each
        plain_times.append(peak_while(plain)[1])
        found, seconds, base, peak = peak_while(contexts)
        context_times.append(seconds)
    plain_seconds, seconds = min(plain_times), min(context_times)
    results["contexts_all_neurons"] = {
        "tokens": n_tokens,
        "tokens_per_second": round(n_tokens / seconds),
        "plain_forward_tokens_per_second": round(n_tokens / plain_seconds),
        "ratio_vs_plain_forward": round(seconds / plain_seconds, 2),
        "peak_rss_mb": round(peak),
        "kept_contexts": list(found.values.shape),
    }
    print(
        f"contexts  {n_tokens} tokens: {n_tokens / seconds:.0f} tokens/s vs plain forward "
        f"{n_tokens / plain_seconds:.0f} tokens/s ({seconds / plain_seconds:.2f}x)",
        flush=True,
    )
    out = Path(args.out or f"benchmarks/results/views_{Path(args.model).name}.json")
    write_json(out, results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
