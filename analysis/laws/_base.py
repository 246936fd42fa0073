"""What every law fitter shares: estimates, warnings, errors and the estimator pattern.

A law fitter is a small class: ``fit(trials)`` returns the fitter, fitted values end
in an underscore, ``summary`` is a table of estimates with 95% intervals and
``to_dict()`` is the law's entry in ``laws.json``. A table that lacks the law's axes
does not raise: the fitter records why in ``skipped_`` and ``to_dict()`` returns
``{"skipped": why}``. A fit that runs but does not converge raises :class:`FitError`,
whose message lists what to try.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy import stats

from analysis import escape

logger = logging.getLogger(__name__)

LEVEL = 0.95

# Config columns that may define a study's design. A law varies its own axes and holds
# the others fixed; seeds and outcomes are never design.
DESIGN_COLUMNS = (
    "task", "direction", "model", "size", "base", "K", "D", "lr", "batch_size",
    "lora_rank", "lora_alpha", "lora_lr_scaling", "optimizer", "schedule", "weight_decay",
    "warmup_steps", "grad_clip", "beta1", "beta2", "eps", "momentum", "mlp_width",
    "mlp_depth", "n_layer", "n_head", "n_embd", "n_inner", "alphabet_size", "len_b",
    "len_a", "len_z", "string_len", "precision",
)  # fmt: skip

# Statuses whose run ended (or may still end) without an escape: right-censored at `steps`.
NOT_ESCAPED = (escape.CENSORED, escape.DIVERGED, escape.FAILED, escape.RUNNING)


class FitWarning(UserWarning):
    """A statistical caveat about a fit (few events, rows treated as censored, ...)."""


class FitError(RuntimeError):
    """A fit that ran but did not converge; ``remedies`` lists what to try."""

    def __init__(self, law: str, problem: str, remedies: Sequence[str]) -> None:
        self.law = law
        self.problem = problem
        self.remedies = list(remedies)
        tries = " ".join(f"({i}) {r}" for i, r in enumerate(self.remedies, 1))
        super().__init__(f"{law}: {problem}. Try: {tries}")


@dataclass(frozen=True)
class Estimate:
    """A fitted number with its 95% interval (``se`` on the scale the interval was built)."""

    value: float
    ci_low: float
    ci_high: float
    se: float = math.nan

    def covers(self, truth: float) -> bool:
        return self.ci_low <= truth <= self.ci_high

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high}

    def transformed(self, fn: Any) -> Estimate:
        """Maps value and bounds through a monotone increasing ``fn`` (e.g. ``np.exp``)."""
        return Estimate(float(fn(self.value)), float(fn(self.ci_low)), float(fn(self.ci_high)))


def t_estimate(value: float, se: float, dof: float) -> Estimate:
    """``value +- t_{dof} * se``; a normal quantile when ``dof`` is infinite."""
    q = stats.norm.ppf(0.5 + LEVEL / 2) if math.isinf(dof) else stats.t.ppf(0.5 + LEVEL / 2, dof)
    return Estimate(float(value), float(value - q * se), float(value + q * se), float(se))


def mean_estimate(values: Sequence[float] | np.ndarray) -> Estimate:
    """Mean with a Student t interval; needs at least two values."""
    x = np.asarray(values, dtype=float)
    return t_estimate(float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))), len(x) - 1)


class LawFitter:
    """Base of the law fitters (estimator pattern).

    Subclasses set ``law`` (the ``laws.json`` key) and implement ``_fit``, which either
    calls ``self._skip(why)`` or fills ``params_``, ``n_``, ``n_censored_`` and
    ``model_``, and may add law-specific entries to ``extra_``.
    """

    law: ClassVar[str] = ""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.skipped_: str | None = None
        self.model_: str = ""
        self.params_: dict[str, Estimate] = {}
        self.n_: int = 0
        self.n_censored_: int = 0
        self.extra_: dict[str, Any] = {}

    def fit(self, trials: pd.DataFrame) -> LawFitter:
        """Fits the law to a trials table; see the subclass for the formula."""
        self._reset()
        self._fit(trials.reset_index(drop=True))  # row labels may repeat in a concatenation
        return self

    def _fit(self, trials: pd.DataFrame) -> None:
        raise NotImplementedError

    def _skip(self, why: str) -> None:
        logger.info("%s skipped: %s", self.law, why)
        self.skipped_ = why

    def _record_cost(self, rows: pd.DataFrame) -> None:
        """Records what the fitted rows cost: ``trials`` (distinct trials; a trial
        trains several seeds at once) and ``trial_wall_s`` (their summed wall time)."""
        if "trial_id" not in rows.columns:
            return
        per_trial = rows.drop_duplicates("trial_id")
        self.extra_["trials"] = len(per_trial)
        if "wall_s" in per_trial.columns:
            wall = pd.to_numeric(per_trial["wall_s"], errors="coerce")
            if wall.notna().any():
                self.extra_["trial_wall_s"] = float(wall.sum())

    @property
    def summary(self) -> pd.DataFrame:
        """One row per parameter: value, ci_low, ci_high (empty when skipped)."""
        rows = {name: est.to_dict() for name, est in self.params_.items()}
        columns = ["value", "ci_low", "ci_high"]
        table = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
        table.index.name = "param"
        return table

    def to_dict(self) -> dict[str, Any]:
        """The law's entry in ``laws.json``."""
        if self.skipped_ is not None:
            return {"skipped": self.skipped_}
        if not self.params_:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(trials) first")
        out: dict[str, Any] = {
            "model": self.model_,
            "params": {name: est.to_dict() for name, est in self.params_.items()},
            "n": self.n_,
            "n_censored": self.n_censored_,
        }
        out.update(self.extra_)
        return out

    def __repr__(self) -> str:
        if self.skipped_ is not None:
            return f"<{type(self).__name__} skipped: {self.skipped_}>"
        if not self.params_:
            return f"<{type(self).__name__} not fitted>"
        return f"<{type(self).__name__} {self.model_}, n={self.n_}, censored={self.n_censored_}>"


