"""The verdict table's compact view, on tables made by hand in today's and the redesigned shape."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from tasklens.analysis.draws import Draws, stop_count
from tasklens.analysis.verdict import controls_needed, monte_carlo_p
from tasklens.analysis.verdict_table import CLI_FLAGS, VerdictTable, compact, needs, verdict_lines

FAMILY = "Benjamini-Hochberg (q = 0.05) over the 2 tests of this table"
LONG = (
    "underpowered: 3 random sets cannot give p < 0.05; evaluate more; hurts currency_of as much (0.00 "
    "of its gap vs 0.03, p = 0.066); too few prompts to tell; and 1 more"
)


def todays() -> pd.DataFrame:
    """`EvaluationResult.specificity`'s columns as they are: ``closest``, a numeric ``margin``."""
    return pd.DataFrame(
        {
            "n_prompts": [150, 150],
            "n_null": [40, 3],
            "reason": ["", "3 random sets cannot give p < 0.05; evaluate more"],
            "effect": [0.4213, 0.2311],
            "effect_low": [0.35, 0.15],
            "effect_high": [0.5, 0.31],
            "random_effect": [0.03, 0.0],
            "p_floor": [1 / 41, 1 / 4],
            "p_random": [1 / 41, 1 / 4],
            "p_others": [0.001, 0.066],
            "closest": ["continent_of", "currency_of"],
            "closest_effect": [0.004, 0.0],
            "margin": [0.417, 0.231],
            "p_value": [1 / 41, 1 / 4],
            "decisive": [False, False],
            "p_adjusted": [1 / 41 * 2, 1 / 4],
            "family": [FAMILY, FAMILY],
            "verdict": ["specific", LONG],
        },
        index=pd.Index(["addition", "continent_of"], name="set"),
    )


def redesigned() -> pd.DataFrame:
    """The lead's redesigned columns: ``level``, ``worst``, ``selectivity`` with its interval,
    ``at_floor``, a text ``margin`` and ``needs``."""
    return pd.DataFrame(
        {
            "n_prompts": [48, 48, 48],
            "level": ["specific", "underpowered", "not tested"],
            "verdict": ["specific", "underpowered: 39 random sets cannot reach 0.05 / 3", "not tested: NaN"],
            "effect": [0.62, 0.3, np.nan],
            "effect_low": [0.5, 0.1, np.nan],
            "effect_high": [0.7, 0.45, np.nan],
            "random_effect": [0.01, 0.02, np.nan],
            "p_random": [1 / 160, 1 / 40, np.nan],
            "n_null": [159, 39, 0],
            "p_floor": [1 / 160, 1 / 40, np.nan],
            "at_floor": [True, True, False],
            "worst": ["capital_of", "plain text", ""],
            "worst_effect": [0.05, 0.1, np.nan],
            "worst_low": [0.0, 0.05, np.nan],
            "worst_high": [0.1, 0.2, np.nan],
            "selectivity": [0.57, 0.2, np.nan],
            "selectivity_low": [0.44, 0.01, np.nan],
            "selectivity_high": [0.66, 0.35, np.nan],
            "spare_limit": [0.1, 0.1, np.nan],
            "p_value": [1 / 160, 1 / 40, np.nan],
            "p_adjusted": [0.0125, 0.0375, np.nan],
            "family": ["Holm (alpha = 0.05) over the 2 tests of this table"] * 3,
            "margin": ["spared: the worst task loses at most 0.1 of its gap"] * 3,
            "needs": ["", "at least 60 random sets; about 120 prompts per task", ""],
            "reason": ["", "too few random sets", "NaN"],
            "decisive": [False, False, False],
        },
        index=pd.Index(["continent_of", "currency_of", "addition"], name="set"),
    )


def test_the_compact_view_of_todays_table_shows_the_verdict_whole_with_interval_p_floor_and_flag():
    table = VerdictTable(todays())
    view = compact(table, CLI_FLAGS)
    assert list(view.columns) == [
        "verdict", "own effect [CI]", "selectivity [CI]", "worst other task", "p", "p adjusted",
        "for the power",
    ]  # fmt: skip
    assert view.loc["addition", "own effect [CI]"] == "0.42 [0.35, 0.50]"
    assert view.loc["addition", "p"] == "0.024 at floor 1/41"
    assert view.loc["continent_of", "verdict"] == LONG  # whole, never cut
    assert view.loc["continent_of", "for the power"] == f"--controls {controls_needed(2)}" == "--controls 40"
    assert view.loc["addition", "for the power"] == ""  # specific: nothing to add
    text = repr(table)
    assert LONG in text and "..." not in text
    assert text.splitlines()[-2] == f"error control: {FAMILY}"
    assert "at floor: p = 1/(n + 1)" in text.splitlines()[-1]
    headers = "verdict own effect [CI] selectivity [CI] worst other task p p adjusted for the power"
    assert text.splitlines()[0].split() == headers.split()
    assert text.splitlines()[2].startswith("addition      specific ")  # the words read from the left


