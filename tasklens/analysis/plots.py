"""Matplotlib figures for tasklens's tables (each returns the Figure).

Figures are made with pyplot and detached from it before they are returned, so a
script never opens a window and a notebook shows a figure exactly once: when it
is a cell's result or passed to ``display``. The backend is the user's (Agg when
there is no display, the inline backend in Jupyter).
"""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def _detached(fig):
    plt.close(fig)
    return fig


#: the one diverging colour map: red where the metric falls, blue where it rises
FALL_COLOUR = {"negative": "RdBu", "positive": "RdBu_r"}


def diagonal_order(frame: pd.DataFrame, order: list[str] | None = None) -> pd.DataFrame:
    """``frame`` with its rows and columns in one order, so a set named after a task sits on
    the diagonal at that task: the names in both first (in ``order``, else the columns'
    order), then the other columns and rows in their own order.

    >>> frame = pd.DataFrame([[1, 2], [3, 4]], index=["b", "a"], columns=["a", "b"])
    >>> diagonal_order(frame).index.tolist()
    ['a', 'b']
    """
    shared = [c for c in (order or []) if c in frame.columns and c in frame.index]
    shared += [c for c in frame.columns if c in frame.index and c not in shared]
    rows = shared + [r for r in frame.index if r not in shared]
    columns = shared + [c for c in frame.columns if c not in shared]
    return frame.loc[rows, columns]


def heatmap(
    frame: pd.DataFrame,
    title: str,
    fmt: str = "{:.2f}",
    cmap: str = "viridis",
    center: bool = False,
    falls: str = "negative",
    xlabel: str = "",
    ylabel: str = "",
):
    """A labelled heatmap of a square or rectangular table.

    ``center`` uses the one diverging map around 0, red where the metric falls: ``falls`` says
    which sign is a fall (``"negative"`` for a change, ``"positive"`` for a drop such as
    acc_drop), so the same fall is the same red in every figure.
    """
    values = frame.to_numpy(dtype=float)
    width = max(4.4, 2.2 + 0.8 * values.shape[1])
    fig, ax = plt.subplots(figsize=(width, max(2.8, 1.6 + 0.55 * values.shape[0])), layout="constrained")
    if center:
        if falls not in FALL_COLOUR:
            raise ValueError(f"falls must be 'negative' or 'positive', got {falls!r}")
        finite = values[np.isfinite(values)]
        bound = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
        image = ax.imshow(values, cmap=FALL_COLOUR[falls], vmin=-bound, vmax=bound)
        light = lambda v: abs(v) > 0.6 * bound  # noqa: E731 (white text on the darkest cells)
    else:
        image = ax.imshow(values, cmap=cmap)
        light = lambda v: v < np.nanmean(values)  # noqa: E731
    ax.set_xticks(range(values.shape[1]), [str(c) for c in frame.columns], rotation=45, ha="right")
    ax.set_yticks(range(values.shape[0]), [str(i) for i in frame.index])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7,
                    color="white" if light(v) else "black")  # fmt: skip
    bar = fig.colorbar(image, ax=ax, shrink=0.8)
    if center:
        bar.set_label("red: the metric falls", fontsize=8)
    fig.suptitle("\n".join(textwrap.wrap(title, int(width * 11))), fontsize=9)
    return _detached(fig)


def layer_bars(table: pd.DataFrame, title: str):
    """Per task, stacked bars per layer of exclusive vs shared neurons (from `sharing_table`)."""
    tasks = list(dict.fromkeys(table["task"]))
    fig, axes = plt.subplots(
        1, len(tasks), figsize=(2.2 * len(tasks), 2.8), sharey=True, squeeze=False, layout="constrained"
    )
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = table[table.task == task]
        ax.bar(rows.layer, rows.exclusive, label="exclusive", color="tab:blue")
        ax.bar(rows.layer, rows.shared, bottom=rows.exclusive, label="shared", color="tab:orange")
        ax.set_title(task, fontsize=8)
        ax.set_xlabel("layer")
    axes[0][0].set_ylabel("neurons")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title)
    return _detached(fig)


def curves(frames: dict[str, pd.DataFrame], x: str, ys: list[str], title: str, logx: bool = True):
    """Line plots of several columns against ``x``, one panel per key of ``frames``."""
    fig, axes = plt.subplots(
        1, len(frames), figsize=(2.8 * len(frames), 2.8), sharey=True, squeeze=False, layout="constrained"
    )
    for ax, (name, frame) in zip(axes[0], frames.items(), strict=True):
        for y in ys:
            ax.plot(frame[x].clip(lower=1), frame[y], marker="o", label=y)
        if logx:
            ax.set_xscale("log")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel(x)
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    return _detached(fig)


def effect_bars(summary: pd.DataFrame, title: str):
    """Per set: own-task change, mean change on the other tasks, and the random controls'
    own-task change with ±1 sd error bars (from `EvaluationResult.own_and_others`)."""
    names = list(summary.index)
    x = np.arange(len(names))
    width = 0.27
    fig, ax = plt.subplots(figsize=(3.2 + 1.1 * len(names), 3.0), layout="constrained")
    ax.bar(x - width, summary["own_change"], width, label="own task", color="tab:red")
    ax.bar(x, summary["others_change"], width, label="other tasks (mean)", color="tab:gray")
    ax.bar(
        x + width,
        summary["control_own_change"].fillna(0),
        width,
        yerr=summary["control_own_std"].fillna(0),
        capsize=3,
        label="random sets, own task (±1 sd)",
        color="tab:blue",
    )
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("change from unmodified")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title, fontsize=9)
    return _detached(fig)


