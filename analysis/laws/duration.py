"""Plateau duration: the escape step against the data set size D and the ambiguity K."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.laws._aft import (
    DISTRIBUTIONS,
    cells_without_escape,
    few_events_warning,
    fit_aft,
    two_axis_design,
)
from analysis.laws._base import (
    LawFitter,
    describe_values,
    hold_fixed,
    mean_estimate,
    require_columns,
    select_task,
    to_plain,
)
from analysis.reference import references


class PlateauDurationFitter(LawFitter):
    """Escape step against D (training examples) and K, censored trials included.

    Accelerated failure time::

        log t = c + alpha log(D / D0) + gamma log(K / K0) + scale * eps

    ``D_exponent`` = alpha is the exponent of the escape step in D at fixed K;
    ``K_exponent`` = gamma is the coefficient of log K at fixed D: the duration does not
    depend on K when its interval covers 0 (``K_independent``). Since D = K x bases,
    ``K_exponent_fixed_bases`` = alpha + gamma is the K coefficient at a fixed number of
    bases (``K_independent_fixed_bases``): the two readings of "duration does not
    depend on K" differ, and a study tells them apart. D0 and K0 are the
    geometric centres of the study's values; ``median_escape_at_ref`` is the median
    escape step there. ``plateau_height`` is the mean of plateau_loss / log K over every
    disambiguation row with a plateau (1 when the plateau sits at log K), and
    ``plateau_height_by_K`` the same per K when there are several;
    ``plateau_rows`` / ``plateau_candidates`` counts the disambiguation rows with a
    plateau onset (with the ``marginal`` onset, a run that escapes before its
    first-token loss reaches log K has no plateau).

    Other varying design columns (lr, batch size, model, ...) are held fixed at the
    slice with the most (D, K) cells.

    Args:
        distribution: ``"lognormal"`` or ``"weibull"`` noise on log escape time.
    """

    law = "plateau_duration"

    def __init__(self, distribution: str = "lognormal") -> None:
        if distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"distribution={distribution!r} is not allowed: must be one of {DISTRIBUTIONS}"
            )
        self.distribution = distribution
        super().__init__()

    def _fit(self, trials: pd.DataFrame) -> None:
        why = require_columns(trials, ("status", "escape_step", "steps", "D", "K"), self.law)
        if why:
            return self._skip(why)
        task_rows = select_task(trials, "disambiguation")
        if task_rows.empty:
            return self._skip("no trial of the disambiguation task")
        rows, held = hold_fixed(task_rows, ("D", "K"))
        if rows["D"].nunique() < 2:
            found = describe_values(rows["D"])
            return self._skip(f"needs at least 2 distinct D values at fixed K; found {found}")
        design = two_axis_design(
            rows,
            self.law,
            ("D", "K"),
            ("log_D", "log_K"),
            "vary D at fixed K and K at fixed D",
        )
        if isinstance(design, str):
            return self._skip(design)
        data, frame, covariates = design.data, design.frame, design.covariates
        d0, k0 = design.reference

        empty = cells_without_escape(frame, ["D", "K"])
        remedies = (
            [f"raise max_steps for the cells where no trial escaped: {empty}"] if empty else []
        )
        remedies.append("add seeds to every (D, K) cell")
        fit = fit_aft(frame, covariates, self.distribution, self.law, remedies)
        few_events_warning(fit, self.law)

        self.params_["D_exponent"] = fit.estimate("log_D")
        if "log_K" in covariates:
            self.params_["K_exponent"] = fit.estimate("log_K")
            self.extra_["K_independent"] = self.params_["K_exponent"].covers(0.0)
            # D = K x bases: at fixed bases, log t moves with log K by alpha + gamma
            bases = fit.contrast({"log_D": 1.0, "log_K": 1.0})
            self.params_["K_exponent_fixed_bases"] = bases
            self.extra_["K_independent_fixed_bases"] = bases.covers(0.0)
        shift = fit.log_median_shift()
        self.params_["median_escape_at_ref"] = fit.estimate("Intercept").transformed(
            lambda v: math.exp(v + shift)
        )
        self._plateau_height(task_rows)
        self.n_, self.n_censored_ = len(frame), data.n_censored
        self._record_cost(frame)
        self.model_ = f"{self.distribution} AFT: log t = c + alpha log D + gamma log K"
        self.extra_.update(
            distribution=self.distribution,
            scale=fit.scale,
            reference_point={"D": d0, "K": k0},
            D_values=sorted(frame["D"].unique().tolist()),
            K_values=sorted(frame["K"].unique().tolist()),
            held_fixed=held,
            n_by_status=data.by_status,
            reference=references(self.law),
        )

    def _plateau_height(self, rows: pd.DataFrame) -> None:
        if "plateau_loss" not in rows.columns:
            return
        if "plateau_onset_step" in rows.columns:
            self.extra_["plateau_candidates"] = len(rows)
            self.extra_["plateau_rows"] = int(rows["plateau_onset_step"].notna().sum())
        ratio = pd.to_numeric(rows["plateau_loss"], errors="coerce") / np.log(
            rows["K"].astype(float)
        )
        ratio = ratio[np.isfinite(ratio)]
        if len(ratio) >= 2:
            self.params_["plateau_height"] = mean_estimate(ratio.to_numpy())
            self.extra_["plateau_height_n"] = len(ratio)
            by_k = {}
            for k, group in ratio.groupby(rows.loc[ratio.index, "K"]):
                if len(group) >= 2:
                    by_k[str(to_plain(k))] = {
                        **mean_estimate(group.to_numpy()).to_dict(),
                        "n": len(group),
                    }
            if len(by_k) > 1:
                self.extra_["plateau_height_by_K"] = by_k
