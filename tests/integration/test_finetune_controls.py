"""Continual learning against its controls on the organism: what each condition trains, the cells it
keeps per prompt (checked against a replay by hand), the learning-rate search, the model restored."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tasklens.finetune import (
    FinetuneConfig,
    FinetuneRun,
    TaskRouter,
    accuracies,
    load_finetune_task,
    task_neurons,
)
from tasklens.finetune.controls import SEARCH_SEED, ControlledContinual, held_out, random_sets, zero_shot_rows
from tasklens.finetune.evaluation import prompt_values
from tasklens.finetune.outcomes import Outcomes
from tasklens.finetune.verdict import claims_of, judge

ONE_THREAD = True
NAMES = ["continent_code", "subtraction"]


@pytest.fixture(scope="module")
def setting(organism):
    train = {n: load_finetune_task(n, "train") for n in NAMES}
    split = {n: held_out(load_finetune_task(n, "test"), 16, 8) for n in NAMES}
    test, validation = {n: s[0] for n, s in split.items()}, {n: s[1] for n, s in split.items()}
    neurons = task_neurons(organism, train, value=5.0, n_prompts=32)
    router = TaskRouter.fit(organism, train, n_prompts=32)
    return train, test, validation, neurons, router


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.original_model.state_dict().items()}


def test_held_out_prompts_share_no_subject():
    task = load_finetune_task("continent_code", "test")
    test, validation = held_out(task, 40, 20)
    assert len(test) == 40 and len(validation) == 20
    assert not set(test.subjects) & set(validation.subjects)
    assert not set(test.subjects) & set(load_finetune_task("continent_code", "train").subjects)


def test_random_draws_match_the_per_layer_counts_and_differ(setting):
    _, _, _, neurons, _ = setting
    first, second = random_sets(neurons, 0), random_sets(neurons, 1)
    for name, found in neurons.items():
        assert first[name].counts_per_layer() == found.counts_per_layer()
        assert first[name].pairs() != second[name].pairs() != found.pairs()
    assert random_sets(neurons, 0)[NAMES[0]].pairs() == first[NAMES[0]].pairs()


def test_cells_equal_a_replay_by_hand_and_the_model_is_restored(organism, setting):
    train, test, validation, neurons, router = setting
    before = weights(organism)
    experiment = ControlledContinual(
        [NAMES], seeds=(0, 1), random_draws=2, lrs=(1e-2,), steps=6, batch_size=8
    )
    lrs = experiment.search(organism, train, validation, neurons, router)
    assert set(lrs.table.method) == {"SeqFT", "NCFT", "W-NCFT"} and lrs.table.validation_CL.notna().all()
    cells = experiment.run(organism, train, test, neurons, router, lrs)
    assert all(torch.equal(before[k], v) for k, v in weights(organism).items())
    runs = cells.groupby(["method", "neurons"]).apply(
        lambda f: f[["draw", "seed"]].drop_duplicates().shape[0]
    )
    assert runs.to_dict() == {
        ("NCFT", "random"): 4, ("NCFT", "task"): 2, ("SeqFT", "full"): 2,
        ("W-NCFT", "random"): 4, ("W-NCFT", "task"): 2,
    }  # fmt: skip
    # the replay: train the first task's neurons, then the second's, with seed 1, and evaluate
    config = FinetuneConfig(steps=6, lr=1e-2, batch_size=8, seed=1)
    first = FinetuneRun(organism, train[NAMES[0]], neurons[NAMES[0]], config).train().merge()
    after_first = prompt_values(organism, test[NAMES[0]])
    second = FinetuneRun(organism, train[NAMES[1]], neurons[NAMES[1]], config).train().merge()
    final = accuracies(organism, test)
    second.restore(), first.restore()
    ncft = cells[(cells.method == "NCFT") & (cells.neurons == "task") & (cells.seed == 1)].set_index(
        ["stage", "task"]
    )
    assert ncft.loc[(1, NAMES[0]), "values"] == " ".join(f"{v:.6g}" for v in after_first)
    for name, value in final.items():
        assert ncft.loc[(2, name), "mean"] == pytest.approx(value)
    assert (1, NAMES[1]) in ncft.index  # the stage before a task (forward transfer) is evaluated
    seeds = cells[(cells.method == "SeqFT")].groupby("seed")["values"].apply(tuple)
    assert seeds[0] != seeds[1]  # seeds change the data order, so the runs

    zero = zero_shot_rows(organism, test)
    alone = experiment.alone(organism, train, test, {n: "full" for n in NAMES}, 1e-2, "full")
    assert set(alone.method) == {"alone"} and len(alone) == 2 * 2 * 2  # seeds x trained x evaluated
    outcomes = Outcomes(pd.concat([cells, alone]), zero, n_resamples=200)
    page = judge(claims_of(outcomes, None, []), name="this test")
    floors = page.test.map({"random draws": 1 / 3, "seeds": 1 / 4})  # 2 draws, 2 seeds
    assert len(page) == 8 and (page.p_value >= floors - 1e-12).all() and (page.p_floor == floors).all()
    assert page.verdict.str.startswith("underpowered: 2 random draws cannot give p < 0.05").sum() == 6
    assert page.verdict.str.startswith("underpowered: 2 seeds cannot give p < 0.05").sum() == 2
    assert 0 <= outcomes.alone("full")["value"] <= 100


def test_the_search_picks_by_validation_accuracy_and_skips_diverged_rates(organism, setting):
    train, _, validation, neurons, router = setting
    experiment = ControlledContinual(
        [NAMES], seeds=(0,), random_draws=1, lrs=(1e-4, 1e-2, 1e37), steps=4, batch_size=8, methods=("NCFT",)
    )
    lrs = experiment.search(organism, train, validation, neurons, router)
    table = lrs.with_chosen()
    assert (table[table.lr == 1e37].diverged.str.contains("diverged")).all()
    assert table[table.lr == 1e37].validation_CL.isna().all()
    for _, rows in table.groupby("neurons"):
        best = rows.dropna(subset=["validation_CL"])
        assert rows[rows.chosen].lr.iloc[0] == best.loc[best.validation_CL.idxmax(), "lr"]
    assert SEARCH_SEED not in experiment.seeds and np.isfinite(table.validation_CL).sum() == 4
