"""Routing lead: how far the routing score's rise runs ahead of the loss escape."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import escape
from analysis.escape_times import escape_table
from analysis.laws._base import LawFitter, mean_estimate, select_task
from analysis.reference import references

DEFINITION = (
    "per escaped seed: lead = (escape_step - s_half) / waiting_time, where s_half is the "
    "first evaluation from the plateau onset on at which the probe reaches half of its rise "
    "(from its median up to the onset to its median from the escape step on)"
)


class RoutingLeadFitter(LawFitter):
    """Lead of the routing score (and of the z-shuffle gap) over the loss escape.

    For each escaped seed (see :func:`analysis.escape_times.rise_lead`)::

        lead = (escape_step - s_half) / (escape_step - onset)

    ``routing_lead`` and ``z_shuffle_lead`` are the means over seeds with a t interval;
    0.5 means the probe is half-way up when half of the waiting time is left. Seeds that
    did not escape have no lead: they are counted in ``n_censored`` and not averaged.
    Seeds whose probe did not rise are counted in ``n_no_rise``.
    """

    law = "routing_lead"

    def fit(self, trials: pd.DataFrame, curves: pd.DataFrame | None = None) -> RoutingLeadFitter:
        """Fits from the curves (recomputing every seed's escape) or, without curves,
        from ``routing_lead`` / ``z_shuffle_lead`` columns of the trials table."""
        self._reset()
        self._fit_leads(trials.reset_index(drop=True), curves)
        return self

    def _fit_leads(self, trials: pd.DataFrame, curves: pd.DataFrame | None) -> None:
        rows = select_task(trials, "disambiguation")
        if curves is not None:
            if "routing_score" not in curves.columns or curves["routing_score"].isna().all():
                return self._skip("the curves have no routing_score")
            curves = curves[curves["trial_id"].isin(rows["trial_id"])]
            if curves.empty:
                return self._skip("no curve of a disambiguation-task trial")
            rows = escape_table(curves, rows)
        elif "routing_lead" not in rows.columns:
            return self._skip("needs the curves table (routing_score) or a routing_lead column")

        escaped = rows["status"] == escape.ESCAPED
        leads = pd.to_numeric(rows["routing_lead"], errors="coerce")
        usable = escaped & np.isfinite(leads)
        if usable.sum() < 2:
            return self._skip(
                f"needs at least 2 escaped seeds whose routing score rises; found "
                f"{int(usable.sum())} ({int(escaped.sum())} escaped of {len(rows)})"
            )
        self.params_["routing_lead"] = mean_estimate(leads[usable].to_numpy())
        if "z_shuffle_lead" in rows.columns:
            z = pd.to_numeric(rows["z_shuffle_lead"], errors="coerce")
            z = z[escaped & np.isfinite(z)]
            if len(z) >= 2:
                self.params_["z_shuffle_lead"] = mean_estimate(z.to_numpy())
        self.n_ = int(usable.sum())
        self.n_censored_ = int((~escaped).sum())
        self.model_ = "mean lead over escaped seeds (t interval)"
        self.extra_.update(
            definition=DEFINITION,
            median_routing_lead=float(leads[usable].median()),
            n_no_rise=int((escaped & ~np.isfinite(leads)).sum()),
            reference=references(self.law),
        )
