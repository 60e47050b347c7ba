"""A neuron's page: everything tasklens knows about one neuron, in one place.

Its scores under each method and task that were run (value and rank), the sets
that contain it, the tokens its weights promote and suppress, its top contexts,
and the effect of zero-ablating it alone on each task. `NeuronPage` is plain
data; `to_text` prints it (``tasklens neuron L.N``) and `to_html` renders it for
the report (contexts as circuitsvis coloured tokens, escaped, inline bundle).
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tasklens.data.neurons import NeuronScores, NeuronSet
from tasklens.errors import TasklensError
from tasklens.evaluation.evaluate import evaluate
from tasklens.interventions import ablate
from tasklens.models import ModelInfo
from tasklens.tasks.task import Task
from tasklens.views.contexts import TopContexts, check_count, top_contexts
from tasklens.views.vocab import NeuronVocab, decode_neurons


def parse_neuron(spec: str) -> tuple[int, int]:
    """``"3.17"`` or ``"L3N17"`` -> (3, 17)."""
    match = re.fullmatch(r"L?([0-9]+)[.N]([0-9]+)", spec.strip(), re.IGNORECASE)
    if match is None:
        raise TasklensError(f"Name a neuron as LAYER.INDEX (e.g. 3.17) or L3N17, got {spec!r}")
    return int(match[1]), int(match[2])


def printable(text: str) -> str:
    """``text`` with control, format and line-separator characters escaped (``\\x07``, ``\\n``,
    ``\\u202e``), so that model text cannot act on the terminal it is printed to."""
    return "".join(
        char.encode("unicode_escape").decode("ascii") if _invisible(unicodedata.category(char)) else char
        for char in text
    )


def _invisible(category: str) -> bool:
    return category[0] == "C" or category in ("Zl", "Zp")


@dataclass
class NeuronPage:
    """Evidence about neuron ``index`` of layer ``layer`` (plain data)."""

    layer: int
    index: int
    model: str
    scores: list[dict[str, Any]] = field(default_factory=list)
    sets: list[str] = field(default_factory=list)
    promotes: list[tuple[str, float]] = field(default_factory=list)
    suppresses: list[tuple[str, float]] = field(default_factory=list)
    reads: list[tuple[str, float]] = field(default_factory=list)
    reads_side: str = ""
    contexts: list[dict[str, Any]] = field(default_factory=list)
    ablation: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"L{self.layer}N{self.index}"

    def to_text(self) -> str:
        lines = [f"neuron {self.label} of {self.model}"]
        if self.scores:
            lines.append("scores:")
            lines += [
                f"  {s['task']:<18} {s['method']:<22} {s['score']:+.4g} (rank {s['rank']} of {s['of']})"
                for s in self.scores
            ]
        if self.sets:
            lines.append(f"in the sets of: {', '.join(self.sets)}")
        if self.promotes:
            lines.append("promotes (W_out through the unembedding): " + _tokens(self.promotes))
            lines.append("suppresses: " + _tokens(self.suppresses))
        if self.reads:
            lines.append(f"read from the embedding by {self.reads_side}: " + _tokens(self.reads))
        if self.contexts:
            lines.append("top contexts (activation: text, [centre token]):")
            for c in self.contexts:
                text = "".join(f"[{t}]" if i == c["centre"] else t for i, t in enumerate(c["tokens"]))
                lines.append(f"  {c['value']:7.3f}: {text}")
        if self.ablation:
            lines.append("zero-ablating this neuron alone (mean over prompts):")
            lines += [
                f"  {a['task']:<18} logprob {a['logprob_change']:+.4f} nats, "
                f"next-token accuracy {a['accuracy']:.3f} -> {a['accuracy_ablated']:.3f}"
                for a in self.ablation
            ]
        return "\n".join(printable(line) for line in lines)

    def to_html(self) -> str:
        """The page as an HTML fragment (for the report)."""
        import circuitsvis as cv

        parts = [f'<section class="neuron" id="{self.label}"><h3>{self.label}</h3>']
        if self.scores:
            rows = "".join(
                f"<tr><td class='name'>{html.escape(s['task'])}</td>"
                f"<td class='name'>{html.escape(s['method'])}</td>"
                f"<td>{s['score']:.4g}</td><td>{s['rank']} / {s['of']}</td></tr>"
                for s in self.scores
            )
            parts.append(
                f"<table><tr><th>task</th><th>method</th><th>score</th><th>rank</th></tr>{rows}</table>"
            )
        if self.sets:
            parts.append(f"<p>In the sets of: {html.escape(', '.join(self.sets))}</p>")
        if self.promotes:
            parts.append(
                f"<p>Promotes: <code>{html.escape(_tokens(self.promotes))}</code><br>"
                f"Suppresses: <code>{html.escape(_tokens(self.suppresses))}</code></p>"
            )
        if self.ablation:
            rows = "".join(
                f"<tr><td class='name'>{html.escape(a['task'])}</td><td>{a['logprob_change']:+.4f}</td>"
                f"<td>{a['accuracy']:.3f} &rarr; {a['accuracy_ablated']:.3f}</td></tr>"
                for a in self.ablation
            )
            parts.append(
                "<table><tr><th>task</th><th>log-prob change (nats)</th><th>next-token accuracy</th></tr>"
                f"{rows}</table>"
            )
        for c in self.contexts:
            view = cv.tokens.colored_tokens(
                tokens=[html.escape(t) for t in c["tokens"]], values=[float(v) for v in c["activations"]]
            )
            parts.append(f'<div class="view">{c["value"]:.3f}: {view.local_src}</div>')
        parts.append("</section>")
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.to_text()


def _tokens(pairs: Sequence[tuple[str, float]]) -> str:
    return " | ".join(repr(t)[1:-1] for t, _ in pairs)


def scores_rows(scores: dict[str, NeuronScores], layer: int, index: int) -> list[dict[str, Any]]:
    """The neuron's score and rank (1 = best) in each task's scores."""
    rows = []
    for name, s in scores.items():
        flat = layer * s.shape[1] + index
        rank = int((s.ranking() == flat).nonzero()[0, 0]) + 1
        rows.append(
            dict(
                task=name,
                method=s.method,
                score=float(s.values[layer, index]),
                rank=rank,
                of=s.values.numel(),
            )
        )
    return rows


@torch.no_grad()
def ablation_rows(model, layer: int, index: int, tasks: Sequence[Task], batch_size: int = 32) -> list[dict]:
    """The effect on each task of zero-ablating the neuron alone."""
    neuron = NeuronSet.from_pairs([(layer, index)], ModelInfo.of(model).shape, f"L{layer}N{index}")
    rows = []
    for task in tasks:
        before = {m: evaluate(model, task, m, batch_size) for m in ("logprob", "next_token")}
        with ablate(model, neuron):
            after = {m: evaluate(model, task, m, batch_size) for m in ("logprob", "next_token")}
        rows.append(
            dict(
                task=task.name,
                logprob_change=after["logprob"] - before["logprob"],
                accuracy=before["next_token"],
                accuracy_ablated=after["next_token"],
            )
        )
    return rows


def neuron_pages(
    model,
    neurons: Sequence[tuple[int, int]],
    tasks: Sequence[Task] = (),
    scores: dict[str, NeuronScores] | None = None,
    sets: Sequence[NeuronSet] = (),
    n_tokens: int = 8,
    n_contexts: int = 4,
    vocab: NeuronVocab | None = None,
    contexts: TopContexts | None = None,
) -> list[NeuronPage]:
    """Pages for ``neurons``: decoded tokens, top contexts over ``tasks``' prompts, single-neuron
    ablation on each task, and (when given) their scores and the sets that hold them."""
    info = ModelInfo.of(model)
    for layer, index in neurons:
        if not (0 <= layer < info.n_layers and 0 <= index < info.d_mlp):
            raise TasklensError(f"Neuron L{layer}N{index} is outside {info.name!r}'s grid {info.shape}")
    check_count("n_tokens", n_tokens, int(model.cfg.d_vocab), "tokens in the vocabulary")
    check_count("n_contexts", n_contexts)
    chosen = NeuronSet.from_pairs(neurons, info.shape, "pages")
    vocab = vocab or decode_neurons(model, "output", k=n_tokens, neurons=chosen)
    reads = decode_neurons(model, "hook_pre", k=n_tokens, neurons=chosen)
    if contexts is None and tasks:
        pooled = Task.from_lists(
            "pages",
            [p for t in tasks for p in t.prompts],
            [a for t in tasks for a in t.answers],
        )
        contexts = top_contexts(model, pooled, chosen, k=n_contexts, window=10)
    pages = []
    for layer, index in neurons:
        pages.append(
            NeuronPage(
                layer=layer,
                index=index,
                model=info.name,
                scores=scores_rows(scores, layer, index) if scores else [],
                sets=[s.name for s in sets if (layer, index) in s],
                promotes=vocab.top(layer, index)[:n_tokens],
                suppresses=vocab.bottom(layer, index)[:n_tokens],
                reads=reads.top(layer, index)[:n_tokens],
                reads_side="the gate (hook_pre)" if info.gated else "W_in (hook_pre)",
                contexts=contexts.contexts(layer, index, model.tokenizer)[:n_contexts] if contexts else [],
                ablation=ablation_rows(model, layer, index, tasks) if tasks else [],
            )
        )
    return pages