def test_the_compact_view_of_the_redesigned_table_uses_its_own_columns():
    table = VerdictTable(redesigned())
    view = table.compact()
    assert view.loc["continent_of", "selectivity [CI]"] == "0.57 [0.44, 0.66]"
    assert view.loc["continent_of", "worst other task"] == "capital_of 0.05"
    assert view.loc["currency_of", "for the power"] == "n_controls=60; about 120 prompts per task"
    cli = compact(table, CLI_FLAGS)  # its own ``needs`` in the options' words
    assert cli.loc["currency_of", "for the power"] == "--controls 60; --max-prompts 120"
    assert view.loc["addition", "own effect [CI]"] == "-" and view.loc["addition", "p"] == "-"
    assert view.loc["continent_of", "p"] == "0.0063 at floor 1/160"
    shown_elsewhere = redesigned()  # a not-specific row's needs, and a p that is not p_random's
    shown_elsewhere.loc["continent_of", ["level", "needs", "p_value"]] = [
        "not specific",
        "at least 60 random sets",
        0.5,
    ]
    view = VerdictTable(shown_elsewhere).compact()
    assert view.loc["continent_of", "for the power"] == "" and view.loc["continent_of", "p"] == "0.5"
    lines = table.to_string().splitlines()
    assert "selectivity margin: spared: the worst task loses at most 0.1 of its gap" in lines
    assert "error control: Holm (alpha = 0.05) over the 2 tests of this table" in lines


@pytest.mark.parametrize("make", [todays, redesigned])
def test_a_verdict_table_is_still_a_dataframe(make, tmp_path):
    table = VerdictTable(make())
    assert isinstance(table.loc[table.index[0]], pd.Series)
    assert isinstance(table[["effect", "p_value"]], VerdictTable) and isinstance(table.copy(), VerdictTable)
    assert float(table.loc[table.index[0], "effect"]) == make()["effect"].iloc[0]
    assert type(table.full()) is pd.DataFrame and list(table.to_frame().columns) == list(make().columns)
    table.to_csv(tmp_path / "t.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "t.csv", index_col="set"), pd.read_csv(
        io.StringIO(make().to_csv()), index_col="set"))  # fmt: skip
    assert table.to_string(full=True) == make().to_string()
    html = table._repr_html_()
    assert "<table" in html and "error control" in html and "&lt;" not in html.split("<table")[0]
    assert len(table[["n_prompts"]].compact().columns) == 0  # nothing of the view: pandas' own repr
    assert repr(table[["n_prompts"]]) == repr(make()[["n_prompts"]])


def test_the_html_escapes_the_cells():
    made = todays()
    made.loc["addition", "verdict"] = "specific <b>bold</b>"
    assert "&lt;b&gt;bold&lt;/b&gt;" in VerdictTable(made).to_html_compact()


def test_needs_names_the_flag_only_where_random_sets_are_what_is_missing():
    made = todays()
    made.loc["addition", ["verdict", "n_null", "p_random", "p_floor"]] = [
        "underpowered: hurts currency_of as much; too few prompts to tell",
        40,
        0.3,
        1 / 41,
    ]
    assert needs(made, CLI_FLAGS).tolist() == ["", "--controls 40"]  # 40 random sets suffice


def test_verdict_lines_fit_a_terminal():
    for make in (todays, redesigned):
        lines = verdict_lines(VerdictTable(make()), width=100, flags=CLI_FLAGS)
        assert max(map(len, lines)) <= 100
        assert any(line.startswith("continent_of: underpowered") for line in lines) or make is redesigned
    joined = " ".join(" ".join(verdict_lines(VerdictTable(todays()), flags=CLI_FLAGS)).split())
    assert "for the power: --controls 40" in joined and "p 0.024 at floor 1/41" in joined


def test_draws_reach_the_threshold_of_their_page():
    for tests in (1, 2, 3, 4, 12):
        draws = Draws.for_page(tests)
        assert draws.n_controls == 20 and draws.at_stake == controls_needed(tests)
        assert 1 / (draws.at_stake + 1) < 0.05 / tests  # a set beyond all its random sets passes its page
        # an early stop happens only where all the draws would not have rejected at alpha either
        h = draws.stop_after
        assert (h + 1) / (draws.at_stake + 1) >= 0.05 and h / (draws.at_stake + 1) < 0.05
    assert Draws.for_page(4, controls=0) == Draws(0, None, None)
    assert Draws.for_page(2, controls=50).at_stake == 50  # never fewer than asked for
    assert Draws.for_page(2, sequential=False).stop_after is None
    assert stop_count(159) == 7


def test_sequential_draws_keep_their_level_on_a_null_set():
    """Calibration: a set no better than its random sets, drawn as `Draws` draws them, is
    significant at most at the nominal rate; a set beyond all of them reaches its page's
    threshold."""
    from tasklens.analysis.verdict import sequential_draws

    draws, rng, hits = Draws.for_page(2), np.random.default_rng(0), 0
    n = 2000
    for _ in range(n):
        observed = rng.normal()
        null = sequential_draws([observed], lambda i: rng.normal(size=1), draws.stop_after, draws.at_stake)
        hits += monte_carlo_p(observed, null[:, 0]) < 0.05
    assert hits / n <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / n)
    beyond = sequential_draws([9.0], lambda i: rng.normal(size=1), draws.stop_after, draws.at_stake)
    assert monte_carlo_p(9.0, beyond[:, 0]) == 1 / 41 < 0.05 / 2


def test_an_evaluation_result_prints_in_a_few_rounded_lines():
    from test_report_figures import made_result

    from tasklens.analysis.verdict_table import result_repr

    result = made_result()
    result.n_controls, result.settled = 40, 20
    lines = result_repr(result).splitlines()
    assert lines[0] == (
        "EvaluationResult: exact_match under zero ablation, 3 sets x 3 tasks, 20 random sets per set, "
        "up to 40 where its verdict is at stake"
    )
    assert len(lines) == 2 + 4 + 1 and "0.500" in lines[3] and "prompt" not in result_repr(result)
