"""The shipped organism meets its accuracy targets, and training works."""

from __future__ import annotations

import json

import pytest

from tasklens.models import ORGANISM_DIR, load_model
from tasklens.organism.suite import evaluate_suite
from tasklens.organism.train import OrganismConfig, train_organism
from tasklens.tasks.builtin import builtin_task_info, load_builtin


@pytest.fixture(scope="module")
def suite_accuracy(organism):
    return evaluate_suite(organism, max_prompts=200)


def test_every_task_is_evaluated(suite_accuracy):
    assert set(suite_accuracy) == {row["name"] for row in builtin_task_info()}


def test_training_templates_at_least_95_percent(suite_accuracy):
    low = {
        name: acc["train_template"] for name, acc in suite_accuracy.items() if acc["train_template"] < 0.95
    }
    assert not low, f"training-template accuracy below 95 %: {low}"


def test_heldout_instances_at_least_90_percent(suite_accuracy):
    low = {
        n: a["heldout_instance"]
        for n, a in suite_accuracy.items()
        if "heldout_instance" in a and a["heldout_instance"] < 0.90
    }
    assert not low, f"held-out-instance accuracy below 90 %: {low}"
    assert sum("heldout_instance" in a for a in suite_accuracy.values()) == 4


def test_heldout_templates_at_least_50_percent(suite_accuracy):
    low = {
        n: a["heldout_template"]
        for n, a in suite_accuracy.items()
        if "heldout_template" in a and a["heldout_template"] < 0.50
    }
    assert not low, f"held-out-template accuracy below 50 %: {low}"


def test_model_card_matches_the_checkpoint(suite_accuracy):
    card = json.loads((ORGANISM_DIR / "model_card.json").read_text())
    assert card["config"]["d_mlp"] == 512 and card["config"]["n_layers"] == 4
    for name, acc in suite_accuracy.items():
        # the card was measured on up to 300 prompts, this run on up to 200 of the same
        assert abs(card["accuracy"][name]["train_template"] - acc["train_template"]) < 0.05


def test_checkpoint_is_small():
    size = sum(p.stat().st_size for p in ORGANISM_DIR.iterdir())
    assert size <= 10 * 2**20


def test_training_smoke_run_loss_falls(tmp_path):
    tasks = [load_builtin("capital_of", "train").head(200), load_builtin("addition", "train").head(200)]
    config = OrganismConfig(
        steps=150,
        batch_size=32,
        warmup=10,
        lr=1e-2,
        d_model=32,
        d_mlp=64,
        n_layers=2,
        n_heads=2,
        vocab_size=400,
    )
    record = train_organism(tasks, tmp_path / "tiny", config, progress=False)
    assert record["loss_last_50"] < 0.7 * record["loss_first_50"]
    tiny = load_model(str(tmp_path / "tiny"))
    assert tiny.cfg.n_layers == 2 and tiny.cfg.d_mlp == 64


def test_training_is_deterministic(tmp_path):
    tasks = [load_builtin("addition", "train").head(100)]
    config = OrganismConfig(
        steps=5, batch_size=8, warmup=2, d_model=16, d_mlp=32, n_layers=1, n_heads=2, vocab_size=300
    )
    first = train_organism(tasks, tmp_path / "a", config, progress=False)
    second = train_organism(tasks, tmp_path / "b", config, progress=False)
    assert first["loss_last_50"] == second["loss_last_50"]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
        tmp_path / "b" / "model.safetensors"
    ).read_bytes()
