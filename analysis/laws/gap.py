"""Directional gap: inverse minus forward excess loss on the mapping task, per architecture."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd

from analysis import escape
from analysis.laws._base import (
    DESIGN_COLUMNS,
    Estimate,
    FitWarning,
    LawFitter,
    require_columns,
    t_estimate,
    to_plain,
)
from analysis.reference import references

# columns that make up an architecture label rather than a separate group
_ARCHITECTURE = ("model", "lora_rank", "base")


class DirectionalGapFitter(LawFitter):
    """Directional gap per architecture::

        gap = mean(final_excess | inverse) - mean(final_excess | forward)

    with a Welch t interval (unequal variances). An architecture is the model, with its
    LoRA rank and pre-trained base when set (``gpt2``, ``gpt2-lora8``,
    ``gpt2+pretrained``). Every other design column that varies among the mapping-task
    trials (K, D, lr, ...) splits the gap further and is named in the parameter
    (``gpt2 K=5``). Where the MLP was run beside another architecture, ``gpt2 - mlp
    K=5`` is how much the other's gap exceeds the MLP's, with a t interval from the
    four samples: the papers' claim is that it is positive. Censored runs count with
    their excess at the budget; rows without a final excess (diverged, failed,
    running) are left out with a :class:`FitWarning`.
    """

    law = "directional_gap"

    def _fit(self, trials: pd.DataFrame) -> None:
        why = require_columns(trials, ("direction", "final_excess", "model"), self.law)
        if why:
            return self._skip(why)
        rows = _usable(trials, self.law)
        if rows.empty:
            return self._skip("no mapping-task trial with a final excess")
        rows = rows.assign(architecture=_architecture(rows))
        both = rows.groupby("architecture")["direction"].nunique() == 2
        if not both.any():
            return self._skip(
                "needs forward and inverse trials of one architecture; found "
                + ", ".join(
                    f"{a}: {'/'.join(sorted(d.unique()))}"
                    for a, d in rows.groupby("architecture")["direction"]
                )
            )
        rows = rows[rows["architecture"].isin(both.index[both])]
        split = [
            c
            for c in DESIGN_COLUMNS
            if c in rows.columns
            and c not in (*_ARCHITECTURE, "direction", "task")
            and rows[c].nunique(dropna=False) > 1
        ]
        groups: list[dict[str, Any]] = []
        samples: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        for key, group in rows.groupby(["architecture", *split], dropna=False, sort=True):
            key = key if isinstance(key, tuple) else (key,)
            where = " ".join(f"{c}={_plain(v)}" for c, v in zip(split, key[1:], strict=True))
            groups.append(self._group(f"{key[0]} {where}".strip(), group))
            samples.setdefault(where, {})[str(key[0])] = _directions(group)
        fitted = [g for g in groups if "gap" in g]
        if not fitted:
            return self._skip(
                "needs at least 2 forward and 2 inverse trials of one architecture; found "
                + "; ".join(
                    f"{g['label']}: {g['n_forward']} forward, {g['n_inverse']} inverse"
                    for g in groups
                )
            )
        for g in fitted:
            self.params_[g["label"]] = g.pop("gap")
        for where, by_arch in samples.items():
            for arch, (forward, inverse) in by_arch.items():
                mlp = by_arch.get("mlp")
                if arch == "mlp" or mlp is None or min(map(len, (forward, inverse, *mlp))) < 2:
                    continue
                label = f"{arch} - mlp {where}".strip()
                self.params_[label] = gap_difference(forward, inverse, *mlp)
        self.n_ = sum(g["n_forward"] + g["n_inverse"] for g in fitted)
        self.n_censored_ = sum(g["n_censored"] for g in fitted)
        self._record_cost(rows)
        self.model_ = "mean inverse excess - mean forward excess (Welch)"
        self.extra_.update(groups=groups, reference=references(self.law))

    def _group(self, label: str, rows: pd.DataFrame) -> dict[str, Any]:
        forward, inverse = _directions(rows)
        out: dict[str, Any] = {
            "label": label,
            "architecture": rows["architecture"].iloc[0],
            "n_forward": len(forward),
            "n_inverse": len(inverse),
            "n_censored": int((rows["status"] == escape.CENSORED).sum())
            if "status" in rows.columns
            else 0,
        }
        if len(forward) >= 2 and len(inverse) >= 2:
            out["forward_excess"] = float(forward.mean())
            out["inverse_excess"] = float(inverse.mean())
            out["gap"] = welch(inverse, forward)
        return out


def welch(a: np.ndarray, b: np.ndarray) -> Estimate:
    """mean(a) - mean(b) with a Welch t interval (Welch-Satterthwaite degrees of freedom)."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return Estimate(
            float(a.mean() - b.mean()), float(a.mean() - b.mean()), float(a.mean() - b.mean()), 0.0
        )
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t_estimate(float(a.mean() - b.mean()), se, dof)


def gap_difference(
    forward_a: np.ndarray, inverse_a: np.ndarray, forward_b: np.ndarray, inverse_b: np.ndarray
) -> Estimate:
    """How much A's gap exceeds B's, (inverse_a - forward_a) - (inverse_b - forward_b),
    with a t interval from the four sample variances (Welch-Satterthwaite freedom)."""
    parts = [(x, x.var(ddof=1) / len(x)) for x in (forward_a, inverse_a, forward_b, inverse_b)]
    value = float(inverse_a.mean() - forward_a.mean() - (inverse_b.mean() - forward_b.mean()))
    total = sum(v for _, v in parts)
    if total == 0.0:
        return Estimate(value, value, value, 0.0)
    dof = total**2 / sum(v**2 / (len(x) - 1) for x, v in parts if v > 0)
    return t_estimate(value, math.sqrt(total), dof)


def _directions(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The final excesses of the forward and of the inverse rows."""
    forward = rows.loc[rows["direction"] == "forward", "final_excess"].to_numpy(float)
    inverse = rows.loc[rows["direction"] == "inverse", "final_excess"].to_numpy(float)
    return forward, inverse


def _architecture(rows: pd.DataFrame) -> pd.Series:
    label = rows["model"].astype(str)
    if "lora_rank" in rows.columns:
        rank = pd.to_numeric(rows["lora_rank"], errors="coerce")
        lora = rank.fillna(0) > 0
        label = label.where(~lora, label + "-lora" + rank.fillna(0).astype(int).astype(str))
    if "base" in rows.columns:
        label = label.where(rows["base"].isna(), label + "+pretrained")
    return label


def _usable(trials: pd.DataFrame, law: str) -> pd.DataFrame:
    rows = trials[trials["task"] == "mapping"] if "task" in trials.columns else trials
    rows = rows[rows["direction"].isin(("forward", "inverse"))]
    excess = pd.to_numeric(rows["final_excess"], errors="coerce")
    bad = ~np.isfinite(excess)
    if "status" in rows.columns:
        bad |= rows["status"].isin((escape.FAILED, escape.RUNNING))
    if bad.any():
        warnings.warn(
            f"{law}: {int(bad.sum())} mapping-task trials have no final excess (diverged, "
            "failed or still running) and are left out",
            FitWarning,
            stacklevel=4,
        )
    return rows[~bad].assign(final_excess=excess[~bad])


def _plain(value: Any) -> str:
    """5 for 5.0, 0.001 for 1e-3: labels read like the config."""
    value = to_plain(value)
    return f"{value:g}" if isinstance(value, float) else str(value)
