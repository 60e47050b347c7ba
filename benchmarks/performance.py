"""Speed and memory of the scorers, measured side by side in one run on the same batches.

Prints ratios and writes them to JSON:
- each gradient scorer over all layers vs a bare forward + backward (target <= 1.3x);
- activation statistics vs a bare forward (target <= 1.2x);
- integrated gradients vs captum's LayerIntegratedGradients, same steps and rule,
  equal scores checked (target >= 10x faster);
- exact ablation of every neuron vs the naive one-neuron-per-forward loop (target >= 5x);
- peak memory when scoring 10x more prompts (target <= 10 % higher).

On any other model (``--model smollm2-135m``), the scorers against the plain Hugging
Face model (``AutoModelForCausalLM``, no TransformerLens) on the same batches of known
prompts: activation statistics vs a plain forward, gradient scorers vs a plain
forward + backward (which also computes the parameter gradients the scorers skip),
the TransformerLens bridge's own overhead, and each run's peak memory.

    python benchmarks/performance.py [--model organism] [--out benchmarks/results/performance.json]
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

from tasklens.data.neurons import NeuronSet
from tasklens.evaluation.metrics import answer_logprob, answer_loss
from tasklens.interventions import ablate
from tasklens.io import write_json
from tasklens.models import load_model, model_folder
from tasklens.scoring import (
    CGVST,
    ActivationStats,
    AttributionPatching,
    ExactAblation,
    GradientAttribution,
    IntegratedGradients,
)
from tasklens.tasks.builtin import load_builtin
from tasklens.tasks.builtin.natural import has_chatml
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


def rss() -> float:
    """Resident memory of this process in MB."""
    import os

    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def machine() -> dict:
    """Where a figure was measured: cores, load when the run started, torch's threads."""
    import os

    return {
        "cores": os.cpu_count(),
        "load_1min": os.getloadavg()[0],
        "torch_threads": torch.get_num_threads(),
    }


class PeakRSS:
    """Peak resident memory (MB) above the level at entry, sampled every 2 ms in a thread."""

    def __enter__(self):
        import threading

        self.base, self.peak, self.done = rss(), 0.0, False

        def watch():
            while not self.done:
                self.peak = max(self.peak, rss())
                time.sleep(0.002)

        self.thread = threading.Thread(target=watch)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done = True
        self.thread.join()

    @property
    def growth(self) -> float:
        return max(0.0, self.peak - self.base)


def against_plain_hf(name: str, n_prompts: int, batch_size: int, repeats: int) -> dict[str, dict]:
    """Scorers on ``name`` against the same model loaded by plain Hugging Face, alternated, best of."""
    from transformers import AutoModelForCausalLM

    from tasklens.evaluation.known import load_for_model

    model = load_model(name)
    hf = AutoModelForCausalLM.from_pretrained(model_folder(name), use_safetensors=True).eval()
    task = load_for_model(model, "continent_of", "detection", n=n_prompts)
    # CGVST reads ChatML's markers: a model without that template (Gemma) skips it
    chatml = has_chatml(model.tokenizer)
    chat = load_for_model(model, "continent_of", "detection", style="chat", n=n_prompts) if chatml else task
    batches = {id(t): list(TokenizedTask.for_model(t, model).batches(batch_size)) for t in (task, chat)}

    def hf_forward(data):
        with torch.no_grad():
            for batch in batches[id(data)]:
                hf(input_ids=batch.tokens)

    def hf_forward_backward(data):
        for batch in batches[id(data)]:
            answer_loss(hf(input_ids=batch.tokens).logits, batch).sum().backward()
        hf.zero_grad(set_to_none=True)

    tokenized = TokenizedTask.for_model(task, model)
    runs = {
        "hf_forward": lambda: hf_forward(task),
        "bridge_forward": lambda: bare_forward(model, tokenized, batch_size),
        "activation_stats": lambda: ActivationStats().attribute(model, task, batch_size=batch_size),
        "hf_forward_backward": lambda: hf_forward_backward(task),
        "bridge_forward_backward": lambda: bare_forward_backward(model, tokenized, batch_size),
        "gradient_attribution": lambda: GradientAttribution().attribute(model, task, batch_size=batch_size),
        "attribution_patching": lambda: AttributionPatching().attribute(model, task, batch_size=batch_size),
    }
    if chatml:
        runs["hf_forward_backward_chat"] = lambda: hf_forward_backward(chat)
        runs["cgvst_chat"] = lambda: CGVST(n_demo=9).attribute(model, chat, batch_size=batch_size)
    seconds = dict.fromkeys(runs, float("inf"))
    memory = dict.fromkeys(runs, 0.0)
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(repeats):  # alternated, so that a busy moment of the machine hits every run alike
        for key, fn in runs.items():
            with PeakRSS() as watch:
                start = time.perf_counter()
                fn()
                seconds[key] = min(seconds[key], time.perf_counter() - start)
            memory[key] = max(memory[key], watch.growth)
    compared = {
        "activation_stats_vs_hf_forward": ("activation_stats", "hf_forward", "<= 1.2"),
        "bridge_forward_vs_hf_forward": ("bridge_forward", "hf_forward", "overhead"),
        "gradient_attribution_vs_hf_forward_backward": (
            "gradient_attribution",
            "hf_forward_backward",
            "<= 1.0",
        ),
        "attribution_patching_vs_hf_forward_backward": (
            "attribution_patching",
            "hf_forward_backward",
            "<= 1.0",
        ),
        "cgvst_vs_hf_forward_backward_chat": ("cgvst_chat", "hf_forward_backward_chat", "<= 1.0"),
        "bridge_forward_backward_vs_hf": ("bridge_forward_backward", "hf_forward_backward", "overhead"),
    }
    return {
        label: {
            "ratio": seconds[run] / seconds[reference],
            "target": target,
            "seconds": seconds[run],
            "reference_seconds": seconds[reference],
            "peak_growth_mb": memory[run],
            "reference_peak_growth_mb": memory[reference],
            "prompts": len(task) if "chat" not in run else len(chat),
            "tokens": sum(int(b.lengths.sum()) for b in batches[id(chat if "chat" in run else task)]),
        }
        for label, (run, reference, target) in compared.items()
        if run in runs
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument(
        "--prompts", type=int, default=64, help="known prompts (models other than the organism)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="default: benchmarks/results/performance[_MODEL].json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.model != "organism":
        results = against_plain_hf(args.model, args.prompts, 32, args.repeats)
        for name, row in results.items():
            print(
                f"{name:<48} {row['ratio']:6.2f}  "
                f"({row['seconds']:.2f} s vs {row['reference_seconds']:.2f} s, "
                f"peak +{row['peak_growth_mb']:.0f} MB vs +{row['reference_peak_growth_mb']:.0f} MB)  "
                f"target {row['target']}"
            )
        out = args.out or f"benchmarks/results/performance_{args.model}.json"
        write_json(out, {"model": args.model, "machine": machine(), "results": results})
        return
    args.out = args.out or "benchmarks/results/performance.json"
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
    # best of 2: the once-per-model checks of its shortcuts run in the first call only
    exact_seconds = best_of(lambda: ExactAblation().attribute(model, exact_task), repeats=2)
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
