"""Scorers: one class per method, one ``attribute(model, task, unit=, batch_size=)`` entry point."""

from __future__ import annotations

from tasklens.errors import check_choice
from tasklens.scoring.activation import ActivationStats
from tasklens.scoring.attribution import GradientAttribution
from tasklens.scoring.base import Scorer
from tasklens.scoring.cgvst import CGVST
from tasklens.scoring.exact import ExactAblation, VerifiedPatching
from tasklens.scoring.expertise import AveragePrecisionExpertise
from tasklens.scoring.integrated_gradients import IntegratedGradients
from tasklens.scoring.patching import AttributionPatching

SCORERS: dict[str, type] = {
    cls.name: cls
    for cls in (
        ActivationStats,
        GradientAttribution,
        CGVST,
        AttributionPatching,
        IntegratedGradients,
        ExactAblation,
        VerifiedPatching,
        AveragePrecisionExpertise,
    )
}


def get_scorer(name: str, **params) -> Scorer:
    """A scorer by name, e.g. ``get_scorer("attribution_patching", baseline="mean")``."""
    check_choice("scorer", name, SCORERS)
    return SCORERS[name](**params)


__all__ = [
    "CGVST",
    "SCORERS",
    "ActivationStats",
    "AttributionPatching",
    "AveragePrecisionExpertise",
    "ExactAblation",
    "GradientAttribution",
    "IntegratedGradients",
    "Scorer",
    "VerifiedPatching",
    "get_scorer",
]
