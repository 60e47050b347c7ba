"""A neuron's page: everything tasklens knows about one neuron, in one place.

Its scores under each method and task that were run (value and rank), the sets
that contain it, the tokens its weights promote and suppress, its top contexts,
and the effect of zero-ablating it alone on each task. `NeuronPage` is plain
data; `to_text` prints it (``tasklens neuron L.N``) and `to_html` renders it for
the report (each context a line of escaped tokens shaded by activation, plain
HTML with no script). `page_tasks` asks a model in its own form: the organism
its training templates, a pretrained model the natural prompts it knows.
"""

from __future__ import annotations

import html
import re
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tasklens.data.neurons import NeuronScores, NeuronSet
from tasklens.errors import TasklensError, TasklensWarning
from tasklens.evaluation.evaluate import evaluate
from tasklens.evaluation.known import default_style, load_for_model
from tasklens.interventions import ablate
from tasklens.models import ModelInfo
from tasklens.tasks.builtin import load_builtin
from tasklens.tasks.task import Task, is_task_file
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
    special_left_out: bool = True
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
            lines.append(f"top contexts (activation: text, [centre token]; {self.contexts_note}):")
            for c in self.contexts:
                text = "".join(f"[{t}]" if i == c["centre"] else t for i, t in enumerate(c["tokens"]))
                lines.append(f"  {c['value']:7.3f}: {text}")
        if self.ablation:
            lines.append("zero-ablating this neuron alone (mean over each task's prompts):")
            lines += [
                f"  {a['task']:<18} {_prompts(a):<16} logprob {a['logprob_change']:+.4f} nats, "
                f"next-token accuracy {a['accuracy']:.3f} -> {a['accuracy_ablated']:.3f}"
                for a in self.ablation
            ]
            lines += [note for note in [self.known_note] if note]
        return "\n".join(printable(line) for line in lines)

    @property
    def contexts_note(self) -> str:
        if self.special_left_out:
            return "BOS left out, as is any other special token"
        return "BOS and other special tokens included"

    @property
    def known_note(self) -> str:
        """What "known facts" means, when some task of the ablation was filtered to them."""
        known = [a for a in self.ablation if a.get("known")]
        if not known:
            return ""
        accuracy = ", ".join(sorted({f"{a['accuracy']:.2f}" for a in known}))
        styles = "/".join(sorted({a["style"] for a in known if a.get("style")}))
        form = f" in its own {styles} form" if styles else ""
        return (
            f"known facts: prompts {self.model} answers correctly{form} "
            f"(unmodified accuracy {accuracy} on them)"
        )

    def to_html(self) -> str:
        """The page as an HTML fragment (for the report): every element it opens it closes, so
        pages and their contexts sit side by side as siblings."""
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
                f"<tr><td class='name'>{html.escape(a['task'])}</td><td>{html.escape(_prompts(a))}</td>"
                f"<td>{a['logprob_change']:+.4f}</td>"
                f"<td>{a['accuracy']:.3f} &rarr; {a['accuracy_ablated']:.3f}</td></tr>"
                for a in self.ablation
            )
            parts.append(
                "<table><tr><th>task</th><th>prompts</th><th>log-prob change (nats)</th>"
                f"<th>next-token accuracy</th></tr>{rows}</table>"
            )
            if self.known_note:
                parts.append(f"<p>{html.escape(self.known_note)}.</p>")
        if self.contexts:
            values = [float(v) for c in self.contexts for v in c["activations"]]
            scale = (max(max(values), 0.0) or 1.0, max(-min(values), 0.0) or 1.0)
            parts.append(f'<p>Top contexts ({html.escape(self.contexts_note)}):</p><div class="contexts">')
            parts += [_context_html(c, scale) for c in self.contexts]
            parts.append("</div>")
        parts.append("</section>")
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.to_text()


def _tokens(pairs: Sequence[tuple[str, float]]) -> str:
    return " | ".join(repr(t)[1:-1] for t, _ in pairs)


def _prompts(row: dict[str, Any]) -> str:
    if "n_prompts" not in row:
        return ""
    return f"{row['n_prompts']} known facts" if row.get("known") else f"{row['n_prompts']} prompts"


