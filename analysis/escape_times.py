"""Escape times per trial and seed, recomputed from the curves by the one escape rule.

The rule is :mod:`analysis.escape`, the same code the online stopper runs, so a row of
:func:`escape_table` agrees with what the trial itself decided. The watched loss is
``candidate_loss`` for the disambiguation task (plateau at log K, mode ``escape``) and
``loss`` against the trial's floor for the mapping task (mode ``converge``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from analysis.escape import (
    CENSORED,
    FAILED,
    ONSETS,
    RUNNING,
    EscapeRule,
    finite_or_none,
    summarize_curve,
)

logger = logging.getLogger(__name__)

# trial config columns that override the default escape rule, when the table has them
RULE_COLUMNS = {
    "escape_fraction": "fraction",
    "escape_confirm": "confirm",
    "plateau_tolerance": "plateau_tolerance",
    "converge_tol": "converge_tol",
    "escape_tail": "tail",
}
# the curve column the ``marginal`` plateau onset reads (first-target-token loss)
MARGINAL_COLUMN = "first_token_loss"
ESCAPE_COLUMNS = (
    "trial_id", "seed", "status", "steps", "plateau_onset_step", "escape_step",
    "converged_step", "diverged_step", "waiting_time", "transition_width", "plateau_loss",
    "plateau_height", "routing_lead", "z_shuffle_lead",
)  # fmt: skip
_STEP_COLUMNS = ("steps", "plateau_onset_step", "escape_step", "converged_step",
                 "diverged_step", "waiting_time", "transition_width")  # fmt: skip


def escape_table(
    curves: pd.DataFrame, trials: pd.DataFrame, rule: EscapeRule | None = None
) -> pd.DataFrame:
    """Applies the escape rule to every (trial, seed) curve.

    Args:
        curves: the curves table (``trial_id, seed, step`` and the loss columns).
            When a step is reported twice (a retried trial), the last report counts.
        trials: the trials table; ``trial_id`` and ``K`` are needed, ``task``,
            ``floor`` and ``status`` are used when present, and the rule columns
            ``escape_fraction, escape_confirm, plateau_tolerance, converge_tol,
            escape_tail, plateau_onset`` override the default rule per trial
            (``distinct_first`` false forces the ``watched`` onset: the first-token
            loss of the marginal is not log K then). Rows are matched on
            (trial_id, seed) when the table has seeds, else on trial_id.
        rule: one rule for every trial instead (its mode is still set by the task).

    Returns:
        One row per (trial_id, seed): ``status`` (escaped, censored, converged, diverged;
        failed or running when the trials table says so and the curve did not resolve),
        ``steps`` (the last evaluated step: the censoring time), ``plateau_onset_step``,
        ``escape_step``, ``converged_step``, ``diverged_step``, ``waiting_time``
        (escape - onset), ``transition_width`` (steps from 0.9 log K to 0.1 log K),
        ``plateau_loss`` (median watched loss on the plateau, nats), ``plateau_height``
        (plateau_loss / log K), ``routing_lead`` and ``z_shuffle_lead`` (see
        :func:`rise_lead`). Step columns are nullable integers.

    Raises:
        ValueError: a column is missing, or a curve's trial is not in ``trials``.
    """
    _require(curves, ("trial_id", "seed", "step"), "curves")
    _require(trials, ("trial_id", "K"), "trials")
    lookup = _TrialLookup(trials)
    rows = []
    grouped = curves.groupby(["trial_id", "seed"], sort=True, dropna=False)
    for (trial_id, seed), curve in grouped:
        config = lookup.find(trial_id, seed)
        rows.append(_summarize(trial_id, seed, curve, config, rule))
    table = pd.DataFrame(rows, columns=list(ESCAPE_COLUMNS))
    for name in _STEP_COLUMNS:
        table[name] = pd.array(table[name].astype(float).round(), dtype="Int64")
    return table


def rise_lead(
    steps: Sequence[float] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    onset_step: float | None,
    escape_step: float | None,
) -> float | None:
    """How far a probe's rise leads the loss escape, in units of the waiting time.

    The probe (routing score, z-shuffle gap) starts at the median of its values up to
    the plateau onset and ends at the median of its values from the escape step on. Its
    half-rise step is the first evaluation at or after the onset where it reaches half
    of that rise; like the escape step, it is an evaluation step, so the two are
    measured alike. ``lead = (escape_step - half_rise_step) / (escape_step - onset)``:
    0 when the probe moves with the loss, 1 when it is half-way up at the onset.

    Returns:
        The lead, or None without an escape, a positive waiting time or a rise.
    """
    if escape_step is None or onset_step is None or not escape_step > onset_step:
        return None
    s = np.asarray(steps, dtype=float)
    v = np.asarray(values, dtype=float)
    keep = np.isfinite(v)
    s, v = s[keep], v[keep]
    before, after = v[s <= onset_step], v[s >= escape_step]
    if not len(before) or not len(after):
        return None
    start, final = float(np.median(before)), float(np.median(after))
    if not final > start:
        return None
    reached = np.flatnonzero((s >= onset_step) & (v >= start + 0.5 * (final - start)))
    half_step = float(s[reached[0]])  # non-empty: the values from escape on reach the median
    return (escape_step - half_step) / (escape_step - onset_step)


class _TrialLookup:
    """Finds a curve's trial row by (trial_id, seed), else by trial_id."""

    def __init__(self, trials: pd.DataFrame) -> None:
        records = trials.to_dict("records")
        self.by_trial = {r["trial_id"]: r for r in records}
        self.by_seed: dict[tuple[Any, Any], dict[str, Any]] = {}
        if "seed" in trials.columns:
            self.by_seed = {(r["trial_id"], r["seed"]): r for r in records}

    def find(self, trial_id: Any, seed: Any) -> dict[str, Any]:
        row = self.by_seed.get((trial_id, seed)) or self.by_trial.get(trial_id)
        if row is None:
            raise ValueError(
                f"curves trial_id={trial_id!r} is not allowed: it must appear in the trials table"
            )
        return row


