"""Split-half stability and held-out effects on the organism."""

from __future__ import annotations

import pytest

from tasklens.analysis.stability import held_out_effect, split_half, stability_curve
from tasklens.errors import TasklensError
from tasklens.scoring import ActivationStats, GradientAttribution
from tasklens.tasks.builtin import load_builtin


@pytest.fixture(scope="module")
def capital(organism):
    return load_builtin("capital_of", "detection").sample(64)


def test_split_half_is_deterministic_and_grows_with_prompts(organism, capital):
    scorer = GradientAttribution()
    small = split_half(organism, capital, scorer, "top_percent", 2.0, n_splits=3, n_prompts=4, seed=1)
    again = split_half(organism, capital, scorer, "top_percent", 2.0, n_splits=3, n_prompts=4, seed=1)
    large = split_half(organism, capital, scorer, "top_percent", 2.0, n_splits=3, n_prompts=32, seed=1)
    assert small.jaccard == again.jaccard and len(small.jaccard) == 3
    assert all(0.0 <= j <= 1.0 for j in small.jaccard + large.jaccard)
    low, high = large.interval()
    assert low <= large.mean <= high
    # sets found on more prompts agree more with each other (measured: ~0.5 at 4 prompts, ~0.8 at 32)
    assert large.mean > small.mean + 0.1
    # and far above two random sets of the same size (expected Jaccard ~ share / (2 - share) ~ 0.01)
    assert small.mean > 0.2
    assert "Jaccard" in repr(large)


def test_stability_curve_skips_sizes_the_task_cannot_supply(organism, capital):
    curve = stability_curve(organism, capital, ActivationStats("mean_abs"), sizes=(8, 32, 64), n_splits=2)
    assert list(curve.n_prompts) == [8, 32]
    assert curve["mean"].between(0, 1).all()
    with pytest.raises(TasklensError, match="too few"):
        stability_curve(organism, capital.sample(10), ActivationStats(), sizes=(8,))


def test_held_out_effect_compares_with_random_sets(organism):
    from tasklens.selection import top_percent

    found_on = load_builtin("capital_of", "detection").sample(32)
    held_out = load_builtin("capital_of", "evaluation").sample(32)
    neurons = top_percent(GradientAttribution().attribute(organism, found_on), 2.0).renamed("capital_of")
    frame = held_out_effect(organism, neurons, found_on, held_out, metric="logprob", n_controls=3)
    assert list(frame["sample"]) == ["found_on", "held_out"]
    # the set found on one sample hurts the held-out facts too, far more than random sets
    for row in frame.itertuples():
        # (measured: -0.17 / -0.2 nats against random sets' -0.0005)
        assert row.change < -0.05 and row.change < 20 * row.random_change
        assert row.random_std >= 0


def test_split_half_rejects_halves_that_do_not_fit(organism, capital):
    with pytest.raises(TasklensError, match="n_prompts=32"):
        split_half(organism, capital, GradientAttribution(), n_prompts=40)
