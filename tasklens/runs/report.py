"""`tasklens report`: one self-contained HTML page per run, readable with no network.

The page leads with what was found (each set's effect on its own task against
the other tasks and its random controls), then the figures, then circuitsvis
views of each task's top neurons on that task's prompts (tokens exactly as
scored, HTML-escaped, circuitsvis's inline bundle), then the tables, with the
stages' configurations folded at the end. It is rendered from a jinja2 template
with autoescaping; only the run's own files (those its manifest names) are read.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tasklens.errors import TasklensError
from tasklens.io import atomic_write_text
from tasklens.models import ModelInfo
from tasklens.runs import RunFolder
from tasklens.tasks.tokenize import TokenizedTask

FIGURE_ORDER = ("effects", "matrix_change", "cumulativity", "interference", "overlap", "sharing")
#: what each figure shows, under it in the report ({metric} and {label}: the evaluation's)
CAPTIONS = {
    "effects": (
        "Each set's change of {metric} on its own task (red), its mean change on the other tasks (grey) "
        "and the change its random sets of the same per-layer counts make on its own task (blue, ±1 sd)."
    ),
    "matrix_change": (
        "Change of {metric} from the unmodified model under {label} of each set (rows) on each task "
        "(columns), each set's own task on the diagonal; red: the metric falls, blue: it rises."
    ),
    "cumulativity": (
        "Accuracy on each set's task (and on the other tasks) as its top-k neurons are deactivated, "
        "k on a log scale."
    ),
    "interference": (
        "acc_drop: the relative drop of each task (rows) with a set's neurons off (columns), each set's own "
        "task on the diagonal; red: the task falls, blue: it improves."
    ),
    "overlap": "Jaccard overlap of the sets' neurons (1: the same neurons).",
    "sharing": "Per layer, each set's neurons no other set holds (exclusive) and those it shares.",
}


def signed(value: float, digits: int = 3) -> str:
    """``value`` with its sign (``+0.125``), or a dash when there is none (NaN: e.g. the other
    tasks' change in a one-task run)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.{digits}f}"


def plain(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` decimals, or a dash for NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def closed(src: str) -> str:
    """circuitsvis HTML with its mount point closed: circuitsvis writes ``<div id=... />``, which
    HTML does not self-close, so everything after it would nest inside."""
    return re.sub(r"^(\s*<div\b[^>]*?)\s*/>", r"\1></div>", src, count=1)


def token_strings(model, ids: list[int]) -> list[str]:
    """Each token of ``ids`` as its own (HTML-escaped) string, for circuitsvis."""
    return [html.escape(model.tokenizer.decode([i])) for i in ids]


def top_neuron_views(model, task, scores, n_neurons: int = 8, n_prompts: int = 6) -> tuple[str, str]:
    """circuitsvis HTML (inline bundle) of the task's top neurons on its first prompts.

    The prompts are tokenised as the scorers tokenise them (`TokenizedTask`: BOS,
    prompt, answer), so the view shows the tokens that were scored.

    Returns:
        ``(text_neuron_activations html, topk_tokens html)``.
    """
    import circuitsvis as cv

    info = ModelInfo.of(model)
    top = scores.top(n_neurons)
    labels = [f"L{layer}N{index}" for layer, index, _ in top]
    names = sorted({info.hook_name(layer, scores.unit) for layer, _, _ in top})
    tokenized = TokenizedTask.for_model(task.head(n_prompts), model)
    tokens_list, acts_list = [], []
    for prompt, answer in zip(tokenized.prompt_ids, tokenized.answer_ids, strict=True):
        ids = prompt + answer
        with torch.no_grad():
            _, cache = model.run_with_cache(torch.tensor([ids], device=model.cfg.device), names_filter=names)
        acts = torch.stack(
            [cache[info.hook_name(layer, scores.unit)][0, :, index] for layer, index, _ in top], -1
        )
        tokens_list.append(token_strings(model, ids))
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
    return closed(text.local_src), closed(topk.local_src)


def _figure(path: Path, evaluation: dict[str, Any] | None) -> dict[str, str]:
    words = {"metric": "the metric", "label": "the intervention", **(evaluation or {})}
    caption = CAPTIONS.get(path.stem, path.stem.replace("_", " "))
    return {
        "name": path.stem,
        "caption": caption.format(**words),
        "data": base64.b64encode(path.read_bytes()).decode(),
    }


def _table_html(path: Path) -> str:
    frame = pd.read_csv(path)
    frame.columns = ["" if str(c).startswith("Unnamed:") else c for c in frame.columns]
    return frame.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="", border=0, escape=True)


def load_result(path: Path):
    """The `EvaluationResult` an ablate stage wrote, its long tables' values as numbers: a
    metric that gave NaN is written as the text "nan" (JSON has no NaN), read back as NaN."""
    from tasklens.analysis.matrix import EvaluationResult

    result = EvaluationResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
    for name in ("prompt_values", "control_values", "control_prompt_values", "floor_values"):
        frame = getattr(result, name)
        if "value" in frame.columns:
            frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype(float)
    return result


def _summary(run: RunFolder) -> tuple[list[dict[str, Any]], dict[str, Any] | None, str]:
    """The per-set summary rows, the evaluation's description and the verdict table's HTML
    (the compact `VerdictTable`), from the ablate stage."""
    from tasklens.analysis.verdict_table import CLI_FLAGS, VerdictTable

    if "ablate" not in run.manifest()["stages"]:
        return [], None, ""
    result = load_result(run.files("ablate", "matrix_result")[0])
    evaluation = {
        "metric": result.metric,
        "label": result.intervention_label,
        "n_controls": result.n_controls,
        "settled": result.settled,
        "stop_after": result.stop_after,
    }
    try:
        table = result.own_and_others()
    except TasklensError:  # sets not named after tasks
        return [], evaluation, ""
    try:
        verdicts = VerdictTable(result.specificity())
        evaluation["family"] = str(verdicts["family"].iloc[0])
    except TasklensError:  # one task, or no random sets: no verdict to show
        verdicts = None
    rows = []
    for name, row in table.iterrows():
        verdict = verdicts.loc[name] if verdicts is not None and name in verdicts.index else None
        rows.append(
            {
                "set": name,
                **row.to_dict(),
                "effect": float(verdict["effect"]) if verdict is not None else float("nan"),
                "verdict": str(verdict["verdict"]) if verdict is not None else "not tested",
                # painted only when the verdict (random sets, every other task, one error rate) says so
                "specific": verdict is not None and verdict["level"] == "specific",
            }
        )
    shown = verdicts.to_html_compact(CLI_FLAGS) if verdicts is not None else ""
    return rows, evaluation, shown


def _stability(files: list[Path]) -> dict[str, str] | None:
    """Per set, "mean [low, high]" of its split-half Jaccard, when compare measured it."""
    path = next((p for p in files if p.name == "stability.csv"), None)
    if path is None:
        return None
    return {r.task: f"{r.mean:.2f} [{r.low:.2f}, {r.high:.2f}]" for r in pd.read_csv(path).itertuples()}


#: the settings the report reads from each stage's recorded config
READS = {"locate": ("model", "tasks", "method", "select", "value"), "ablate": ("eval_split",)}


def recorded_config(folder: RunFolder, stage: str) -> dict[str, Any]:
    """The settings the report reads (`READS`) from a finished stage's config in the manifest, each
    checked against its `RunConfig` type: a hand-edited manifest gets a one-line error naming the
    setting, not a traceback."""
    import typing

    from pydantic import TypeAdapter, ValidationError

    from tasklens.runs.folder import MANIFEST
    from tasklens.runs.pipeline import RunConfig

    config = folder.record(stage).get("config")
    where = f"{str(folder.path / MANIFEST)!r}: the `{stage}` stage's config"
    fix = f"undo the edit or re-run `tasklens {stage}`"
    if not isinstance(config, dict):
        raise TasklensError(f"{where} is {type(config).__name__}, not a table of settings; {fix}")
    types = typing.get_type_hints(RunConfig)
    for key in READS[stage]:
        if key not in config:
            raise TasklensError(f"{where} has no {key!r}; {fix}")
        try:
            TypeAdapter(types[key]).validate_python(config[key], strict=True)
        except ValidationError as error:
            expected = types[key].__name__ if isinstance(types[key], type) else str(types[key])
            raise TasklensError(
                f"{where} has {key} = {config[key]!r}, not a {expected} ({error.errors()[0]['msg']}); {fix}"
            ) from error
    return config


def render(**context: Any) -> str:
    """The report page from the template, given its variables (see `build_report`)."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("tasklens.runs", "templates"), autoescape=True, keep_trailing_newline=True
    )
    environment.filters.update(signed=signed, plain=plain)
    return environment.get_template("report.html.j2").render(**context)


def build_report(
    run: str | Path, model=None, n_neurons: int = 8, n_prompts: int = 6, pages_per_set: int = 3
) -> Path:
    """Write ``report.html`` into a run folder (made by `tasklens run` / `locate` ...).

    Args:
        n_neurons, n_prompts: the circuitsvis views' top neurons and prompts per task.
        pages_per_set: neuron pages for each set's top neurons (0 for none).
    """
    from tasklens.models import load_model
    from tasklens.runs.pipeline import load_scores, load_task

    folder = RunFolder(run)
    config = recorded_config(folder, "locate")
    folder.check_writable(["report.html"])
    stages = folder.manifest()["stages"]
    eval_split = recorded_config(folder, "ablate")["eval_split"] if "ablate" in stages else "evaluation"
    written = [folder.files(stage) for stage in stages if stage != "report"]
    files = sorted({p for group in written for p in group})
    summary, evaluation, verdicts = _summary(folder)
    rule = {k: config.get(k) for k in ("select", "value")}
    figures = sorted(
        (p for p in files if p.suffix == ".png"),
        key=lambda p: (FIGURE_ORDER.index(p.stem) if p.stem in FIGURE_ORDER else len(FIGURE_ORDER), p.stem),
    )
    tables = [{"name": p.stem, "html": _table_html(p)} for p in files if p.suffix == ".csv"]
    scores = load_scores(run)
    provenance = pd.DataFrame(
        [
            {
                "task": s.task,
                "method": s.method,
                "unit": s.unit,
                "prompts": s.n_prompts,
                "task data (sha256)": s.task_hash[:12],
                "model": s.model,
                "tasklens": s.version,
            }
            for s in scores.values()
        ]
    )
    views, pages = [], []
    if scores:
        from tasklens.runs.pipeline import load_sets
        from tasklens.views.page import neuron_pages, page_tasks

        model = model if model is not None else load_model(config["model"])
        for spec in config["tasks"]:
            task = load_task(spec, eval_split, n_prompts)
            if task.name in scores:
                text, topk = top_neuron_views(model, task, scores[task.name], n_neurons, n_prompts)
                views.append({"task": task.name, "text": text, "topk": topk})
        if pages_per_set:
            top = dict.fromkeys((la, ix) for s in scores.values() for la, ix, _ in s.top(pages_per_set))
            asked = page_tasks(model, config["tasks"], eval_split, 24, skip_unknown=True)
            found = neuron_pages(model, list(top), asked, scores, load_sets(run, model))
            pages = [page.to_html() for page in found]
    page = render(
        title=folder.path.name,
        model=config["model"],
        tasks=config["tasks"],
        method=config["method"],
        selection=f"{rule['select']} {rule['value']:g}",
        evaluation=evaluation,
        summary=summary,
        verdicts=verdicts,
        stability=_stability(files),
        figures=[_figure(p, evaluation) for p in figures],
        views=views,
        pages=pages,
        pages_per_set=pages_per_set,
        extra_sections=[],
        tables=tables,
        stages=[
            {
                "name": name,
                "finished": record.get("finished", ""),
                "version": record.get("tasklens_version", ""),
                "config": json.dumps(record.get("config"), indent=2),
            }
            for name, record in stages.items()
            if name != "report"
        ],
        scores=provenance.to_html(index=False, border=0) if len(provenance) else "",
    )
    with folder.stage("report", {"n_neurons": n_neurons, "n_prompts": n_prompts}, ["report.html"]) as out:
        path = out.file("report.html")
        atomic_write_text(path, page)
    return path