def _summarize(
    trial_id: Any,
    seed: Any,
    curve: pd.DataFrame,
    config: dict[str, Any],
    rule: EscapeRule | None,
) -> dict[str, Any]:
    curve = curve.sort_values("step", kind="stable").drop_duplicates("step", keep="last")
    task = config.get("task") or "disambiguation"
    log_k = math.log(float(config["K"]))
    mode = "converge" if task == "mapping" else "escape"
    floor = finite_or_none(config.get("floor"))
    if floor is None:
        if mode == "converge":
            raise ValueError(
                f"floor of trial_id={trial_id!r} is missing: a mapping-task trial needs the "
                "floor its loss converges to"
            )
        floor = 0.0
    column = "loss" if mode == "converge" else _watched_column(curve)
    steps = curve["step"].to_numpy(dtype=float)
    values = curve[column].to_numpy(dtype=float)
    marginals = None
    if MARGINAL_COLUMN in curve.columns:
        marginals = [
            None if not math.isfinite(v) else v
            for v in pd.to_numeric(curve[MARGINAL_COLUMN], errors="coerce").to_numpy(float)
        ]
    summary = summarize_curve(
        steps.astype(int).tolist(),
        values.tolist(),
        log_k,
        _rule(config, rule, mode),
        floor,
        marginals,
    )
    status = summary.status
    if status == CENSORED and config.get("status") in (FAILED, RUNNING):
        status = config["status"]
    leads = {
        name: rise_lead(
            steps, curve[probe].to_numpy(dtype=float), summary.onset_step, summary.escape_step
        )
        if probe in curve.columns
        else None
        for name, probe in (("routing_lead", "routing_score"), ("z_shuffle_lead", "z_shuffle_gap"))
    }
    return {
        "trial_id": trial_id,
        "seed": seed,
        "status": status,
        "steps": summary.last_step,
        "plateau_onset_step": summary.onset_step,
        "escape_step": summary.escape_step,
        "converged_step": summary.converged_step,
        "diverged_step": summary.diverged_step,
        "waiting_time": summary.waiting_time,
        "transition_width": summary.transition_width,
        "plateau_loss": summary.plateau_height,
        "plateau_height": None
        if summary.plateau_height is None or log_k <= 0
        else summary.plateau_height / log_k,
        **leads,
    }


def _watched_column(curve: pd.DataFrame) -> str:
    """candidate_loss; loss for curves that never recorded it."""
    if "candidate_loss" in curve.columns and curve["candidate_loss"].notna().any():
        return "candidate_loss"
    logger.warning("a disambiguation curve has no candidate_loss; watching loss instead")
    return "loss"


def _rule(config: dict[str, Any], rule: EscapeRule | None, mode: str) -> EscapeRule:
    if rule is not None:
        return dataclasses.replace(rule, mode=mode)
    kwargs: dict[str, Any] = {"mode": mode}
    for column, name in RULE_COLUMNS.items():
        value = finite_or_none(config.get(column))
        if value is not None:
            kwargs[name] = int(value) if name in ("confirm", "tail") else value
    onset = config.get("plateau_onset")
    if onset in ONSETS:
        kwargs["onset"] = onset
    if config.get("distinct_first") is False:  # the first-token floor is not log K then
        kwargs["onset"] = "watched"
    return EscapeRule(**kwargs)


def _require(table: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(
            f"{name} columns={sorted(table.columns)!r} are not allowed: "
            f"missing {', '.join(missing)}"
        )
