"""Neuron-level fine-tuning on the organism: only the set trains, it learns, it resumes, it forgets less."""

from __future__ import annotations

import json

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


# --- reliability: the user's folders, divergence, edited checkpoints, task files -------------------
@pytest.fixture(scope="module")
def small(organism):
    """A quick run's inputs: 64 training prompts and a fixed set of 128 neurons."""
    from tasklens.data.neurons import NeuronSet

    train = load_finetune_task("currency_code", "train").head(64)
    pairs = [(layer, i) for layer in range(4) for i in range(0, 512, 16)]
    return train, NeuronSet.from_pairs(pairs, (4, 512), "every_16th")


def invoke(*args: str):
    from typer.testing import CliRunner

    from tasklens.cli import app

    return CliRunner().invoke(app, ["finetune", *args])


def refused(result, *words: str) -> None:
    """Exit code 2 with one line naming ``words``, no traceback."""
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert all(word in result.output for word in words), result.output


def users_folder(root):
    folder = root / "p"
    (folder / "data").mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes")
    (folder / "data" / "results.json").write_text('{"mine": 1}')
    return folder


def contents(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.reliability
def test_cli_refuses_a_checkpoint_folder_it_does_not_own_before_loading_anything(tmp_path, monkeypatch):
    import tasklens.models

    def no_model(*args, **kwargs):
        raise AssertionError("the checkpoint folder must be checked before the model loads")

    monkeypatch.setattr(tasklens.models, "load_model", no_model)
    folder = users_folder(tmp_path)
    before = contents(folder)
    steps = ["--steps", "12", "--checkpoint-every", "4"]
    refused(invoke("currency_code", *steps, "--checkpoint-dir", str(folder)), "p", "new or empty folder")
    assert contents(folder) == before
    (tmp_path / "file.txt").write_text("mine")
    refused(invoke("currency_code", *steps, "--checkpoint-dir", str(tmp_path / "file.txt")), "not a folder")
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["file.txt"]
    assert (tmp_path / "file.txt").read_text() == "mine"
    monkeypatch.chdir(folder)
    refused(invoke("currency_code", *steps, "--checkpoint-dir", "."), "working folder")
    assert contents(folder) == before


@pytest.mark.reliability
def test_run_refuses_a_foreign_checkpoint_folder_and_keeps_its_files(organism, small, tmp_path):
    from tasklens.errors import TasklensError

    train, neurons = small
    config = FinetuneConfig(steps=2, batch_size=4, checkpoint_every=1)
    folder = users_folder(tmp_path)
    before = contents(folder)
    with pytest.raises(TasklensError, match=r"holds files tasklens did not write.*a new or empty folder"):
        FinetuneRun(organism, train, neurons, config, checkpoint_dir=folder)
    assert contents(folder) == before
    ours = tmp_path / "ours"
    FinetuneRun(organism, train, neurons, config, checkpoint_dir=ours).train()
    (ours / "notes.txt").write_text("added by the user")  # a checkpoint folder holding a user's file
    with pytest.raises(TasklensError, match=r"holds files tasklens did not write \(notes.txt\); .*move them"):
        FinetuneRun(organism, train, neurons, config, checkpoint_dir=ours)
    assert (ours / "notes.txt").read_text() == "added by the user"


@pytest.mark.reliability
@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("lr", float("inf")),
        ("steps", True),
        ("weight_decay", float("inf")),
        ("grad_clip", float("nan")),
        ("eps", float("inf")),
        ("beta1", float("nan")),
    ],
)
def test_config_refuses_non_finite_settings_and_booleans(setting, value):
    from tasklens.errors import TasklensError

    with pytest.raises(TasklensError, match=rf"FinetuneConfig\.{setting} must be"):
        FinetuneConfig(**{setting: value})


@pytest.mark.reliability
def test_cli_refuses_an_infinite_learning_rate():
    refused(invoke("currency_code", "--lr", "inf", "--steps", "2"), "lr", "finite", "--lr")


@pytest.mark.reliability
def test_a_learning_rate_the_weights_cannot_hold_is_refused(organism, small):
    from tasklens.errors import TasklensError

    train, neurons = small
    with pytest.raises(TasklensError, match="larger than the trained weights' type can hold"):
        FinetuneRun(organism, train, neurons, FinetuneConfig(steps=2, lr=1e39))


