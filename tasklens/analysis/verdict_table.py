"""`VerdictTable`: the specificity verdicts, shown the same way in a notebook, the CLI and the report.

A `VerdictTable` is a pandas DataFrame (``.loc``, indexing, ``.to_csv`` and every other
DataFrame use work unchanged) whose printed and notebook forms show a compact view: per set,
the verdict in words (whole), the own task's effect with its interval, the selectivity (own
effect minus the worst other task's), the p-value with a note where it sits at the smallest
value its random sets allow, its adjustment, and, where the verdict is "underpowered" for want
of random sets, the option and value that would give the power; the error control follows as
one line. `VerdictTable.full` (or `~VerdictTable.to_frame`) is the plain DataFrame with every
column.

It renders whichever of its columns are there: the verdict table of
`tasklens.analysis.matrix.EvaluationResult.specificity` (``verdict``, ``effect``,
``effect_low``, ``effect_high``, ``p_random``, ``p_floor``, ``n_null``, ``p_value``,
``p_adjusted``, ``family``, and ``selectivity`` / ``worst`` or ``margin`` / ``closest``).
"""

from __future__ import annotations

import html
import math
import re
import textwrap
from typing import Any

import pandas as pd

from tasklens.analysis.stats import ALPHA
from tasklens.analysis.verdict import controls_needed

#: the compact view's columns, in order, with the header each is shown under
COMPACT = {
    "verdict": "verdict",
    "effect": "own effect [CI]",
    "selectivity": "selectivity [CI]",
    "worst": "worst other task",
    "p": "p",
    "p_adjusted": "p adjusted",
    "needs": "for the power",
}
#: the compact view's headers as the terminal's lines name them
LINE_LABELS = {
    COMPACT["effect"]: "own effect",
    COMPACT["selectivity"]: "selectivity",
    COMPACT["worst"]: "worst other",
    COMPACT["p_adjusted"]: "adjusted",
    COMPACT["needs"]: "for the power:",
}
#: the words an underpowered verdict's needs are put in: more random sets, more prompts
CLI_FLAGS = ("--controls {n}", "--max-prompts {n}")
PYTHON_FLAGS = ("n_controls={n}", "about {n} prompts per task")
#: what the footer says about a p-value at its floor
FLOOR_NOTE = "at floor: p = 1/(n + 1), the smallest p that n random sets allow"


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _fixed(value: Any, digits: int = 2) -> str:
    number = _number(value)
    return f"{number:.{digits}f}" if math.isfinite(number) else "-"


def _p(value: Any) -> str:
    """A p-value to two significant digits (``0.048``, ``0.5``), a dash for none."""
    number = _number(value)
    return f"{number:.2g}" if math.isfinite(number) else "-"


def _interval(row: pd.Series, name: str) -> str:
    """``"0.83 [0.71, 0.95]"`` from ``name``, ``name_low``, ``name_high`` (those that exist)."""
    value = _fixed(row.get(name))
    low, high = row.get(f"{name}_low"), row.get(f"{name}_high")
    if value == "-" or low is None or high is None:
        return value
    return f"{value} [{_fixed(low)}, {_fixed(high)}]"


def level(row: pd.Series) -> str:
    """The verdict's level: ``level`` where the table has it, else the verdict's first words."""
    if isinstance(row.get("level"), str) and row.get("level"):
        return str(row["level"])
    return str(row.get("verdict", "")).split(":")[0].strip()


def at_floor(row: pd.Series) -> bool:
    """Whether the verdict's p is its random sets' floor, 1 / (n + 1): more of them could give a
    smaller one."""
    p, random, floor = (_number(row.get(k)) for k in ("p_value", "p_random", "p_floor"))
    if not (math.isfinite(p) and math.isfinite(random)) or p > random * (1 + 1e-9):
        return False  # the verdict's p is another component's
    if "at_floor" in row.index and isinstance(row["at_floor"], bool | int) and not pd.isna(row["at_floor"]):
        return bool(row["at_floor"])
    return math.isfinite(floor) and random <= floor * (1 + 1e-9)


def family_parts(label: str) -> tuple[float, int | None]:
    """``(alpha, tests)`` from an error control's label ("Benjamini-Hochberg (q = 0.05) over the
    4 tests of this table"); the default alpha and None where the label does not say."""
    alpha = re.search(r"\((?:q|alpha) = ([0-9.]+)\)", label or "")
    tests = re.search(r"over the (\d+) tests", label or "")
    return (float(alpha.group(1)) if alpha else ALPHA), (int(tests.group(1)) if tests else None)


def _as_flags(text: Any, flag: str, prompts_flag: str) -> str:
    """A ``needs`` text ("at least 40 random sets; about 120 prompts per task") in the words of
    the options that give them (``flag`` and ``prompts_flag``, each with ``{n}``)."""
    if not isinstance(text, str):
        return ""
    text = re.sub(r"at least (\d+) random sets", lambda m: flag.format(n=m.group(1)), text)
    return re.sub(r"about (\d+) prompts per task", lambda m: prompts_flag.format(n=m.group(1)), text)


