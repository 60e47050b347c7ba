"""Speed and memory of looking at neurons, measured in one run on one model.

- vocabulary decoding of MLP neurons to their top-10 / bottom-10 tokens (output side, and the
  gate's input side): wall time, peak memory (RSS sampled while decoding), and the achieved
  FLOP rate beside a plain ``torch.matmul`` of the same shapes on the same machine,
  alternated, best of two each (decoding is ``neurons x d_model x vocab`` multiply-adds;
  ``--decode-per-layer N`` decodes the first N neurons of every layer, so the largest models
  are measured in minutes);
- top-activating contexts of every neuron over the built-in tasks' prompts: tokens per
  second, beside a plain forward pass over the same batches (the throughput ratio is what
  keeping the contexts leaves of a forward's speed).

    python benchmarks/views.py [--model organism] [--decode-per-layer N] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import torch

from tasklens.data.neurons import NeuronSet
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


CHUNK = 512  # decode_neurons' default


def chunk_sizes(info: ModelInfo, chosen: NeuronSet | None) -> list[int]:
    """The neuron counts of the matrix products decoding makes: per layer, chunks of CHUNK."""
    per_layer = [info.d_mlp] * info.n_layers if chosen is None else chosen.mask.sum(1).tolist()
    return [min(CHUNK, n - lo) for n in per_layer for lo in range(0, n, CHUNK)]


def plain_matmul(sizes: list[int], d_model: int, vocab: int) -> float:
    """Seconds for ``torch.matmul`` of the same shapes as decoding: one [n, d_model] x
    [d_model, vocab] product per chunk (after a warm-up)."""
    right = torch.randn(d_model, vocab)
    lefts = {n: torch.randn(n, d_model) for n in set(sizes)}
    torch.matmul(lefts[sizes[0]], right)
    start = time.perf_counter()
    for n in sizes:
        torch.matmul(lefts[n], right)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument("--prompts", type=int, default=40, help="prompts per built-in task for contexts")
    parser.add_argument(
        "--decode-per-layer", type=int, default=0, help="decode the first N neurons per layer"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_model(args.model)
    info = ModelInfo.of(model)
    results: dict[str, dict] = {"model": {"name": args.model, "neurons": info.n_neurons}}

    chosen = None
    if args.decode_per_layer:
        mask = torch.zeros(info.shape, dtype=torch.bool)
        mask[:, : args.decode_per_layer] = True
        chosen = NeuronSet(mask, "decoded", {"selection": f"first {args.decode_per_layer} of every layer"})
    for side in ("output", "hook_pre"):
        seconds, reference = float("inf"), float("inf")
        shapes = chunk_sizes(info, chosen), int(model.cfg.d_model), int(model.cfg.d_vocab)
        for _ in range(2):  # alternated, best of two each, so a busy moment hits both alike
            vocab, took, base, peak = peak_while(
                lambda side=side: decode_neurons(model, side, k=10, chunk=CHUNK, neurons=chosen)
            )
            seconds = min(seconds, took)
            reference = min(reference, plain_matmul(*shapes))
        n = info.n_neurons if chosen is None else len(chosen)
        flop = 2 * n * int(model.cfg.d_model) * int(model.cfg.d_vocab)
        results[f"decode_{side}"] = {
            "seconds": round(seconds, 2),
            "neurons": n,
            "gflop": round(flop / 1e9, 1),
            "gflop_per_second": round(flop / seconds / 1e9, 1),
            "plain_matmul_gflop_per_second": round(flop / reference / 1e9, 1),
            "ratio_vs_plain_matmul": round(reference / seconds, 2),
            "target": ">= 0.7",
            "rss_before_mb": round(base),
            "peak_rss_mb": round(peak),
            "example": vocab.top(info.n_layers - 1, 0)[:3],
        }
        print(
            f"decode {side:<9} {n} neurons in {seconds:6.1f} s ({flop / seconds / 1e9:.0f} GFLOP/s; plain "
            f"matmul of the same shapes {flop / reference / 1e9:.0f} GFLOP/s, {reference / seconds:.2f}x), "
            f"peak RSS {peak:.0f} MB",
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
        "throughput_vs_plain_forward": round(plain_seconds / seconds, 2),
        "target": ">= 0.9",
        "peak_rss_mb": round(peak),
        "kept_contexts": list(found.values.shape),
    }
    print(
        f"contexts  {n_tokens} tokens: {n_tokens / seconds:.0f} tokens/s vs plain forward "
        f"{n_tokens / plain_seconds:.0f} tokens/s ({plain_seconds / seconds:.2f}x its throughput)",
        flush=True,
    )
    out = Path(args.out or f"benchmarks/results/views_{Path(args.model).name}.json")
    write_json(out, results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