@pytest.mark.reliability
def test_divergence_stops_with_the_step_and_keeps_the_last_good_checkpoint(organism, small, tmp_path):
    from tasklens.errors import TasklensError
    from tasklens.finetune.checkpoint import read_checkpoint

    train, neurons = small
    config = FinetuneConfig(steps=6, lr=1e30, batch_size=8, checkpoint_every=1)
    run = FinetuneRun(organism, train, neurons, config, checkpoint_dir=tmp_path / "ck")
    with pytest.raises(TasklensError, match=r"diverged at step 2: the loss became nan.*smaller learning"):
        run.train()
    trained, _, meta = read_checkpoint(tmp_path / "ck")  # step 1, written before the loss went NaN
    assert meta["step"] == 1 and len(meta["losses"]) == 1
    assert all(bool(torch.isfinite(t).all()) for t in trained.values())
    assert all(bool(torch.isfinite(p).all()) for p in run.trainable.parameters())


@pytest.mark.reliability
def test_an_edited_checkpoint_step_is_refused(organism, small, tmp_path):
    from tasklens.errors import TasklensError

    train, neurons = small
    config = FinetuneConfig(steps=3, batch_size=4)
    FinetuneRun(organism, train, neurons, config, checkpoint_dir=tmp_path).train()
    path = tmp_path / "checkpoint.json"
    original = path.read_text()
    meta = json.loads(original)
    assert meta["step"] == 3
    path.write_text(json.dumps({**meta, "step": 1}))
    with pytest.raises(TasklensError, match=r"says step 1 but deltas\.safetensors was written at step 3"):
        FinetuneRun(organism, train, neurons, config, checkpoint_dir=tmp_path)
    path.write_text(json.dumps({**meta, "losses": [0.0] * 3}))
    with pytest.raises(TasklensError, match="was edited after the checkpoint was written"):
        FinetuneRun(organism, train, neurons, config, checkpoint_dir=tmp_path)
    path.write_text(json.dumps(meta))  # the same content, other formatting: still the checkpoint
    assert FinetuneRun(organism, train, neurons, config, checkpoint_dir=tmp_path).step == 3


def write_task_file(path, rows):
    path.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in rows))
    return path


COUNTRY_ROWS = [(f"The currency code of country {i} is", f" C{i % 7}") for i in range(40)]


@pytest.mark.reliability
def test_load_finetune_task_splits_a_task_file_deterministically(tmp_path):
    from tasklens.errors import TasklensError

    path = write_task_file(tmp_path / "codes.jsonl", COUNTRY_ROWS)
    train, test = load_finetune_task(str(path), "train"), load_finetune_task(str(path), "test")
    assert (train.name, train.split, test.split) == ("codes", "train", "test")
    assert len(test) == 8 and len(train) == 32 and not set(train.prompts) & set(test.prompts)
    assert sorted(train.prompts + test.prompts) == sorted(p for p, _ in COUNTRY_ROWS)
    shuffled = write_task_file(tmp_path / "codes2.jsonl", COUNTRY_ROWS[::-1])
    assert set(load_finetune_task(str(shuffled), "test").prompts) == set(test.prompts)
    one = write_task_file(tmp_path / "one.jsonl", COUNTRY_ROWS[:1])
    with pytest.raises(TasklensError, match="at least 2"):
        load_finetune_task(str(one), "train")


@pytest.mark.reliability
def test_cli_finetunes_on_a_task_file(tmp_path):
    path = write_task_file(tmp_path / "codes.jsonl", COUNTRY_ROWS)
    result = invoke(str(path), "--scope", "full", "--steps", "2", "--batch-size", "4", "--test-prompts", "4")
    assert result.exit_code == 0, result.output
    assert "codes (full, every parameter, 2 steps): training loss" in result.output
    assert "held-out accuracy" in result.output


@pytest.mark.reliability
def test_cli_prints_the_loss_and_says_when_it_stops_changing(tmp_path):
    path = write_task_file(tmp_path / "codes.jsonl", COUNTRY_ROWS)
    result = invoke(str(path), "--lr", "1e9", "--steps", "5", "--batch-size", "4", "--test-prompts", "4")
    assert result.exit_code == 0, result.output
    # measured: 11.796, then 7.625 on every batch (the outputs no longer depend on the prompt)
    assert "step 1/5: loss 11.796" in result.output and "step 5/5: loss 7.625" in result.output
    assert "training loss 11.796 -> 8.459" in result.output and "stopped changing" in result.output
    assert "try a smaller --lr" in result.output


@pytest.mark.reliability
def test_cli_reports_divergence_in_one_line(tmp_path):
    folder = tmp_path / "ck"
    args = ["--scope", "full", "--lr", "1e9", "--steps", "5", "--batch-size", "4", "--test-prompts", "4"]
    result = invoke("currency_code", *args, "--checkpoint-dir", str(folder), "--checkpoint-every", "1")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "step 1/5: loss 14.4" in result.output  # the loss shows as training goes
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: Training diverged at step 2: the loss became nan"), result.output
    assert "smaller learning rate (--lr)" in last and "the last good one, step 1" in last
    assert json.loads((folder / "checkpoint.json").read_text())["step"] == 1
