"""Neuron-level fine-tuning on the organism: only the set trains, it learns, it resumes, it forgets less."""

from __future__ import annotations

import pytest
import torch

from tasklens.finetune import (
    ContinualResult,
    FinetuneConfig,
    FinetuneRun,
    accuracies,
    continual_learning,
    finetune,
    load_finetune_task,
    task_neurons,
)


@pytest.fixture(scope="module")
def currency(organism):
    train = load_finetune_task("currency_code", "train")
    test = load_finetune_task("currency_code", "test").sample(100)
    neurons = task_neurons(organism, {"currency_code": train}, value=5.0, n_prompts=64)["currency_code"]
    return train, test, neurons


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.original_model.state_dict().items()}


def test_only_the_sets_rows_and_columns_change_and_restore_is_exact(organism, currency):
    train, _, neurons = currency
    before = weights(organism)
    with finetune(organism, train, neurons, FinetuneConfig(steps=10, lr=1e-2)):
        during = weights(organism)
    after = weights(organism)
    changed = {k for k in before if not torch.equal(before[k], during[k])}
    assert changed and all(".mlp." in k for k in changed)
    for key in changed:
        layer = int(key.split("layers.")[1].split(".")[0])
        rows = neurons.mask[layer].nonzero().flatten()
        d_mlp = neurons.mask.shape[1]
        moved = before[key] != during[key]
        # gate/up weights are [d_mlp, d_model] (a neuron is a row); the down weight [d_model, d_mlp]
        diff = moved.any(dim=1) if moved.shape[0] == d_mlp else moved.any(dim=0)
        # only the set's rows (gate/up) or columns (down) move
        assert set(diff.nonzero().flatten().tolist()) <= set(rows.tolist()), key
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_neuron_finetuning_learns_a_task_the_organism_never_saw(organism, currency):
    train, test, neurons = currency
    zero_shot = accuracies(organism, {"t": test})["t"]
    config = FinetuneConfig(steps=150, lr=3e-3, batch_size=16)
    with finetune(organism, train, neurons, config):
        tuned = accuracies(organism, {"t": test})["t"]
    # measured: 0.00 -> 0.15 on 100 held-out countries, 5 % of the neurons trained
    assert zero_shot <= 0.02 and tuned >= zero_shot + 0.08


def test_a_killed_run_resumes_to_the_same_weights(organism, currency, tmp_path):
    train, _, neurons = currency
    config = FinetuneConfig(steps=12, lr=1e-2, batch_size=8, checkpoint_every=4)
    whole = FinetuneRun(organism, train, neurons, config).train()
    expected = [p.detach().clone() for p in whole.trainable.parameters()]

    class Killed(Exception):
        pass

    def kill_at_6(run):
        if run.step == 6:
            raise Killed

    with pytest.raises(Killed):
        FinetuneRun(organism, train, neurons, config, checkpoint_dir=tmp_path).train(kill_at_6)
    resumed = FinetuneRun(organism, train, neurons, config, checkpoint_dir=tmp_path)
    assert resumed.step == 4  # the last checkpoint before the kill
    resumed.train()
    assert all(torch.equal(a, b) for a, b in zip(expected, resumed.trainable.parameters(), strict=True))


def test_continual_learning_matrix_shows_catastrophic_forgetting(organism):
    """SeqFT and NCFT over two new tasks: the accuracy matrix a[i, j], CL and FG as methods.md defines.

    Measured (60 held-out prompts): SeqFT a[1,1] 0.93 -> a[1,2] 0.07, NCFT 0.83 -> 0.10; on
    the organism both forget nearly everything, so NCFT's advantage (0.10 vs 0.07) is
    within noise and not asserted.
    """
    names = ["continent_code", "currency_code"]
    train = {n: load_finetune_task(n, "train") for n in names}
    test = {n: load_finetune_task(n, "test").sample(60) for n in names}
    neurons = task_neurons(organism, train, value=5.0, n_prompts=48)
    configs = {
        "full": FinetuneConfig(steps=120, lr=1e-3, batch_size=16),
        "neurons": FinetuneConfig(steps=120, lr=1e-2, batch_size=16),
    }
    results = continual_learning(
        organism, names, train, test, neurons, None, configs, methods=("SeqFT", "NCFT")
    )
    by_method = {r.method: r for r in results}
    assert set(by_method) == {"SeqFT", "NCFT"} and all(isinstance(r, ContinualResult) for r in results)
    for result in results:
        assert result.matrix.shape == (2, 2)
        assert 0 <= result.matrix.to_numpy().min() and result.matrix.to_numpy().max() <= 1
        assert result.a(1, 1) >= 0.6  # the first task is learned (from 0 zero-shot)
        assert result.a(1, 2) <= result.a(1, 1) - 0.4  # and mostly forgotten after the second
        assert result.cl == pytest.approx(100 * (result.a(1, 2) + result.a(2, 2)) / 2)


def test_cli_finetunes_and_resumes_from_its_checkpoint(tmp_path):
    from typer.testing import CliRunner

    from tasklens.cli import app

    args = [
        "finetune",
        "currency_code",
        "--steps",
        "8",
        "--checkpoint-dir",
        str(tmp_path),
        "--test-prompts",
        "20",
    ]
    first = CliRunner().invoke(app, [*args, "--checkpoint-every", "4"])
    assert first.exit_code == 0, first.output
    assert "held-out accuracy 0.000 ->" in first.output and (tmp_path / "deltas.safetensors").is_file()
    again = CliRunner().invoke(app, [*args, "--checkpoint-every", "4"])
    assert again.exit_code == 0 and "resuming from step 8" in again.output
    bad = CliRunner().invoke(app, ["finetune", "currency_code", "--scope", "half"])
    assert bad.exit_code == 2 and "scope" in bad.output