#: each verdict level's colour in a forest plot
LEVEL_COLOURS = {
    "specific": "#1b7837",
    "preferential": "#7fbc41",
    "not specific": "#4d4d4d",
    "breaks everything": "#b2182b",
    "underpowered": "#e08214",
    "not tested": "#bababa",
}
FOREST_COLUMNS = (
    "label", "model", "effect", "effect_low", "effect_high", "selectivity", "selectivity_low",
    "selectivity_high", "spare_limit", "random_high", "level",
)  # fmt: skip


def forest(table: pd.DataFrame, title: str = "", note: str = ""):
    """A forest plot of specificity verdicts: one row per claim (``label``) and ``model``.

    The left panel shows each set's own effect (the share of its task's gap to the floor it
    removes, 1: all of it) with its interval, beside the random sets' range (grey, up to their
    97.5th percentile ``random_high``); the right panel its selectivity (own effect minus the
    worst other task's) with its interval, and the margin: the least selectivity that leaves
    the worst task within ``spare_limit`` (``effect - spare_limit``, a tick per row). Points
    are coloured by the verdict's ``level``.

    Args:
        table: one row per set, with the columns `FOREST_COLUMNS`.
        title: the figure's title.
        note: a line under the figure (the model, command and date a published figure names).

    Returns:
        The matplotlib Figure.

    Example:
        >>> row = dict(label="AP neurons", model="organism", effect=0.8, effect_low=0.7,
        ...            effect_high=0.9, selectivity=0.6, selectivity_low=0.4, selectivity_high=0.7,
        ...            spare_limit=0.1, random_high=0.05, level="specific")
        >>> fig = forest(pd.DataFrame([row]), "one set")
        >>> [ax.get_title() for ax in fig.axes]
        ['own effect', 'selectivity']
    """
    missing = [c for c in FOREST_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"forest needs the columns {list(FOREST_COLUMNS)}; missing {missing}")
    claims = list(dict.fromkeys(table["label"]))
    ys, labels, headers, y = [], [], [], 0.0
    for claim in claims:
        headers.append((y, str(claim)))
        y += 1
        for _, row in table[table["label"] == claim].iterrows():
            ys.append((y, row))
            labels.append(str(row["model"]))
            y += 1
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(10.5, 1.4 + 0.32 * y), sharey=True, layout="constrained",
        gridspec_kw={"width_ratios": [1, 1]},
    )  # fmt: skip
    for at, row in ys:
        colour = LEVEL_COLOURS.get(str(row["level"]), "#000000")
        random_high = float(row["random_high"])
        if np.isfinite(random_high):
            left.barh(at, random_high, height=0.5, left=0, color="#d9d9d9", zorder=1)
        for ax, name in ((left, "effect"), (right, "selectivity")):
            value, low, high = (float(row[k]) for k in (name, f"{name}_low", f"{name}_high"))
            if np.isfinite(low) and np.isfinite(high):
                ax.plot([low, high], [at, at], color=colour, linewidth=2, zorder=2)
            ax.plot(value, at, "o", color=colour, markersize=6, zorder=3)
        margin = float(row["effect"]) - float(row["spare_limit"])
        if np.isfinite(margin):
            right.plot([margin, margin], [at - 0.35, at + 0.35], color="black", linewidth=1.2, zorder=2)
    for ax in (left, right):
        ax.axvline(0, color="black", linewidth=0.6)
        ax.grid(axis="x", color="#eeeeee")
        for at, _ in headers:
            ax.axhline(at - 0.5, color="#cccccc", linewidth=0.6)
    left.axvline(1, color="black", linewidth=0.6, linestyle=":")
    ticks = sorted([(at, name, False) for (at, _), name in zip(ys, labels, strict=True)]
                   + [(at, claim, True) for at, claim in headers])  # fmt: skip
    left.set_yticks([at for at, _, _ in ticks], [name for _, name, _ in ticks], fontsize=8)
    for tick, (_, _, header) in zip(left.get_yticklabels(), ticks, strict=True):
        tick.set_fontweight("bold" if header else "normal")
    left.set_ylim(y - 0.5, -0.5)
    left.set_title("own effect", fontsize=9)
    right.set_title("selectivity", fontsize=9)
    left.set_xlabel("share of the own task's gap removed (1: all)", fontsize=8)
    right.set_xlabel("own effect minus the worst other task's", fontsize=8)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    shown = [lv for lv in LEVEL_COLOURS if lv in set(table["level"])]
    handles = [Line2D([], [], marker="o", color=LEVEL_COLOURS[lv], label=lv) for lv in shown]
    handles += [
        Patch(color="#d9d9d9", label="random sets (to 97.5th pct)"),
        Line2D([], [], color="black", linewidth=1.2, label="margin (worst task spared)"),
    ]
    fig.legend(handles=handles, loc="outside right upper", fontsize=7, frameon=False, labelspacing=0.9)
    if title:
        fig.suptitle(title, fontsize=10)
    if note:
        fig.supxlabel(note, fontsize=7, color="#555555", x=0.01, ha="left")
    return _detached(fig)