def _context_html(context: dict[str, Any], scale: tuple[float, float]) -> str:
    """One context as a line of tokens, each shaded by the neuron's activation on it (red above
    zero relative to ``scale[0]``, blue below relative to ``scale[1]``), its value in the tooltip,
    the centre outlined."""
    spans = []
    for i, (token, value) in enumerate(zip(context["tokens"], context["activations"], strict=True)):
        value = float(value)
        alpha = min(abs(value) / scale[value < 0], 1.0)
        colour = f"rgba(220,40,40,{alpha:.2f})" if value >= 0 else f"rgba(40,90,220,{alpha:.2f})"
        centre = ' class="centre"' if i == context["centre"] else ""
        spans.append(
            f'<span{centre} style="background:{colour}" title="{value:.3f}">'
            f"{html.escape(printable(token))}</span>"
        )
    return (
        f'<div class="context"><span class="value">{context["value"]:.3f}</span> '
        f'<span class="tokens">{"".join(spans)}</span></div>'
    )


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


METRICS = ("logprob", "next_token")


@torch.no_grad()
def ablation_rows(
    model,
    layer: int,
    index: int,
    tasks: Sequence[Task],
    batch_size: int = 32,
    unmodified: Sequence[dict[str, float]] | None = None,
) -> list[dict]:
    """The effect on each task of zero-ablating the neuron alone.

    Args:
        unmodified: each task's unmodified ``{metric: value}``, when already measured (pages
            for many neurons measure it once).

    Returns:
        Per task: ``task``, ``n_prompts``, ``known`` (the prompts were filtered to the facts the
        model knows), ``style``, ``logprob_change``, ``accuracy`` and ``accuracy_ablated``.
    """
    neuron = NeuronSet.from_pairs([(layer, index)], ModelInfo.of(model).shape, f"L{layer}N{index}")
    name = ModelInfo.of(model).name
    rows = []
    for i, task in enumerate(tasks):
        before = unmodified[i] if unmodified is not None else _measure(model, task, batch_size)
        with ablate(model, neuron):
            after = _measure(model, task, batch_size)
        rows.append(
            dict(
                task=task.name,
                n_prompts=len(task),
                known=task.meta.get("known_by") == name,
                style=task.meta.get("style", ""),
                logprob_change=after["logprob"] - before["logprob"],
                accuracy=before["next_token"],
                accuracy_ablated=after["next_token"],
            )
        )
    return rows


def _measure(model, task: Task, batch_size: int) -> dict[str, float]:
    return {metric: evaluate(model, task, metric, batch_size) for metric in METRICS}


def page_tasks(
    model, specs: Sequence[str], split: str = "evaluation", n: int = 24, skip_unknown: bool = False
) -> list[Task]:
    """The tasks a neuron page is measured on, asked in the model's own form.

    The organism gets each built-in task's organism prompts (its training templates); any
    other model gets `load_for_model`'s form (natural) filtered to the facts it knows, asking
    at most ``4 n`` prompts, so unmodified accuracy is 1.00 on what the page measures. Task
    files are used as written, for every model.

    Args:
        specs: built-in task names or task files.
        n: prompts per task, at most.
        skip_unknown: leave out, with a warning, a built-in task the model knows none of the
            asked prompts of (otherwise that is an error).

    Returns:
        One `Task` per spec, at most ``n`` prompts each; a known-filtered task's meta holds
        ``known_by`` and ``n_known``.

    Examples:
        >>> from tasklens.models import load_model
        >>> [len(t) for t in page_tasks(load_model("organism"), ["continent_of"], n=8)]
        [8]
    """
    check_count("n", n)
    own_form = default_style(model) == "organism"
    tasks = []
    for spec in specs:
        if is_task_file(spec):
            tasks.append(Task.from_file(spec).sample(n))
        elif own_form:
            tasks.append(load_builtin(spec, split).sample(n))
        else:
            try:
                tasks.append(load_for_model(model, spec, split, asked=4 * n, n=n))
            except TasklensError as error:
                if not skip_unknown or "answers none" not in str(error):
                    raise
                warnings.warn(f"{spec} left out of the page: {error}", TasklensWarning, stacklevel=2)
    return tasks


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
    """Pages for ``neurons``: decoded tokens, top contexts over ``tasks``' prompts (special tokens
    such as BOS left out as centres), single-neuron ablation on each task, and (when given) their
    scores and the sets that hold them. ``tasks`` are measured as given; `page_tasks` gives them
    in the model's own form."""
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
    unmodified = [_measure(model, task, 32) for task in tasks]
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
                special_left_out=not contexts.include_special if contexts else True,
                ablation=ablation_rows(model, layer, index, tasks, unmodified=unmodified),
            )
        )
    return pages