def needs(table: pd.DataFrame, flags: tuple[str, str] = PYTHON_FLAGS) -> pd.Series:
    """Per row, what would give an "underpowered" verdict the power it lacks, in ``flags``'
    words (`CLI_FLAGS` or `PYTHON_FLAGS`): the first with the fewest random sets whose p can
    pass the table's error control (`tasklens.analysis.verdict.controls_needed` for its number
    of tests and alpha), e.g. ``"--controls 60"``, the second with the prompts per task a
    margin test needs; ``""`` elsewhere. A ``needs`` column, where the table has one
    (`EvaluationResult.specificity`: "at least 40 random sets", "about 120 prompts per task"),
    is put in those words; without one, only random sets are derived."""
    if "needs" in table.columns:
        underpowered = pd.Series([level(row) == "underpowered" for _, row in table.iterrows()], table.index)
        return table["needs"].map(lambda text: _as_flags(text, *flags)).where(underpowered, "")
    out = pd.Series("", index=table.index, dtype=object)
    for name, row in table.iterrows():
        if level(row) != "underpowered":
            continue
        alpha, tests = family_parts(str(row.get("family", "")))
        if tests is None:
            tests = int(pd.to_numeric(table.get("p_value"), errors="coerce").notna().sum()) or 1
        needed = controls_needed(tests, alpha)
        drawn = _number(row.get("n_null"))
        random = _number(row.get("p_random"))
        short = math.isfinite(drawn) and drawn < needed
        # only where the random sets are what is missing: p_random at or near its floor, or
        # their number unable to reach the threshold at all
        if short and (at_floor(row) or not math.isfinite(random) or 1 / (drawn + 1) >= alpha):
            out[name] = flags[0].format(n=needed)
    return out


def _floor_words(row: pd.Series) -> str:
    """`` at floor 1/81`` where the row's p is its floor, else nothing."""
    if not at_floor(row):
        return ""
    floor = _number(row.get("p_floor"))
    return f" at floor 1/{round(1 / floor)}" if math.isfinite(floor) and floor > 0 else " at floor"


def compact(table: pd.DataFrame, flags: tuple[str, str] = PYTHON_FLAGS) -> pd.DataFrame:
    """The compact view of a verdict table: text cells under `COMPACT`'s headers, for the
    columns ``table`` has (the ``needs`` column only where a row needs something)."""
    columns = table.columns
    out: dict[str, list[str]] = {}
    rows = [row for _, row in table.iterrows()]
    if "verdict" in columns:
        out[COMPACT["verdict"]] = [str(r["verdict"]) if not pd.isna(r["verdict"]) else "" for r in rows]
    if "effect" in columns:
        out[COMPACT["effect"]] = [_interval(r, "effect") for r in rows]
    if "selectivity" in columns:
        out[COMPACT["selectivity"]] = [_interval(r, "selectivity") for r in rows]
    elif "margin" in columns and pd.api.types.is_numeric_dtype(table["margin"]):
        out[COMPACT["selectivity"]] = [_fixed(r["margin"]) for r in rows]  # own minus the worst other
    worst, worst_effect = ("worst", "worst_effect") if "worst" in columns else ("closest", "closest_effect")
    if worst in columns:
        out[COMPACT["worst"]] = [
            f"{r[worst]} {_fixed(r.get(worst_effect))}" if isinstance(r[worst], str) and r[worst] else "-"
            for r in rows
        ]
    if "p_value" in columns:
        out[COMPACT["p"]] = [_p(r["p_value"]) + _floor_words(r) for r in rows]
    if "p_adjusted" in columns:
        out[COMPACT["p_adjusted"]] = [_p(r["p_adjusted"]) for r in rows]
    wanted = needs(table, flags) if {"verdict", "level", "needs"} & set(columns) else None
    if wanted is not None and wanted.astype(bool).any():
        out[COMPACT["needs"]] = list(wanted)
    return pd.DataFrame(out, index=table.index)


def footer(table: pd.DataFrame) -> list[str]:
    """The lines under the compact view: the error control, the margin rule, the floor note."""
    lines = []
    for column, what in (("family", "error control"), ("margin", "selectivity margin")):
        if column in table.columns and table[column].map(lambda v: isinstance(v, str)).all():
            values = [v for v in dict.fromkeys(table[column]) if v]
            if values:
                lines.append(f"{what}: {'; '.join(values)}")
    if "p_value" in table.columns and any(at_floor(row) for _, row in table.iterrows()):
        lines.append(FLOOR_NOTE)
    return lines


