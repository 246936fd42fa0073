"""Capacity wall: LoRA's final excess loss on the inverse mapping task against rank."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats
from scipy.special import expit

from analysis import escape
from analysis.laws._base import (
    Estimate,
    FitError,
    FitWarning,
    LawFitter,
    describe_values,
    hold_fixed,
    require_columns,
    t_estimate,
    to_plain,
)
from analysis.reference import references

MIN_RANKS = 3
# a wall's curve besides r* (see wall_curve); a step wall has no sharpness, a fixed
# high-rank excess is not a parameter
CURVE_PARAMS = ("sharpness", "excess_low_rank", "excess_high_rank")
MIN_FREE_RANKS = 5  # to fit excess_high_rank too
# the sharpest wall the fit may return: 20 per smallest log-rank gap puts the whole
# 5%-95% transition within a third of that gap, i.e. a step between two ranks
_STEP_SHARPNESS = 20.0
# a larger standard error of log r* (a factor of e**2 either way) is not a located wall
_MAX_LOG_SE = 2.0


def wall_curve(
    rank: np.ndarray | float,
    r_star: float,
    sharpness: float,
    excess_low_rank: float,
    excess_high_rank: float,
) -> np.ndarray:
    """``lo + (hi - lo) / (1 + exp(s (log r - log r*)))``: hi below the wall, lo above."""
    z = sharpness * (np.log(np.asarray(rank, dtype=float)) - math.log(r_star))
    return excess_high_rank + (excess_low_rank - excess_high_rank) * expit(-z)


@dataclass(frozen=True)
class WallFit:
    """One sigmoid fit. ``step`` when the wall is sharper than the rank grid resolves."""

    params: dict[str, Estimate]
    log_r_star: Estimate
    step: bool
    n: int
    ranks: list[float | int]
    residual_sd: float


class CapacityWallFitter(LawFitter):
    """A sigmoid wall in log rank, fitted by least squares::

        excess(r) = lo + (hi - lo) / (1 + exp(s (log r - log r*)))

    ``r_star`` (r*) is where the excess is half-way between ``excess_low_rank`` (hi, the
    excess of too-small adapters) and ``excess_high_rank`` (lo); ``sharpness`` s is per
    unit of log rank (the 10%-90% transition spans ``2 ln 9 / s`` in log rank).
    Intervals are delta-method t intervals (r* and s on the log scale).

    Rows: mapping task, inverse direction, LoRA rank > 0, with a finite final excess
    (censored runs count with their excess at the budget). Other varying design columns
    except K and D are held fixed. The main fit is the (K, D) group with the most ranks.
    When several groups have >= 3 ranks, ``info_exponent`` is the slope of log r*
    against log(D log K), the task's information content (a weighted regression on the
    groups' r*, with their delta-method variances).

    Four free parameters need at least 5 distinct ranks (4 would fit any 4 means exactly
    and leave the wall unplaced). With 3 or 4 ranks ``excess_high_rank`` is fixed at
    ``high_rank_excess``, 0 by default: adapters past the wall reach the floor.

    Args:
        high_rank_excess: fix lo at this value (None: fitted when there are >= 5 ranks).
    """

    law = "capacity_wall"

    def __init__(self, high_rank_excess: float | None = None) -> None:
        self.high_rank_excess = high_rank_excess
        super().__init__()

    def _fit(self, trials: pd.DataFrame) -> None:
        why = require_columns(trials, ("lora_rank", "final_excess", "K", "D"), self.law)
        if why:
            return self._skip(why)
        rows = _lora_inverse_rows(trials, self.law)
        if rows.empty:
            return self._skip("no LoRA trial (lora_rank > 0) of the inverse mapping task")
        rows, held = hold_fixed(rows, ("lora_rank", "K", "D"))
        groups = sorted(
            rows.groupby(["K", "D"]),
            key=lambda item: (item[1]["lora_rank"].nunique(), len(item[1])),
            reverse=True,
        )
        main_key, main_rows = groups[0]
        if main_rows["lora_rank"].nunique() < MIN_RANKS:
            return self._skip(
                f"needs at least {MIN_RANKS} distinct LoRA ranks at fixed K and D; found "
                f"{describe_values(main_rows['lora_rank'])}"
            )

        main = self._fit_group(main_rows)
        self.params_.update(main.params)
        self.n_ = main.n
        self._record_cost(main_rows)
        if "status" in main_rows.columns:
            self.n_censored_ = int((main_rows["status"] == escape.CENSORED).sum())
        self.model_ = "step between ranks" if main.step else "sigmoid in log rank"
        self.extra_.update(
            K=to_plain(main_key[0]),
            D=to_plain(main_key[1]),
            ranks=main.ranks,
            residual_sd=main.residual_sd,
            held_fixed=held,
        )
        self._information_law(groups, main)
        self.extra_["reference"] = references(self.law)

    def _fit_group(self, rows: pd.DataFrame) -> WallFit:
        fixed = self.high_rank_excess
        n_ranks = rows["lora_rank"].nunique()
        if fixed is None and n_ranks < MIN_FREE_RANKS:
            fixed = 0.0
            warnings.warn(
                f"capacity_wall: only {n_ranks} ranks, so excess_high_rank is fixed at 0 "
                f"(adapters past the wall reach the floor); {MIN_FREE_RANKS} ranks fit it",
                FitWarning,
                stacklevel=4,
            )
        return fit_wall(
            rows["lora_rank"].to_numpy(dtype=float),
            rows["final_excess"].to_numpy(dtype=float),
            fixed,
            self.law,
        )

    def _information_law(self, groups: list[tuple[Any, pd.DataFrame]], main: WallFit) -> None:
        """r* against D log K over the (K, D) groups that have enough ranks."""
        eligible = [
            (key, rows)
            for key, rows in groups
            if rows["lora_rank"].nunique() >= MIN_RANKS and key[0] >= 2
        ]
        if len(eligible) < 2:
            return
        walls = []
        for (k, d), rows in eligible:
            try:
                fit = main if rows is groups[0][1] else self._fit_group(rows)
            except FitError as err:
                walls.append({"K": k, "D": d, "error": str(err)})
                continue
            walls.append(
                {
                    "K": k,
                    "D": d,
                    "information": d * math.log(k),
                    "r_star": fit.params["r_star"].to_dict(),
                    # the curve's other parameters, to draw it
                    **{
                        name: fit.params[name].value for name in CURVE_PARAMS if name in fit.params
                    },
                    "log_r_star": fit.log_r_star.value,
                    "se": fit.log_r_star.se,
                }
            )
        fitted = [w for w in walls if "error" not in w]
        if len({w["information"] for w in fitted}) < 2:
            return
        self.params_["info_exponent"] = _weighted_slope(
            np.log([w["information"] for w in fitted]),
            np.array([w["log_r_star"] for w in fitted]),
            np.array([w["se"] for w in fitted]),
        )
        self.extra_["walls"] = [
            {k: v for k, v in w.items() if k not in ("log_r_star", "se")} for w in walls
        ]


def fit_wall(
    ranks: np.ndarray, excess: np.ndarray, high_rank_excess: float | None, law: str
) -> WallFit:
    """Least-squares sigmoid wall with delta-method t intervals (see CapacityWallFitter).

    Raises:
        FitError: no wall inside the rank range, no fall in excess beyond the noise, or
            a singular fit.
    """
    x = np.log(ranks)
    distinct = np.unique(x)
    gap = float(np.min(np.diff(distinct)))
    free_lo = high_rank_excess is None
    n, p = len(x), 4 if free_lo else 3
    ranks_seen = [int(v) if v.is_integer() else v for v in np.exp(distinct).round(6).tolist()]
    tries = [
        f"add ranks below {ranks_seen[0]:g} and above {ranks_seen[-1]:g} so that the "
        "wall lies inside the grid",
        "add seeds at every rank",
    ]
    if n <= p:
        raise FitError(law, f"{n} trials cannot fit {p} parameters", tries)

    def model(theta: np.ndarray) -> np.ndarray:
        lo = theta[3] if free_lo else high_rank_excess
        return lo + (theta[2] - lo) * expit(-np.exp(theta[1]) * (x - theta[0]))

    bounds = (
        [distinct[0] - 1.0, math.log(0.01), -np.inf] + [-np.inf] * free_lo,
        [distinct[-1] + 1.0, math.log(_STEP_SHARPNESS / gap), np.inf] + [np.inf] * free_lo,
    )
    starts = [
        np.clip(t, np.array(bounds[0]) + 1e-9, np.array(bounds[1]) - 1e-9)
        for t in _starts(x, excess, distinct, gap, free_lo)
    ]
    starts.sort(key=lambda t: float(np.sum((model(t) - excess) ** 2)))
    best = None
    for theta0 in starts[:3]:  # the grid of starts is coarse; refine the three closest
        res = optimize.least_squares(lambda t: model(t) - excess, theta0, bounds=bounds)
        if res.success and (best is None or res.cost < best.cost):
            best = res
    if best is None:
        raise FitError(law, "least squares did not converge from any starting point", tries)
    theta = best.x
    dof = n - p
    sigma2 = 2.0 * best.cost / dof
    _check_wall(excess, best.cost, theta[0], distinct, p, law, tries)
    step = theta[1] >= math.log(_STEP_SHARPNESS / gap) - 1e-3
    jac = best.jac.copy()
    if step:
        jac = jac[:, [2, 3]] if free_lo else jac[:, [2]]
    try:
        cov = sigma2 * np.linalg.inv(jac.T @ jac)
    except np.linalg.LinAlgError as err:
        raise FitError(law, "the fit is singular (parameters not identified)", tries) from err
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    offset = 0 if step else 2  # index of excess_low_rank in cov
    hi = t_estimate(theta[2], se[offset], dof)
    if high_rank_excess is None:
        lo = t_estimate(theta[3], se[offset + 1], dof)
    else:
        lo = Estimate(high_rank_excess, high_rank_excess, high_rank_excess, 0.0)

    if lo.value > 0.5 * hi.value > 0:
        warnings.warn(
            f"{law}: the fitted wall lowers the excess only from {hi.value:.2f} to "
            f"{lo.value:.2f}; the largest ranks may not reach past the wall (add larger ranks)",
            FitWarning,
            stacklevel=4,
        )
    params = {"excess_low_rank": hi, "excess_high_rank": lo}
    if step:
        log_r = _bracket(theta[0], distinct)
        warnings.warn(
            f"{law}: the wall is sharper than the rank grid resolves; r* is only bracketed "
            f"between ranks {math.exp(log_r.ci_low):g} and {math.exp(log_r.ci_high):g}",
            FitWarning,
            stacklevel=4,
        )
    else:
        log_r = t_estimate(theta[0], se[0], dof)
        if not se[0] < _MAX_LOG_SE:
            raise FitError(
                law,
                f"the ranks do not pin the wall down (r* = {math.exp(theta[0]):.3g} with a "
                f"standard error of {se[0]:.3g} in log rank)",
                ["add ranks on both sides of the wall, with some on each plateau", *tries],
            )
        params["sharpness"] = t_estimate(theta[1], se[1], dof).transformed(np.exp)
    params = {"r_star": log_r.transformed(np.exp), **params}
    return WallFit(params, log_r, bool(step), n, ranks_seen, math.sqrt(sigma2))


def _check_wall(
    excess: np.ndarray,
    cost: float,
    log_r_star: float,
    distinct: np.ndarray,
    p: int,
    law: str,
    tries: list[str],
) -> None:
    """Raises FitError unless the wall explains more than noise and lies inside the grid."""
    n = len(excess)
    rss0, rss1 = float(np.sum((excess - excess.mean()) ** 2)), 2.0 * cost
    f_stat = (rss0 - rss1) / (p - 1) / max(rss1 / (n - p), 1e-300)
    p_value = float(stats.f.sf(f_stat, p - 1, n - p))
    if p_value > 0.05:
        raise FitError(
            law,
            f"the final excess does not change with rank beyond the noise (F-test against a "
            f"constant, p = {p_value:.2g}): there is no wall to place",
            [
                f"add ranks below {math.exp(distinct[0]):g} or above "
                f"{math.exp(distinct[-1]):g} (the wall may lie outside the grid)",
                "check that the runs trained to completion (final_excess)",
                tries[1],
            ],
        )
    if log_r_star <= distinct[0] - 1.0 + 1e-3:
        raise FitError(
            law,
            "the excess keeps falling from the smallest rank on, so the wall lies below "
            f"rank {math.exp(distinct[0]):g} (r* ran to the bound of the fit)",
            [f"add ranks below {math.exp(distinct[0]):g}", *tries[1:]],
        )
    if log_r_star >= distinct[-1] + 1.0 - 1e-3:
        raise FitError(
            law,
            "the excess is still falling at the largest rank, so the wall lies above rank "
            f"{math.exp(distinct[-1]):g} (r* ran to the bound of the fit)",
            [f"add ranks above {math.exp(distinct[-1]):g}", *tries[1:]],
        )


def _starts(
    x: np.ndarray, y: np.ndarray, distinct: np.ndarray, gap: float, free_lo: bool
) -> list[np.ndarray]:
    """Starting points: the wall between each pair of neighbouring ranks, three sharpnesses."""
    means = np.array([y[x == v].mean() for v in distinct])
    hi, lo = float(means[0]), float(means[-1])
    centers = (distinct[:-1] + distinct[1:]) / 2
    out = []
    for m in centers:
        for s in (0.5 / gap, 2.0 / gap, 8.0 / gap):
            out.append(np.array([m, math.log(s), hi] + [lo] * free_lo))
    return out


def _bracket(log_r: float, distinct: np.ndarray) -> Estimate:
    """A step wall: r* lies between the two ranks around it (sd of a uniform there)."""
    below = distinct[distinct <= log_r]
    above = distinct[distinct > log_r]
    low = float(below[-1]) if len(below) else float(distinct[0])
    high = float(above[0]) if len(above) else float(distinct[-1])
    return Estimate((low + high) / 2, low, high, (high - low) / math.sqrt(12.0))


def _weighted_slope(x: np.ndarray, y: np.ndarray, se: np.ndarray) -> Estimate:
    """Slope of y on x weighted by 1 / se^2, with a normal interval; with > 2 points the
    variance is scaled up by the excess dispersion (chi2 / dof, when above 1)."""
    w = 1.0 / np.maximum(se, 1e-12) ** 2
    x = x - np.average(x, weights=w)  # centred: slope and intercept uncorrelated
    design = np.column_stack([np.ones_like(x), x])
    info = design.T @ (design * w[:, None])
    cov = np.linalg.inv(info)
    beta = cov @ design.T @ (w * y)
    dof = len(x) - 2
    if dof > 0:
        chi2 = float(np.sum(w * (y - design @ beta) ** 2))
        cov = cov * max(chi2 / dof, 1.0)
    return t_estimate(float(beta[1]), math.sqrt(cov[1, 1]), math.inf)


def _lora_inverse_rows(trials: pd.DataFrame, law: str) -> pd.DataFrame:
    rows = trials
    if "task" in rows.columns:
        rows = rows[rows["task"] == "mapping"]
    if "direction" in rows.columns:
        rows = rows[rows["direction"] == "inverse"]
    rows = rows[pd.to_numeric(rows["lora_rank"], errors="coerce") > 0]
    rank = pd.to_numeric(rows["lora_rank"], errors="coerce")
    excess = pd.to_numeric(rows["final_excess"], errors="coerce")
    unfinished = (
        rows["status"].isin((escape.FAILED, escape.RUNNING))
        if "status" in rows
        else pd.Series(False, index=rows.index)
    )
    unusable = ~np.isfinite(excess) | unfinished
    if unusable.any():
        warnings.warn(
            f"{law}: {int(unusable.sum())} LoRA trials have no final excess (diverged, failed "
            "or still running) and are left out",
            FitWarning,
            stacklevel=4,
        )
    return rows[~unusable].assign(
        lora_rank=rank[~unusable].astype(float), final_excess=excess[~unusable].astype(float)
    )
