"""What a run shows: heatmaps with each set on the diagonal and one colour sense, the forest plot,
and a re-run stage that says what it removed (no model: results and folders made by hand)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from tasklens.analysis.matrix import BASELINE, EvaluationResult
from tasklens.analysis.plots import FOREST_COLUMNS, diagonal_order, forest, heatmap
from tasklens.errors import TasklensWarning
from tasklens.runs import RunFolder
from tasklens.runs.pipeline import change_figure, interference_figure

TASKS = ["continent_of", "currency_of", "addition"]


def made_result() -> EvaluationResult:
    """Sets in another order than the tasks (as a run's sets are: sorted by file name); each
    set lowers its own task by 0.5."""
    sets = sorted(TASKS)
    baseline = pd.Series(1.0, index=TASKS)
    values = pd.DataFrame(1.0, index=sets, columns=TASKS)
    for name in sets:
        values.loc[name, name] = 0.5
    prompts = pd.DataFrame(
        [{"set": s, "task": t, "prompt": 0, "value": 1.0} for s in [BASELINE, *sets] for t in TASKS]
    )
    return EvaluationResult(
        metric="exact_match",
        intervention={"kind": "zero"},
        baseline=baseline,
        values=values,
        controls=values * np.nan,
        controls_std=values * np.nan,
        sizes=pd.Series(5, index=sets),
        prompt_values=prompts,
    )


def labels(fig) -> tuple[list[str], list[str]]:
    ax = fig.axes[0]
    return [t.get_text() for t in ax.get_xticklabels()], [t.get_text() for t in ax.get_yticklabels()]


def test_the_change_heatmap_puts_each_set_on_the_diagonal_at_its_task():
    result = made_result()
    assert list(result.change().index) != list(result.change().columns)  # the order a run has
    columns, rows = labels(change_figure(result))
    assert columns == rows == TASKS
    image = change_figure(result).axes[0].get_images()[0].get_array()
    assert np.allclose(np.diag(image), -0.5) and np.allclose(image[~np.eye(3, dtype=bool)], 0)


def test_the_interference_heatmap_puts_each_set_on_the_diagonal_in_the_runs_order():
    drop = made_result().relative_drop()  # rows: tasks, columns: sets (sorted)
    columns, rows = labels(interference_figure(drop, TASKS))
    assert columns == rows == TASKS


def test_a_fall_is_red_in_every_heatmap():
    """The same drop (0.5 of the metric) is the same red in a change table (negative) and in an
    acc_drop table (positive)."""
    change = diagonal_order(made_result().change())
    drop = -change
    reds = []
    for frame, falls in ((change, "negative"), (drop, "positive")):
        image = heatmap(frame, "t", center=True, falls=falls).axes[0].get_images()[0]
        reds.append(image.to_rgba(image.get_array())[0, 0])
    assert np.allclose(reds[0], reds[1])
    red, green, blue, _ = reds[0]
    assert red > 0.4 and red > 2 * blue and red > 2 * green


def test_diagonal_order_keeps_rows_and_columns_without_a_partner():
    frame = pd.DataFrame(np.arange(6).reshape(3, 2), index=["b", "x", "a"], columns=["a", "b"])
    assert diagonal_order(frame).index.tolist() == ["a", "b", "x"]
    assert diagonal_order(frame, ["b", "a"]).columns.tolist() == ["b", "a"]


def forest_table() -> pd.DataFrame:
    rows = []
    for claim in ("AP neurons carry their relation", "top 1 % gradient attribution"):
        for model, level, effect in (("organism", "specific", 0.8), ("smollm2-135m", "underpowered", 0.3)):
            interval = dict(effect_low=effect - 0.1, effect_high=effect + 0.1)
            low, high = effect - 0.3, effect - 0.1
            selectivity = dict(selectivity=effect - 0.2, selectivity_low=low, selectivity_high=high)
            rows.append(dict(label=claim, model=model, effect=effect, **interval, **selectivity,
                             spare_limit=0.1, random_high=0.05, level=level))  # fmt: skip
    return pd.DataFrame(rows)


def test_the_forest_plot_draws_every_claim_and_model_with_intervals_margin_and_random_range():
    table = forest_table()
    fig = forest(table, "specificity", note="hand-made table, 2026-12-07")
    left, right = fig.axes
    assert (left.get_title(), right.get_title()) == ("own effect", "selectivity")
    ticks = [t.get_text() for t in left.get_yticklabels()]
    assert ticks == [table.label[0], "organism", "smollm2-135m", table.label[2], "organism", "smollm2-135m"]
    # per row an interval and a point in each panel, and a margin tick in the right one
    assert len(left.lines) >= 2 * len(table) and len(right.lines) >= 3 * len(table)
    assert len(left.patches) == len(table)  # the random sets' range, one bar per row
    ticks_ = [line for line in right.lines if np.ptp(line.get_ydata()) == pytest.approx(0.7)]
    margins = [line.get_xdata()[0] for line in ticks_]
    assert sorted(margins) == pytest.approx(sorted(table.effect - table.spare_limit))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert buffer.getvalue()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="missing"):
        forest(table.drop(columns="spare_limit"))
    assert set(FOREST_COLUMNS) <= set(table.columns)


def staged(folder: RunFolder, stage: str, names: list[str]) -> None:
    with folder.stage(stage, {"stage": stage}, names) as out:
        for name in names:
            out.file(name).write_text(stage)


def test_re_running_a_stage_removes_only_what_reads_it_and_says_so(tmp_path):
    folder = RunFolder(tmp_path / "run")
    for stage, names in (("locate", ["sets.json"]), ("ablate", ["matrix.csv"]),
                         ("compare", ["overlap.png"]), ("report", ["report.html"])):  # fmt: skip
        staged(folder, stage, names)
    with pytest.warns(TasklensWarning, match=r"re-running `ablate` removed .*`report` \(report.html\)"):
        staged(folder, "ablate", ["matrix.csv"])
    assert list(folder.manifest()["stages"]) == ["locate", "ablate", "compare"]
    assert (tmp_path / "run/overlap.png").is_file()  # compare does not read ablate: it stays
    assert not (tmp_path / "run/report.html").exists()
    with pytest.warns(TasklensWarning, match="`ablate` .*; `compare` .*run `tasklens ablate` and"):
        staged(folder, "locate", ["sets.json"])
    assert list(folder.manifest()["stages"]) == ["locate"]
