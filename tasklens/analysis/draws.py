"""How many random sets a page's verdicts draw, so that each verdict can be reached.

A set's test against its random sets is a Monte Carlo p-value, never below ``1 / (n + 1)``
over ``n`` random sets; the smallest p on a page of ``tests`` faces ``alpha / tests`` under
Benjamini-Hochberg or Holm. `Draws.for_page` draws, per set, `controls_needed` random sets for
the page where the set's verdict is at stake, a set's own random sets alone (`controls_needed`
of one test) where it is not, and stops a set early once enough random sets lower its task as
much as it does (Besag and Clifford 1991), at a count that changes no verdict at ``alpha``.
Pass it to `tasklens.analysis.matrix.evaluation_matrix` as ``**draws.kwargs()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from tasklens.analysis.stats import ALPHA
from tasklens.analysis.verdict import check_alpha, controls_needed
from tasklens.errors import TasklensError


def stop_count(most: int, alpha: float = ALPHA) -> int:
    """The fewest exceedances that may stop a set's draws early without changing a verdict at
    ``alpha``: with ``h`` of ``most`` random sets at least as low, ``(h + 1) / (most + 1)`` is at
    least ``alpha``, so the full sequence would not have rejected either.

    >>> stop_count(40), stop_count(80), stop_count(20)
    (2, 4, 1)
    """
    threshold = Fraction(str(check_alpha(alpha))) * (most + 1)
    return max(1, math.ceil(threshold) - 1)


@dataclass(frozen=True)
class Draws:
    """The random sets each set of a page draws.

    Attributes:
        n_controls: random sets for a set whose verdict is not at stake (`evaluation_matrix`'s
            ``n_controls``).
        at_stake: the most for a set whose verdict is at stake (None: ``n_controls`` for all).
        stop_after: exceedances that stop a set's draws (None: no early stop).
        controls_on: the tasks the random sets are evaluated on: ``"own"`` (all the verdict
            reads) or ``"all"``.
    """

    n_controls: int
    at_stake: int | None = None
    stop_after: int | None = None
    controls_on: str = "own"

    @classmethod
    def for_page(
        cls,
        tests: int,
        alpha: float = ALPHA,
        controls: int | None = None,
        most: int | None = None,
        sequential: bool = True,
        controls_on: str = "own",
    ) -> Draws:
        """The draws that let every verdict of a page of ``tests`` reach ``alpha``.

        Args:
            tests: the page's tests (its sets named after tasks).
            controls: random sets for a set not at stake (default: `controls_needed` of one
                test, 20 at alpha 0.05: the fewest whose p can fall below alpha alone); 0 for none.
            most: the most for a set at stake (default: `controls_needed` for the page's tests,
                and at least ``controls``).
            sequential: stop a set's draws early (`stop_count`).

        Example:
            >>> Draws.for_page(2)
            Draws(n_controls=20, at_stake=40, stop_after=2, controls_on='own')
            >>> Draws.for_page(4, controls=3).kwargs()["at_stake"]
            80
        """
        alpha = check_alpha(alpha)
        controls = controls_needed(1, alpha) if controls is None else controls
        if isinstance(controls, bool) or not isinstance(controls, int) or controls < 0:
            raise TasklensError(f"controls must be a whole number >= 0, got {controls!r}")
        if controls == 0:
            return cls(0, None, None, controls_on)
        most = max(controls_needed(max(tests, 1), alpha) if most is None else most, controls)
        h = stop_count(most, alpha)
        return cls(controls, most, h if sequential and h <= controls else None, controls_on)

    def kwargs(self) -> dict[str, Any]:
        """`evaluation_matrix`'s keywords for these draws."""
        return {
            "n_controls": self.n_controls,
            "at_stake": self.at_stake,
            "stop_after": self.stop_after,
            "controls_on": self.controls_on,
        }
