"""Matplotlib figures for tasklens's tables (each returns the Figure).

Figures are made with pyplot and detached from it before they are returned, so a
script never opens a window and a notebook shows a figure exactly once: when it
is a cell's result or passed to ``display``. The backend is the user's (Agg when
there is no display, the inline backend in Jupyter).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def _detached(fig):
    plt.close(fig)
    return fig


def heatmap(
    frame: pd.DataFrame, title: str, fmt: str = "{:.2f}", cmap: str = "viridis", center: bool = False
):
    """A labelled heatmap of a square or rectangular table; ``center`` uses a diverging map around 0."""
    values = frame.to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * values.shape[1], 0.8 + 0.55 * values.shape[0]))
    if center:
        bound = np.nanmax(np.abs(values)) or 1.0
        image = ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound)
    else:
        image = ax.imshow(values, cmap=cmap)
    ax.set_xticks(range(values.shape[1]), [str(c) for c in frame.columns], rotation=45, ha="right")
    ax.set_yticks(range(values.shape[0]), [str(i) for i in frame.index])
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(
                j,
                i,
                fmt.format(v),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if not center and v < np.nanmean(values) else "black",
            )
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_title(title)
    return _detached(fig)


def layer_bars(table: pd.DataFrame, title: str):
    """Per task, stacked bars per layer of exclusive vs shared neurons (from `sharing_table`)."""
    tasks = list(dict.fromkeys(table["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(2.2 * len(tasks), 2.6), sharey=True, squeeze=False)
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
    fig, axes = plt.subplots(1, len(frames), figsize=(2.8 * len(frames), 2.6), sharey=True, squeeze=False)
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
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(names), 3.0))
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