def require_columns(trials: pd.DataFrame, columns: Sequence[str], law: str) -> str | None:
    """The reason to skip when ``trials`` lacks any of ``columns``, else None."""
    missing = [c for c in columns if c not in trials.columns]
    if missing:
        return f"the trials table has no column {', '.join(missing)} (needed by {law})"
    return None


def select_task(trials: pd.DataFrame, task: str) -> pd.DataFrame:
    """Rows of one task; a table without a ``task`` column is taken as all of it."""
    if "task" not in trials.columns:
        return trials
    return trials[trials["task"] == task]


def hold_fixed(trials: pd.DataFrame, axes: Sequence[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Keeps the slice of the design where everything but ``axes`` is fixed.

    Among the groups of rows that agree on every other varying design column, the one
    with the most distinct combinations of ``axes`` wins (ties: most rows). A column
    that changes one-for-one with an axis (one value of each per value of the other,
    such as an alphabet of K symbols for every K) cannot be held fixed without losing
    that axis:
    it is kept varying, and a :class:`FitWarning` says that the axis's coefficient is
    the joint effect of both.

    Returns:
        The rows of that group and the values held fixed (only columns that varied).
    """
    others = [
        c
        for c in DESIGN_COLUMNS
        if c in trials.columns and c not in axes and trials[c].nunique(dropna=False) > 1
    ]
    if not others or trials.empty:
        return trials, {}
    followers = {c: a for c in others for a in axes if _set_by(trials, a, c)}
    others = [c for c in others if c not in followers]
    chosen, best = trials, (-1, -1)
    if others:
        for positions in trials[others].astype(str).groupby(others).indices.values():
            rows = trials.iloc[positions]
            score = (len(rows[list(axes)].drop_duplicates()), len(rows))
            if score > best:
                chosen, best = rows, score
    held = {c: to_plain(chosen[c].iloc[0]) for c in others}
    for column, axis in followers.items():
        if chosen[column].nunique(dropna=False) == 1:
            held[column] = to_plain(chosen[column].iloc[0])
            continue
        pairs = chosen[[axis, column]].drop_duplicates().sort_values(axis)
        mapping = ", ".join(f"{to_plain(a)}: {to_plain(c)}" for a, c in pairs.to_numpy())
        warnings.warn(
            f"{column} changes with {axis} ({axis} -> {column}: {mapping}); the {axis} "
            f"coefficient is the joint effect of both",
            FitWarning,
            stacklevel=2,
        )
    logger.info("holding fixed %s (%d of %d rows)", held, len(chosen), len(trials))
    return chosen, held


def _set_by(trials: pd.DataFrame, axis: str, column: str) -> bool:
    """True when ``column`` and ``axis`` determine each other (one value of each per
    value of the other) and take at least two values."""
    if trials[axis].nunique(dropna=False) < 2:
        return False
    per_axis = trials.groupby(axis, dropna=False)[column].nunique(dropna=False)
    per_column = trials.groupby(column, dropna=False)[axis].nunique(dropna=False)
    return bool((per_axis == 1).all() and (per_column == 1).all())


@dataclass(frozen=True)
class SurvivalData:
    """Escape times with right-censoring: ``duration`` is the escape step for escaped rows
    and the last step (``steps``) for every other row; ``event`` marks the escapes."""

    frame: pd.DataFrame  # the rows used, with columns duration and event added
    n_censored: int
    by_status: dict[str, int]


def survival_data(trials: pd.DataFrame, law: str) -> SurvivalData:
    """Turns trial rows into censored escape times; no row is dropped silently.

    Escaped rows are events at ``escape_step``. Censored, diverged, failed and running
    rows are right-censored at ``steps`` (a diverged run is censored at its divergence:
    the escape-specific hazard). Rows without a usable time are dropped with a
    :class:`FitWarning` that counts them.
    """
    status = trials["status"].astype(str)
    event = (status == escape.ESCAPED).to_numpy()
    escape_step = pd.to_numeric(trials["escape_step"], errors="coerce").to_numpy(dtype=float)
    steps = pd.to_numeric(trials["steps"], errors="coerce").to_numpy(dtype=float)
    duration = np.where(event, escape_step, steps)
    usable = np.isfinite(duration) & (status.isin((escape.ESCAPED, *NOT_ESCAPED))).to_numpy()
    if (~usable).any():
        warnings.warn(
            f"{law}: {int((~usable).sum())} rows have no escape step or step count "
            "(or a status that is neither escaped nor censored) and are left out",
            FitWarning,
            stacklevel=3,
        )
    frame = trials.loc[usable].copy()
    frame["event"] = event[usable]
    # an escape confirmed at the first evaluation still took at least one step
    frame["duration"] = np.maximum(duration[usable], 1.0)
    by_status = {str(k): int(v) for k, v in frame["status"].value_counts().items()}
    odd = {
        s: n for s, n in by_status.items() if s in (escape.DIVERGED, escape.FAILED, escape.RUNNING)
    }
    if odd:
        warnings.warn(
            f"{law}: rows with status {odd} enter as right-censored at their last step",
            FitWarning,
            stacklevel=3,
        )
    return SurvivalData(frame, int((~frame["event"]).sum()), by_status)


def describe_values(values: pd.Series) -> str:
    distinct = sorted(values.dropna().unique().tolist())
    shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in distinct[:6])
    return f"{len(distinct)} ({shown})" if distinct else "0"


def geometric_center(values: pd.Series | Sequence[float]) -> float:
    """Geometric mean of the distinct values: the reference point of a log axis."""
    distinct = np.unique(np.asarray(values, dtype=float))
    return float(f"{np.exp(np.log(distinct).mean()):.12g}")  # 1e-3, not 0.0010000000000000002


def to_plain(value: Any) -> Any:
    """numpy scalars to Python scalars; NaN and infinities to None (for JSON)."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [to_plain(v) for v in value.tolist()]
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if value is pd.NA or value is pd.NaT:
        return None
    return value
