"""A real pretrained model: SmolLM2-135M-Instruct (downloaded once per machine by the session fixture).

Reduced versions of the analyses run here too, so that the scripts cannot rot.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from tasklens.analysis.matrix import ablation_matrix
from tasklens.evaluation.evaluate import evaluate_prompts, greedy_generate
from tasklens.evaluation.known import known_by, load_for_model
from tasklens.models import ModelInfo, load_model, zoo
from tasklens.scoring import (
    CGVST,
    ActivationStats,
    AttributionPatching,
    AveragePrecisionExpertise,
    ExactAblation,
    GradientAttribution,
    IntegratedGradients,
    VerifiedPatching,
)
from tasklens.selection import top_percent

NAME = "smollm2-135m"
pytestmark = pytest.mark.network

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smollm2():
    if not zoo.is_downloaded(NAME):
        zoo.download(NAME)
    return load_model(NAME)


@pytest.fixture(scope="module")
def continent(smollm2):
    return {
        split: load_for_model(smollm2, "continent_of", split, asked=40, n=16, seed=1)
        for split in ("detection", "evaluation")
    }


def test_loads_offline_with_its_shape_and_knows_capitals(smollm2):
    info = ModelInfo.of(smollm2)
    assert (info.n_layers, info.d_mlp, info.gated) == (30, 1536, True)
    ids = smollm2.tokenizer("The capital of France is")["input_ids"]
    new = greedy_generate(smollm2, [ids], max_new_tokens=1)[0]
    assert smollm2.tokenizer.decode(new) == " Paris"


def test_known_filter_keeps_the_facts_it_answers(smollm2):
    asked = load_for_model(smollm2, "capital_of", "detection", known=False)
    known = known_by(smollm2, asked)
    # measured: 72 of 183 one-shot capital prompts
    assert 50 <= len(known) <= 95 and len(asked) == 183
    assert known.meta["n_known"] == len(known) and known.meta["n_asked"] == len(asked)
    assert evaluate_prompts(smollm2, known, "next_token").min() == 1.0


def test_every_scorer_gives_finite_scores_for_every_neuron(smollm2, continent):
    task = continent["detection"].sample(4)
    chat = load_for_model(smollm2, "continent_of", "detection", style="chat", asked=6, n=2)
    others = load_for_model(smollm2, "country_language", "detection", asked=16, n=8)
    few = top_percent(GradientAttribution().attribute(smollm2, task), 0.02).renamed("few")
    runs = {
        "activation_stats": (ActivationStats(), task),
        "gradient_attribution": (GradientAttribution(), task),
        "attribution_patching": (AttributionPatching(), task),
        "integrated_gradients": (IntegratedGradients(steps=2), task.sample(1)),
        "average_precision": (AveragePrecisionExpertise(negatives=[others]), task.sample(2)),
        "cgvst": (CGVST(n_demo=9), chat),
        "exact_ablation": (ExactAblation(only=few), task.sample(2)),
        "verified_patching": (VerifiedPatching(candidate_percent=0.02), task.sample(2)),
    }
    for name, (scorer, prompts) in runs.items():
        scores = scorer.attribute(smollm2, prompts)
        assert scores.values.shape == (30, 1536), name
        assert torch.isfinite(scores.values).all(), name
        assert scores.values.abs().sum() > 0, name


def test_ablating_relation_neurons_hurts_more_than_random_sets(smollm2, continent):
    neurons = top_percent(GradientAttribution().attribute(smollm2, continent["detection"]), 0.5)
    result = ablation_matrix(
        smollm2, [neurons.renamed("continent_of")], [continent["evaluation"]], n_controls=3, metric="logprob"
    )
    change = result.change().loc["continent_of", "continent_of"]
    random_change = result.control_change().loc["continent_of", "continent_of"]
    # held-out known facts; measured: about -3 nats against random sets' -0.1
    assert change < -1.0 and change < 5 * random_change


def test_neuron_page_asks_the_facts_it_knows_in_natural_form(smollm2, monkeypatch):
    import re

    from typer.testing import CliRunner

    from tasklens.cli import app

    monkeypatch.setattr("tasklens.models.load_model", lambda *args, **kwargs: smollm2)
    command = ["neuron", "20.1234", "--model", NAME, "-t", "continent_of", "--max-prompts", "16"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("  continent_of"))
    known = re.search(r"(\d+) known facts", row)
    # organism-form prompts gave 0.075 accuracy; known natural prompts are answered by definition
    assert known and 8 <= int(known[1]) <= 16 and "next-token accuracy 1.000 ->" in row, result.output
    assert "(unmodified accuracy 1.00 on them)" in result.output


def run_analysis(script: str, out: Path, *args: str) -> list[str]:
    command = [sys.executable, str(ROOT / "analyses" / script), "--model", NAME, "--out", str(out), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return (out / "findings.md").read_text().splitlines()


def test_relation_analysis_reduced(tmp_path):
    findings = run_analysis(
        "relation_neurons.py", tmp_path,
        "--relations", "continent_of", "country_language", "city_continent",
        "--asked", "40", "--min-known", "10", "--detection-prompts", "12", "--eval-prompts", "8",
        "--controls", "2", "--other-prompts", "4", "--stability-splits", "1",
        "--percent", "0.1",
    )  # fmt: skip
    deactivation = pd.read_csv(tmp_path / "deactivation.csv")
    assert set(deactivation.task) == {"continent_of", "country_language", "city_continent"}
    for column in ("original", "set_off", "random_off", "others_off"):
        assert deactivation[column].between(0, 1).all(), column
    assert (deactivation.original == 1.0).all()  # held-out known facts only
    assert deactivation.random_std.notna().all()
    interference = pd.read_csv(tmp_path / "interference.csv", index_col=0)
    assert interference.shape == (3, 3)
    curve = pd.read_csv(tmp_path / "cumulativity_continent_of.csv")
    assert curve.k.is_monotonic_increasing and curve.k.iloc[0] == 0
    assert any(line.startswith("- cross-language") for line in findings), findings
    known = pd.read_csv(tmp_path / "known_facts.csv")  # asking stops at 12 known detection facts
    assert (known.known_detection <= 12).all() and (known.asked_detection <= 40).all()
    assert (known.known_detection <= known.asked_detection).all()
    timings = pd.read_csv(tmp_path / "timings.csv")
    assert {"known facts", "detection", "deactivation and interference", "cumulativity"} <= set(timings.stage)
    assert (timings.seconds >= 0).all() and timings.seconds.sum() > 0
    stability = pd.read_csv(tmp_path / "stability.csv")  # every set's split-half Jaccard
    assert set(stability.task) == set(deactivation.task) and stability["mean"].between(0, 1).all()
    assert json.loads((tmp_path / "config.json").read_text())["model"] == NAME


def test_multitask_analysis_reduced(tmp_path):
    run_analysis(
        "multitask_neurons.py", tmp_path,
        "--tasks", "continent_of", "sentiment", "copy_list",
        "--asked", "24", "--detection-prompts", "8", "--eval-prompts", "8", "--controls", "1",
        "--stability-sizes", "4", "--stability-splits", "1",
    )  # fmt: skip
    table = pd.read_csv(tmp_path / "deactivation.csv")
    assert list(table.task) == ["continent_of", "sentiment", "copy_list", "average"]
    for column in ("original", "random_off", "set_off", "others_off"):
        assert table[column].between(0, 1).all(), column
    iou = pd.read_csv(tmp_path / "overlap_iou.csv", index_col=0)
    assert (iou.to_numpy().diagonal() == 1).all()
    assert pd.read_csv(tmp_path / "stability_curve.csv")["mean"].between(0, 1).all()
    assert list(pd.read_csv(tmp_path / "stability.csv").task) == ["continent_of", "sentiment", "copy_list"]


def test_cgvst_analysis_reduced(tmp_path):
    findings = run_analysis(
        "task_neurons_cgvst.py", tmp_path,
        "--tasks", "continent_of", "sentiment",
        "--asked", "16", "--detection-prompts", "4", "--eval-prompts", "6", "--controls", "1",
        "--factors", "2", "--stability-splits", "1",
    )  # fmt: skip
    assert any("<|im_start|>" in line for line in findings)
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert set(summary.method) == {"cgvst", "gradient", "activation"}
    assert summary[["original", "own_task", "other_tasks"]].stack().between(0, 1).all()
    assert summary[summary.method == "cgvst"].random_own.notna().all()
    assert list(pd.read_csv(tmp_path / "stability.csv").task) == ["continent_of", "sentiment"]
    effects = pd.read_csv(tmp_path / "held_out_effect.csv")
    assert set(effects["sample"]) == {"found_on", "held_out"} and effects.random_change.notna().all()


def test_bfloat16_random_sets_keep_the_verdicts_of_a_ladder_stage_subset(smollm2):
    """The 1 % gradient sets of two relations on known facts, random sets on the own task with the
    ladder's sequential stop (`analyses/ladder.py`): both tests give every set the same verdict
    with the random sets in bfloat16 as in float32, on both metrics."""
    from tasklens.analysis.matrix import evaluation_matrices
    from tasklens.models.precision import TOLERANCE

    names = ("continent_of", "country_language")
    detection = {n: load_for_model(smollm2, n, "detection", asked=60, n=16, seed=2) for n in names}
    tasks = [load_for_model(smollm2, n, "evaluation", asked=60, n=24, seed=2) for n in names]
    sets = [
        top_percent(GradientAttribution().attribute(smollm2, t), 1.0).renamed(n) for n, t in detection.items()
    ]
    kwargs = dict(controls_on="own", stop_after=5, batch_size=32)
    full = evaluation_matrices(smollm2, sets, tasks, ("exact_match", "logprob"), 39, **kwargs)
    reduced = evaluation_matrices(
        smollm2, sets, tasks, ("exact_match", "logprob"), 39, precision="bfloat16", **kwargs
    )
    for metric in full:
        for test in ("against_random", "specificity"):
            ours, theirs = getattr(reduced[metric], test)(), getattr(full[metric], test)()
            assert ours["verdict"].to_dict() == theirs["verdict"].to_dict(), (metric, test)
    runs = ["set", "run", "task", "prompt"]
    both = full["logprob"].control_prompt_values.merge(
        reduced["logprob"].control_prompt_values, on=runs, suffixes=("", "_bf16")
    )
    assert len(both) and (both["value"] - both["value_bf16"]).abs().max() <= TOLERANCE["logprob"]