def verdict_lines(table: pd.DataFrame, width: int = 100, flags: tuple[str, str] = PYTHON_FLAGS) -> list[str]:
    """The verdicts as lines of text at most ``width`` wide (for a terminal): per set, its
    verdict in words, then its numbers (the compact view's other cells); the footer last."""
    view = compact(table, flags)
    verdict = COMPACT["verdict"]
    lines: list[str] = []
    for name, row in view.iterrows():
        words = row[verdict] if verdict in view.columns else ""
        lines += textwrap.wrap(f"{name}: {words}", width, subsequent_indent="    ")
        shown = [c for c in view.columns if c != verdict and row[c] not in ("", "-")]
        numbers = "; ".join(f"{LINE_LABELS.get(c, c)} {row[c]}" for c in shown)
        lines += textwrap.wrap(numbers, width, initial_indent="  ", subsequent_indent="    ")
    for line in footer(table):
        lines += textwrap.wrap(line, width, subsequent_indent="  ")
    return lines


def result_repr(result: Any) -> str:
    """An `EvaluationResult` in a few lines: what was measured, how many random sets, and the
    metric on every task with each set intervened on (3 decimals), not its per-prompt data."""
    drawn = f"{result.n_controls} random sets per set"
    if result.settled is not None and result.settled != result.n_controls:
        drawn = f"{result.settled} random sets per set, up to {result.n_controls} where its verdict is "
        drawn += "at stake"
    head = (
        f"EvaluationResult: {result.metric} under {result.intervention_label}, "
        f"{len(result.set_names)} sets x {len(result.tasks)} tasks, {drawn}"
    )
    table = result.pivot().to_string(float_format=lambda v: f"{v:.3f}")
    return f"{head}\n{table}\n(.specificity() for the verdicts, .to_frame() for every value)"


class VerdictTable(pd.DataFrame):
    """A specificity verdict table (a DataFrame) that prints and shows in a notebook as its
    compact view (see the module docstring); ``full()`` / ``to_frame()`` give every column.

    Example:
        >>> table = VerdictTable(
        ...     {"verdict": ["specific"], "effect": [0.834], "effect_low": [0.71], "effect_high": [0.95],
        ...      "p_value": [1 / 81], "p_random": [1 / 81], "p_floor": [1 / 81], "p_adjusted": [0.0123],
        ...      "family": ["Benjamini-Hochberg (q = 0.05) over the 1 tests of this table"]},
        ...     index=pd.Index(["addition"], name="set"))
        >>> print(table)  # doctest: +NORMALIZE_WHITESPACE
                   verdict    own effect [CI]                    p p adjusted
        set
        addition  specific  0.83 [0.71, 0.95]  0.012 at floor 1/81      0.012
        error control: Benjamini-Hochberg (q = 0.05) over the 1 tests of this table
        at floor: p = 1/(n + 1), the smallest p that n random sets allow
        >>> float(table.loc["addition", "effect"])
        0.834
    """

    @property
    def _constructor(self):
        return VerdictTable

    def compact(self, flags: tuple[str, str] = PYTHON_FLAGS) -> pd.DataFrame:
        """The compact view's cells (`compact`); ``flags`` word what an underpowered row needs."""
        return compact(self, flags)

    def _shows_compact(self) -> bool:
        return bool(len(self.columns)) and not compact(self).empty and len(compact(self).columns) > 0

    def full(self) -> pd.DataFrame:
        """Every column, as a plain DataFrame."""
        return pd.DataFrame(self)

    def to_frame(self) -> pd.DataFrame:
        """Every column, as a plain DataFrame (the same as `full`)."""
        return self.full()

    def to_string(self, *args: Any, full: bool = False, flags: tuple[str, str] = PYTHON_FLAGS, **kwargs: Any):
        """The compact view with its footer as text (``full=True``: every column, as pandas
        prints them; other arguments go to `pandas.DataFrame.to_string`)."""
        if full or not self._shows_compact():
            return pd.DataFrame(self).to_string(*args, **kwargs)
        buf = kwargs.pop("buf", None)
        view = compact(self, flags)
        verdict = COMPACT["verdict"]
        if verdict in view.columns:  # words read from the left
            view[verdict] = view[verdict].str.ljust(int(view[verdict].str.len().max() or 0))
        text = "\n".join([view.to_string(*args, **kwargs), *footer(self)])
        if buf is None:
            return text
        buf.write(text) if hasattr(buf, "write") else open(buf, "w", encoding="utf-8").write(text)
        return None

    def __repr__(self) -> str:
        return self.to_string()

    def to_html_compact(self, flags: tuple[str, str] = PYTHON_FLAGS) -> str:
        """The compact view with its footer as HTML (cells escaped, the verdict left-aligned)."""
        view = compact(self, flags)
        table = view.to_html(border=0, escape=True, classes="verdicts")
        notes = "".join(f"<p class='verdict-note'>{html.escape(line)}</p>" for line in footer(self))
        left = "<style>table.verdicts td:first-of-type { text-align: left; }</style>"
        return f"<div>{left}{table}{notes}</div>"

    def _repr_html_(self) -> str:
        if not self._shows_compact():
            return pd.DataFrame(self)._repr_html_()
        return self.to_html_compact()
