"""Noise stabilization: how learning rate and batch size set the escape step."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
from lifelines import KaplanMeierFitter
from scipy import stats

from analysis.laws._aft import (
    DISTRIBUTIONS,
    AFTResult,
    cells_without_escape,
    few_events_warning,
    fit_aft,
    two_axis_design,
)
from analysis.laws._base import (
    FitWarning,
    LawFitter,
    describe_values,
    geometric_center,
    hold_fixed,
    require_columns,
    select_task,
    to_plain,
)
from analysis.reference import references

# how far an inner cell's median must lie below (above) one on each side to be a turn
TURN_RATIO = 1.2
PAPER_LR_RATIO = 7.0


class NoiseStabilizationFitter(LawFitter):
    """Escape step against learning rate and batch size, censored trials included.

    Power law (accelerated failure time, the primary model)::

        log t = c + a log(lr / lr0) + b log(B / B0) + scale * eps

    Exponential in temperature T = lr / B (the alternative, compared by AIC)::

        log t = c' + beta T + scale * eps

    lr and B enter only through T when a = -b: ``exponent_sum`` = a + b with its
    interval, a Wald p-value and, with ``compare``, a likelihood-ratio test against the
    power law in T alone. ``slowdown`` = (lr_max / lr_min) ** a is the factor by which the
    escape slows across the study's lr range at fixed batch; ``slowdown_7x`` = 7 ** a
    compares with the paper's 3.6x across 7x. lr0 and B0 are the geometric centres of the
    values in the study; ``median_escape_at_ref`` is the median escape step there.

    Trials of the disambiguation task are used; other varying design columns (K, D,
    model, ...) are held fixed at the slice with the most (lr, batch) cells.

    Args:
        distribution: ``"lognormal"`` or ``"weibull"`` noise on log escape time.
        compare: also fit the exponential-in-T and power-in-T models (AIC, T-only test).
    """

    law = "noise_stabilization"

    def __init__(self, distribution: str = "lognormal", compare: bool = True) -> None:
        if distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"distribution={distribution!r} is not allowed: must be one of {DISTRIBUTIONS}"
            )
        self.distribution = distribution
        self.compare = compare
        super().__init__()

    def _fit(self, trials: pd.DataFrame) -> None:
        why = require_columns(
            trials, ("status", "escape_step", "steps", "lr", "batch_size"), self.law
        )
        if why:
            return self._skip(why)
        rows = select_task(trials, "disambiguation")
        if rows.empty:
            return self._skip("no trial of the disambiguation task")
        rows, held = hold_fixed(rows, ("lr", "batch_size"))
        if rows["lr"].nunique() < 2:
            return self._skip(
                f"needs at least 2 distinct lr values; found {describe_values(rows['lr'])}"
            )
        design = two_axis_design(
            rows,
            self.law,
            ("lr", "batch_size"),
            ("log_lr", "log_batch"),
            "vary them independently (e.g. a 2 x 2 grid)",
        )
        if isinstance(design, str):
            return self._skip(design)
        data, frame, covariates = design.data, design.frame, design.covariates
        lr0, batch0 = design.reference

        remedies = self._remedies(frame)
        power = fit_aft(frame, covariates, self.distribution, self.law, remedies)
        few_events_warning(power, self.law)
        self._record_power(power, frame, covariates, lr0, batch0)
        self.n_, self.n_censored_ = len(frame), data.n_censored
        self._record_cost(frame)
        self.model_ = f"power law, {self.distribution} AFT: log t = c + a log lr + b log B"
        self.extra_.update(
            distribution=self.distribution,
            scale=power.scale,
            reference_point={"lr": lr0, "batch_size": batch0},
            lr_values=sorted(frame["lr"].unique().tolist()),
            batch_sizes=sorted(frame["batch_size"].unique().tolist()),
            held_fixed=held,
            n_by_status=data.by_status,
        )
        self._record_cells(frame)
        if self.compare:
            self._compare(frame, power, covariates, remedies)
        self.extra_["reference"] = references(self.law)

    def _record_cells(self, frame: pd.DataFrame) -> None:
        """Kaplan-Meier median escape step per (lr, batch) cell, and a caveat when the
        medians turn in lr at some batch size (a power law in lr then averages over a
        turn that the data show): an inner lr whose median lies at least
        ``TURN_RATIO`` below (or above) a median on each side of it."""
        cells = []
        for (lr, batch), cell in frame.groupby(["lr", "batch_size"], sort=True):
            km = KaplanMeierFitter().fit(cell["duration"], cell["event"])
            median = float(km.median_survival_time_)
            cells.append(
                {
                    "lr": to_plain(lr),
                    "batch_size": to_plain(batch),
                    "n": len(cell),
                    "escaped": int(cell["event"].sum()),
                    "median_escape": median if math.isfinite(median) else None,
                }
            )
        self.extra_["cells"] = cells
        for batch in sorted({c["batch_size"] for c in cells}):
            row = [c for c in cells if c["batch_size"] == batch]
            # a median not reached lies beyond every reached one
            medians = [math.inf if c["median_escape"] is None else c["median_escape"] for c in row]
            if len(row) < 3 or sum(math.isinf(m) for m in medians) > 1:
                continue
            if _turns(medians):
                shown = ", ".join(
                    f"{c['lr']:g}: "
                    + ("not reached" if c["median_escape"] is None else f"{c['median_escape']:g}")
                    for c in row
                )
                warnings.warn(
                    f"median escape is not monotonic in lr at batch_size={batch} "
                    f"(lr: median step {shown}); the lr exponent averages over that turn",
                    FitWarning,
                    stacklevel=2,
                )

    def _remedies(self, frame: pd.DataFrame) -> list[str]:
        empty = cells_without_escape(frame, ["lr", "batch_size"])
        tries = []
        if empty:
            tries.append(f"raise max_steps for the cells where no trial escaped: {empty}")
        tries.append("add seeds to every (lr, batch_size) cell")
        return tries

    def _record_power(
        self,
        power: AFTResult,
        frame: pd.DataFrame,
        covariates: list[str],
        lr0: float,
        batch0: float,
    ) -> None:
        a = power.estimate("log_lr")
        self.params_["lr_exponent"] = a
        if "log_batch" in covariates:
            self.params_["batch_exponent"] = power.estimate("log_batch")
            self.params_["exponent_sum"] = power.contrast({"log_lr": 1.0, "log_batch": 1.0})
        shift = power.log_median_shift()
        self.params_["median_escape_at_ref"] = power.estimate("Intercept").transformed(
            lambda v: math.exp(v + shift)
        )
        ratio = float(frame["lr"].max() / frame["lr"].min())
        self.params_["slowdown"] = a.transformed(lambda v: ratio**v)
        self.params_["slowdown_7x"] = a.transformed(lambda v: PAPER_LR_RATIO**v)
        self.extra_["lr_ratio"] = ratio

    def _compare(
        self, frame: pd.DataFrame, power: AFTResult, covariates: list[str], remedies: list[str]
    ) -> None:
        t0 = geometric_center(frame["lr"] / frame["batch_size"])
        frame["temperature"] = frame["lr"] / frame["batch_size"] / t0
        expo = fit_aft(frame, ["temperature"], self.distribution, self.law, remedies)
        beta = expo.estimate("temperature")
        self.params_["temperature_coefficient"] = beta.transformed(lambda v: v / t0)
        aic: dict[str, float] = {"power": power.aic, "exponential_temperature": expo.aic}
        verdict: dict[str, Any] = {}
        if "log_batch" in covariates:
            frame["log_temperature"] = np.log(frame["temperature"])
            power_t = fit_aft(frame, ["log_temperature"], self.distribution, self.law, remedies)
            aic["power_temperature"] = power_t.aic
            lr_stat = max(2.0 * (power.log_likelihood - power_t.log_likelihood), 0.0)
            pair = {"log_lr": 1.0, "log_batch": 1.0}
            verdict = {
                "exponent_sum_covers_0": self.params_["exponent_sum"].covers(0.0),
                "wald_p": power.wald_p(pair),
                "likelihood_ratio_p": float(stats.chi2.sf(lr_stat, 1)),
            }
        better = min(("power", "exponential_temperature"), key=lambda m: aic[m])
        self.extra_.update(
            aic=aic,
            better_fit=better,
            delta_aic=abs(aic["power"] - aic["exponential_temperature"]),
            temperature_only=verdict
            or {"skipped": "needs at least 2 distinct batch sizes to separate lr from T"},
        )


def _turns(medians: list[float]) -> bool:
    """True when an inner median is a valley (or a peak) by ``TURN_RATIO`` on both sides."""
    for j in range(1, len(medians) - 1):
        left, here, right = medians[:j], medians[j], medians[j + 1 :]
        if max(left) >= TURN_RATIO * here and max(right) >= TURN_RATIO * here:
            return True
        if here >= TURN_RATIO * min(left) and here >= TURN_RATIO * min(right):
            return True
    return False
