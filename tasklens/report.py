"""`tasklens report`: one self-contained HTML page per run, readable with no network.

The page holds the run's parameters and provenance, its tables, its figures
(PNG embedded as data URIs) and circuitsvis views of each task's top neurons on
that task's prompts, built from circuitsvis's inline bundle (``local_src``) with
tokens HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tasklens.errors import TasklensError
from tasklens.io import atomic_write_text
from tasklens.models import ModelInfo

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #f3f3f3; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
.view { border: 1px solid #ddd; padding: 0.5em; margin: 0.5em 0 1.5em; }
"""


def top_neuron_views(model, task, scores, n_neurons: int = 8, n_prompts: int = 6) -> tuple[str, str]:
    """circuitsvis HTML (inline bundle) of the task's top neurons on its first prompts.

    Returns:
        ``(text_neuron_activations html, topk_tokens html)``.
    """
    import circuitsvis as cv

    info = ModelInfo.of(model)
    top = scores.top(n_neurons)
    labels = [f"L{layer}N{index}" for layer, index, _ in top]
    names = sorted({info.hook_name(layer, scores.unit) for layer, _, _ in top})
    tokens_list, acts_list = [], []
    for prompt, answer in list(zip(task.prompts, task.answers, strict=True))[:n_prompts]:
        ids = model.to_tokens(prompt + answer)
        _, cache = model.run_with_cache(ids, names_filter=names)
        acts = torch.stack(
            [cache[info.hook_name(layer, scores.unit)][0, :, index] for layer, index, _ in top], -1
        )
        tokens_list.append([html.escape(t) for t in model.to_str_tokens(ids[0])])
        acts_list.append(acts.detach().float().cpu().numpy())
    text = cv.activations.text_neuron_activations(
        tokens=tokens_list,
        activations=[a[:, None, :] for a in acts_list],
        first_dimension_name="Set",
        first_dimension_labels=[task.name],
        second_dimension_name="Neuron",
        second_dimension_labels=labels,
    )
    topk = cv.topk_tokens.topk_tokens(
        tokens=tokens_list,
        activations=[np.ascontiguousarray(a.T[None]) for a in acts_list],
        max_k=5,
        first_dimension_name="Set",
        third_dimension_name="Top neuron",
        first_dimension_labels=[task.name],
    )
    return text.local_src, topk.local_src


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    name = html.escape(path.stem)
    image = f'<img alt="{name}" src="data:image/png;base64,{data}">'
    return f"<figure>{image}<figcaption>{name}</figcaption></figure>"


def _table(path: Path) -> str:
    frame = pd.read_csv(path)
    frame.columns = ["" if str(c).startswith("Unnamed:") else c for c in frame.columns]
    return frame.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="", border=0, escape=True)


def build_report(run: str | Path, model=None, n_neurons: int = 8, n_prompts: int = 6) -> Path:
    """Write ``report.html`` into a run folder (made by `tasklens run` / `locate` ...)."""
    from tasklens.models import load_model
    from tasklens.pipeline import RunConfig, load_scores, load_task

    run = Path(run)
    config_path = run / "config.json"
    if not config_path.is_file():
        raise TasklensError(
            f"{str(run)!r} is not a tasklens run folder (no config.json); run `tasklens locate` first"
        )
    config_data = json.loads(config_path.read_text())
    known = {k: v for k, v in config_data.items() if k in RunConfig.__dataclass_fields__}
    config = RunConfig(**known)
    parts = [
        f"<h1>tasklens report: {html.escape(run.name)}</h1>",
        "<h2>Parameters and provenance</h2>",
        f"<pre>{html.escape(json.dumps(config_data, indent=2))}</pre>",
    ]
    scores = load_scores(run)
    provenance = pd.DataFrame(
        [{k: v for k, v in s.metadata().items() if k not in ("params", "kind")} for s in scores.values()]
    )
    if len(provenance):
        parts += ["<h3>Scores</h3>", provenance.to_html(index=False, border=0)]
    parts.append("<h2>Tables</h2>")
    for path in sorted(run.glob("*.csv")):
        parts += [f"<h3>{html.escape(path.stem)}</h3>", _table(path)]
    parts.append("<h2>Figures</h2>")
    parts += [_figure(p) for p in sorted(run.glob("*.png"))]
    if scores:
        model = model if model is not None else load_model(config.model)
        parts.append("<h2>Top neurons on their task's prompts (circuitsvis)</h2>")
        for spec in config.tasks:
            task = load_task(spec, config.eval_split, config.max_prompts)
            if task.name not in scores:
                continue
            text, topk = top_neuron_views(model, task, scores[task.name], n_neurons, n_prompts)
            parts += [
                f"<h3>{html.escape(task.name)}</h3>",
                f'<div class="view">{text}</div>',
                f'<div class="view">{topk}</div>',
            ]
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>tasklens report</title>"
        f"<style>{STYLE}</style></head><body>" + "\n".join(parts) + "</body></html>"
    )
    path = run / "report.html"
    atomic_write_text(path, page)
    return path
