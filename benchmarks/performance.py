"""Speed and memory of the scorers, measured side by side in one run on the same batches.

Prints ratios and writes them to JSON:
- each gradient scorer over all layers vs a bare forward + backward (target <= 1.3x);
- activation statistics vs a bare forward (target <= 1.2x);
- integrated gradients vs captum's LayerIntegratedGradients, same steps and rule,
  equal scores checked (target >= 10x faster);
- exact ablation of every neuron vs the naive one-neuron-per-forward loop (target >= 5x);
- peak memory when scoring 10x more prompts (target <= 10 % higher).

    python benchmarks/performance.py [--out benchmarks/results/performance.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

try:
    import captum  # noqa: F401 (the integrated-gradients reference)
except ImportError:
    sys.exit('benchmarks/performance.py needs captum, from the test extra: pip install -e ".[test]"')
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from references import captum_reference

from tasklens.interventions import ablate
from tasklens.io import write_json
from tasklens.metrics import answer_logprob, answer_loss
from tasklens.models import load_model
from tasklens.neurons import NeuronSet
from tasklens.scoring import (
    CGVST,
    ActivationStats,
    AttributionPatching,
    ExactAblation,
    GradientAttribution,
    IntegratedGradients,
)
from tasklens.tasks.builtin import load_builtin
from tasklens.tasks.tokenize import TokenizedTask


def best_of(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bare_forward(model, tokenized, batch_size):
    with torch.no_grad():
        for batch in tokenized.batches(batch_size):
            model(batch.tokens)


def bare_forward_backward(model, tokenized, batch_size):
    for batch in tokenized.batches(batch_size):
        answer_loss(model(batch.tokens), batch).sum().backward()
    model.zero_grad(set_to_none=True)


def naive_exact(model, task, layers: int | None = None):
    tok = TokenizedTask.for_model(task, model)
    batch = next(tok.batches(len(task)))
    out = torch.zeros(model.cfg.n_layers, model.cfg.d_mlp)
    with torch.no_grad():
        clean = answer_logprob(model(batch.tokens), batch)
        for layer in range(layers or model.cfg.n_layers):
            for index in range(model.cfg.d_mlp):
                with ablate(model, NeuronSet.from_pairs([(layer, index)], tuple(out.shape))):
                    out[layer, index] = (clean - answer_logprob(model(batch.tokens), batch)).sum()
    return out


PEAK_CODE = """
import os, threading, time
from tasklens.models import load_model
from tasklens.scoring import GradientAttribution
from tasklens.tasks.builtin import load_builtin

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

model = load_model("organism")
task = load_builtin("addition", "train").head(%d)
GradientAttribution().attribute(model, task.head(32), batch_size=32)  # warm up allocator and caches
base, peak, done = rss(), [0.0], []

def watch():
    while not done:
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)

thread = threading.Thread(target=watch)
thread.start()
GradientAttribution().attribute(model, task, batch_size=32)
done.append(1)
thread.join()
print(base, peak[0])
"""


def peak_memory(n_prompts: int) -> tuple[float, float]:
    """RSS (MB) before scoring and its peak while scoring ``n_prompts`` (fresh process)."""
    result = subprocess.run(
        [sys.executable, "-c", PEAK_CODE % n_prompts], capture_output=True, text=True, check=True
    )
    base, peak = result.stdout.strip().splitlines()[-1].split()
    return float(base), float(peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/performance.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_model("organism")
    task = load_builtin("capital_of", "detection").sample(256, seed=2)
    marked = load_builtin("addition", "detection").sample(128, seed=2)
    tokenized = TokenizedTask.for_model(task, model)
    bs = 32
    results: dict[str, dict] = {}

    fwd = best_of(lambda: bare_forward(model, tokenized, bs))
    fwd_bwd = best_of(lambda: bare_forward_backward(model, tokenized, bs))
    stats = best_of(lambda: ActivationStats().attribute(model, task, batch_size=bs))
    results["activation_stats_vs_forward"] = {"ratio": stats / fwd, "target": "<= 1.2"}
    for label, scorer, data in (
        ("gradient_attribution", GradientAttribution(), task),
        ("attribution_patching", AttributionPatching(), task),
        ("cgvst", CGVST(), marked),
    ):
        seconds = best_of(lambda scorer=scorer, data=data: scorer.attribute(model, data, batch_size=bs))
        reference = (
            fwd_bwd
            if data is task
            else best_of(lambda: bare_forward_backward(model, TokenizedTask.for_model(marked, model), bs))
        )
        results[f"{label}_vs_forward_backward"] = {"ratio": seconds / reference, "target": "<= 1.3"}

    ig_task = task.head(8)
    ours = IntegratedGradients(steps=20)
    ig_seconds = best_of(lambda: ours.per_prompt(model, ig_task), repeats=2)
    start = time.perf_counter()
    reference = captum_reference(model, ig_task, steps=20)
    captum_seconds = time.perf_counter() - start
    max_diff = float((ours.per_prompt(model, ig_task) - reference).abs().max())
    results["integrated_gradients_speedup_vs_captum"] = {
        "ratio": captum_seconds / ig_seconds,
        "target": ">= 10",
        "max_abs_diff": max_diff,
    }

    exact_task = task.head(8)
    exact_seconds = best_of(lambda: ExactAblation().attribute(model, exact_task), repeats=1)
    start = time.perf_counter()
    naive_exact(model, exact_task, layers=1)
    naive_seconds = (time.perf_counter() - start) * model.cfg.n_layers  # one layer timed, scaled
    results["exact_ablation_speedup_vs_naive"] = {"ratio": naive_seconds / exact_seconds, "target": ">= 5"}

    (base_small, small), (base_large, large) = peak_memory(200), peak_memory(2000)
    results["peak_memory_10x_prompts"] = {
        "ratio": large / small,
        "target": "<= 1.10",
        "peak_mb_200_prompts": small,
        "peak_mb_2000_prompts": large,
        "growth_while_scoring_mb_200": small - base_small,
        "growth_while_scoring_mb_2000": large - base_large,
    }

    for name, row in results.items():
        print(f"{name:<45} {row['ratio']:8.2f}   target {row['target']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(
        args.out,
        {
            k: {kk: (round(v, 4) if isinstance(v, float) else v) for kk, v in row.items()}
            for k, row in results.items()
        },
    )
    print(json.dumps(results["integrated_gradients_speedup_vs_captum"]))


if __name__ == "__main__":
    main()
