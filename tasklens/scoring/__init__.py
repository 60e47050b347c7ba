"""Scorers: one class per method, one ``attribute(model, task, unit=, batch_size=)`` entry point.

Every scorer is registered by name in `SCORERS`; `get_scorer` builds one from its
name and parameters (as the CLI and run configs do). Register your own with
`tasklens.register_scorer`.
"""

from __future__ import annotations

from typing import Any

from tasklens.errors import TasklensError
from tasklens.scoring.activation import ActivationStats
from tasklens.scoring.attribution import GradientAttribution
from tasklens.scoring.base import SCORERS, Scorer, ScorerParams, param_names
from tasklens.scoring.cgvst import CGVST
from tasklens.scoring.exact import ExactAblation, VerifiedPatching
from tasklens.scoring.expertise import AveragePrecisionExpertise, PromptMeans
from tasklens.scoring.integrated_gradients import IntegratedGradients
from tasklens.scoring.patching import AttributionPatching


def get_scorer(name: str, **params: Any) -> Scorer:
    """A scorer by name, e.g. ``get_scorer("attribution_patching", baseline="mean")``."""
    cls = SCORERS.get(name)
    known = param_names(cls)
    unknown = sorted(set(params) - set(known)) if known else []
    if unknown:
        raise TasklensError(
            f"Scorer {name!r} has no parameter(s) {unknown}; its parameters are {sorted(known)}"
        )
    try:
        return cls(**params)
    except TypeError as error:
        raise TasklensError(f"Cannot build scorer {name!r} with {params}: {error}") from error


__all__ = [
    "CGVST",
    "SCORERS",
    "ActivationStats",
    "AttributionPatching",
    "AveragePrecisionExpertise",
    "ExactAblation",
    "GradientAttribution",
    "IntegratedGradients",
    "PromptMeans",
    "Scorer",
    "ScorerParams",
    "VerifiedPatching",
    "get_scorer",
    "param_names",
]
