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
    Seeds whose probe did not rise are counted in ``n_no_rise``, escaped seeds without
    a plateau onset (no waiting time to measure the lead in) in ``n_no_plateau``.
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
        measured = rows
        if curves is not None:
            if "routing_score" not in curves.columns or curves["routing_score"].isna().all():
                return self._skip("the curves have no routing_score")
            curves = curves[curves["trial_id"].isin(rows["trial_id"])]
            if curves.empty:
                return self._skip("no curve of a disambiguation-task trial")
            rows = escape_table(curves, rows)
            measured = measured[measured["trial_id"].isin(rows["trial_id"])]
        elif "routing_lead" not in rows.columns:
            return self._skip("needs the curves table (routing_score) or a routing_lead column")

        escaped = rows["status"] == escape.ESCAPED
        leads = pd.to_numeric(rows["routing_lead"], errors="coerce")
        usable = escaped & np.isfinite(leads)
        no_plateau = escaped & _missing(rows, "plateau_onset_step")
        if usable.sum() < 2:
            why = (
                f"needs at least 2 escaped seeds with a plateau onset whose routing score "
                f"rises; found {int(usable.sum())} ({int(escaped.sum())} escaped of "
                f"{len(rows)}"
            )
            if no_plateau.any():
                why += (
                    f", {int(no_plateau.sum())} of them escaped without a plateau onset: "
                    "the first-token loss never reached log K first; trials with "
                    "`plateau_onset: watched` measure the waiting time from the watched "
                    "loss instead"
                )
            return self._skip(why + ")")
        self.params_["routing_lead"] = mean_estimate(leads[usable].to_numpy())
        if "z_shuffle_lead" in rows.columns:
            z = pd.to_numeric(rows["z_shuffle_lead"], errors="coerce")
            z = z[escaped & np.isfinite(z)]
            if len(z) >= 2:
                self.params_["z_shuffle_lead"] = mean_estimate(z.to_numpy())
        self.n_ = int(usable.sum())
        self._record_cost(measured)
        self.n_censored_ = int((~escaped).sum())
        self.model_ = "mean lead over escaped seeds (t interval)"
        self.extra_.update(
            definition=DEFINITION,
            median_routing_lead=float(leads[usable].median()),
            n_no_rise=int((escaped & ~np.isfinite(leads) & ~no_plateau).sum()),
            n_no_plateau=int(no_plateau.sum()),
            reference=references(self.law),
        )


def _missing(rows: pd.DataFrame, column: str) -> pd.Series:
    """True where the column is absent or empty (every row when there is no column)."""
    if column not in rows.columns:
        return pd.Series(False, index=rows.index)
    return rows[column].isna()
