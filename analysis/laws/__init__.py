"""The laws fitted to a study: one fitter class per law, and :func:`fit_all`.

Example::

    from analysis.laws import NoiseStabilizationFitter, fit_all

    fitter = NoiseStabilizationFitter().fit(trials)
    print(fitter.summary)          # value, ci_low, ci_high per parameter
    laws = fit_all(trials, curves)  # the content of laws.json
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import pandas as pd

from analysis.laws._base import Estimate, FitError, FitWarning, LawFitter, to_plain
from analysis.laws.capacity import CapacityWallFitter
from analysis.laws.duration import PlateauDurationFitter
from analysis.laws.gap import DirectionalGapFitter
from analysis.laws.noise import NoiseStabilizationFitter
from analysis.laws.routing import RoutingLeadFitter

__all__ = [
    "LAWS",
    "CapacityWallFitter",
    "DirectionalGapFitter",
    "Estimate",
    "FitError",
    "FitWarning",
    "LawFitter",
    "NoiseStabilizationFitter",
    "PlateauDurationFitter",
    "RoutingLeadFitter",
    "fit_all",
    "fit_law",
]

logger = logging.getLogger(__name__)

LAWS: dict[str, type[LawFitter]] = {
    "noise_stabilization": NoiseStabilizationFitter,
    "plateau_duration": PlateauDurationFitter,
    "capacity_wall": CapacityWallFitter,
    "directional_gap": DirectionalGapFitter,
    "routing_lead": RoutingLeadFitter,
}


def fit_all(trials: pd.DataFrame, curves: pd.DataFrame | None = None) -> dict[str, Any]:
    """Fits every law; the result is the content of ``laws.json``.

    Args:
        trials: the trials table (one row per trial and seed).
        curves: the curves table; without it the routing lead is taken from a
            ``routing_lead`` column of ``trials`` or skipped.

    Returns:
        ``{law: entry}`` for the keys of :data:`LAWS`. An entry is the fitter's
        ``to_dict()`` plus ``warnings`` (the :class:`FitWarning` messages it raised), or
        ``{"skipped": why}``; a fit that did not converge is skipped with ``error`` and
        ``try`` (the remedies). JSON-ready: NaN and infinities become None.
    """
    return {name: fit_law(cls(), trials, curves) for name, cls in LAWS.items()}


def fit_law(
    fitter: LawFitter, trials: pd.DataFrame, curves: pd.DataFrame | None = None
) -> dict[str, Any]:
    """Fits one law and returns its ``laws.json`` entry (see :func:`fit_all`).

    Caveats are collected into the entry and issued again as :class:`FitWarning`.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FitWarning)
        try:
            if isinstance(fitter, RoutingLeadFitter):
                fitter.fit(trials, curves)
            else:
                fitter.fit(trials)
            entry = fitter.to_dict()
        except FitError as err:
            logger.warning("%s", err)
            entry = {
                "skipped": f"the fit did not converge: {err.problem}",
                "error": str(err),
                "try": err.remedies,
            }
    messages = []
    for w in caught:
        if issubclass(w.category, FitWarning):
            messages.append(str(w.message))
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if messages and "skipped" not in entry:
        entry["warnings"] = messages
    return to_plain(entry)
