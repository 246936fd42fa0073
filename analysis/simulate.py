"""Study tables simulated from known laws, with censoring.

Every function returns tables with the columns of a real study (design.md), so that a
fit can be checked against the parameters it should recover, and so that the report
can be tried without a cluster. Escape times are drawn from the AFT models the fits
assume; a trial that would escape after the budget is censored at the budget.

Example::

    trials = simulate_noise_study(lr_exponent=0.66, batch_exponent=-0.66, rng=0)
    NoiseStabilizationFitter().fit(trials).summary
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

from analysis.escape import CENSORED, CONVERGED, ESCAPED
from analysis.escape_times import escape_table
from analysis.laws._base import geometric_center
from analysis.laws.capacity import wall_curve

TRIAL_COLUMNS = (
    "trial_id", "status", "task", "direction", "model", "K", "D", "bases", "lr",
    "batch_size", "lora_rank", "seed", "steps", "plateau_onset_step", "escape_step",
    "plateau_loss", "floor", "final_loss", "final_excess", "wall_s",
)  # fmt: skip
CURVE_COLUMNS = (
    "trial_id", "seed", "step", "loss", "candidate_loss", "first_token_loss", "excess",
    "z_shuffle_gap", "routing_score", "lr_now",
)  # fmt: skip
VOCAB = 36  # symbols a-z0-9: an untrained first-token loss is about log 36

Seed = int | np.random.Generator | None


def simulate_noise_study(
    *,
    lrs: Sequence[float] = (5e-4, 1e-3, 2e-3),
    batch_sizes: Sequence[int] = (64, 128, 256),
    seeds: int = 5,
    lr_exponent: float = 0.66,
    batch_exponent: float = -0.66,
    median_at_ref: float = 2000.0,
    scale: float = 0.3,
    budget: int = 4000,
    K: int = 10,
    D: int = 10000,
    distribution: str = "lognormal",
    rng: Seed = None,
) -> pd.DataFrame:
    """Escape steps from ``log t = log m + a log(lr / lr0) + b log(B / B0) + scale * eps``.

    lr0 and B0 are the geometric centres of ``lrs`` and ``batch_sizes``; ``m`` is the
    median escape step there. Trials past ``budget`` are censored.
    """
    design = _grid(lr=list(lrs), batch_size=list(batch_sizes))
    log_median = (
        math.log(median_at_ref)
        + lr_exponent * np.log(design["lr"] / geometric_center(lrs))
        + batch_exponent * np.log(design["batch_size"] / geometric_center(batch_sizes))
    )
    design = design.assign(K=K, D=D)
    return simulate_escape_trials(
        design,
        log_median.to_numpy(),
        scale=scale,
        budget=budget,
        seeds=seeds,
        distribution=distribution,
        rng=rng,
    )


def simulate_duration_study(
    *,
    Ds: Sequence[int] = (1000, 3000, 10000),
    Ks: Sequence[int] = (5, 10, 20),
    seeds: int = 4,
    D_exponent: float = 1.1,
    K_exponent: float = 0.0,
    median_at_ref: float = 2000.0,
    scale: float = 0.3,
    budget: int = 8000,
    plateau_height: float = 1.0,
    lr: float = 1e-3,
    batch_size: int = 128,
    rng: Seed = None,
) -> pd.DataFrame:
    """Escape steps from ``log t = log m + alpha log(D / D0) + gamma log(K / K0) + scale eps``.

    D0 and K0 are the geometric centres of ``Ds`` and ``Ks``. Each trial's plateau loss
    is ``plateau_height * log K`` times a 1% noise.
    """
    design = _grid(D=list(Ds), K=list(Ks))
    log_median = (
        math.log(median_at_ref)
        + D_exponent * np.log(design["D"] / geometric_center(Ds))
        + K_exponent * np.log(design["K"] / geometric_center(Ks))
    )
    design = design.assign(lr=lr, batch_size=batch_size)
    return simulate_escape_trials(
        design,
        log_median.to_numpy(),
        scale=scale,
        budget=budget,
        seeds=seeds,
        plateau_height=plateau_height,
        rng=rng,
    )


def simulate_escape_trials(
    design: pd.DataFrame,
    log_median: np.ndarray,
    *,
    scale: float,
    budget: int,
    seeds: int,
    distribution: str = "lognormal",
    plateau_height: float = 1.0,
    rng: Seed = None,
) -> pd.DataFrame:
    """One disambiguation-task row per design row and seed.

    Args:
        design: config columns, at least ``K``; ``D``, ``lr`` and ``batch_size`` default.
        log_median: log of the median escape step of each design row.
        scale: scale of log escape time (sigma for lognormal, 1/rho for weibull).
        budget: max_steps; later escapes are censored here.
        seeds: seeds per design row.
        distribution: ``"lognormal"`` or ``"weibull"``.
        plateau_height: plateau loss / log K.
        rng: a generator or a seed.

    Returns:
        A trials table (status escaped or censored).
    """
    gen = np.random.default_rng(rng)
    rows = design.loc[design.index.repeat(seeds)].reset_index(drop=True)
    loc = np.repeat(np.asarray(log_median, dtype=float), seeds)
    if distribution == "lognormal":
        log_t = loc + scale * gen.standard_normal(len(rows))
    elif distribution == "weibull":
        # log of a Weibull time: location + scale * (standard minimum extreme value);
        # shift so that ``log_median`` is the median
        gumbel_min = np.log(gen.standard_exponential(len(rows)))
        log_t = loc - scale * math.log(math.log(2.0)) + scale * gumbel_min
    else:
        raise ValueError(
            f"distribution={distribution!r} is not allowed: must be 'lognormal' or 'weibull'"
        )
    t = np.exp(log_t)
    escaped = t <= budget
    log_k = np.log(rows["K"].to_numpy(dtype=float))
    onset = np.minimum(200.0, 0.5 * np.minimum(t, budget)).round()
    out = _base_rows(rows, task="disambiguation", seeds=seeds)
    out["status"] = np.where(escaped, ESCAPED, CENSORED)
    out["escape_step"] = np.where(escaped, np.ceil(t), np.nan)
    out["steps"] = np.where(escaped, np.ceil(t), budget).astype(int)
    out["plateau_onset_step"] = onset
    out["plateau_loss"] = plateau_height * log_k * (1.0 + 0.01 * gen.standard_normal(len(rows)))
    out["floor"] = 0.0
    out["final_loss"] = np.where(escaped, 0.05, log_k)
    out["final_excess"] = out["final_loss"] - out["floor"]
    out["waiting_time"] = out["escape_step"] - out["plateau_onset_step"]
    return out


def simulate_capacity_study(
    *,
    ranks: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128, 256),
    groups: Sequence[tuple[int, int]] = ((8, 40000),),
    seeds: int = 3,
    r_star: float = 16.0,
    info_exponent: float = 0.0,
    sharpness: float = 1.5,
    excess_low_rank: float = 2.0,
    excess_high_rank: float = 0.05,
    noise: float = 0.1,
    rng: Seed = None,
) -> pd.DataFrame:
    """LoRA final excess on the inverse mapping task from the sigmoid wall in log rank.

    With several (K, D) ``groups``, the wall of each sits at
    ``r_star * (I / I0) ** info_exponent`` with I = D log K and I0 the geometric centre
    of the groups' I. ``noise`` is the standard deviation of the final excess.
    """
    gen = np.random.default_rng(rng)
    design = _grid(lora_rank=list(ranks), group=list(range(len(groups))))
    design["K"] = [groups[g][0] for g in design["group"]]
    design["D"] = [groups[g][1] for g in design["group"]]
    design = design.drop(columns="group")
    info = design["D"] * np.log(design["K"])
    info0 = geometric_center([d * math.log(k) for k, d in groups])
    walls = r_star * (info / info0) ** info_exponent
    rows = design.loc[design.index.repeat(seeds)].reset_index(drop=True)
    # each group has its own wall: evaluate the unit wall at rank / r*_group
    mean = wall_curve(
        rows["lora_rank"] / np.repeat(walls.to_numpy(), seeds),
        1.0,
        sharpness,
        excess_low_rank,
        excess_high_rank,
    )
    excess = mean + noise * gen.standard_normal(len(rows))
    out = _base_rows(rows, task="mapping", seeds=seeds, direction="inverse")
    return _final_rows(out, excess, budget=2000)


def simulate_gap_study(
    *,
    gaps: Mapping[str, float] | None = None,
    forward_excess: float = 0.05,
    noise: float = 0.1,
    seeds: int = 5,
    K: int = 5,
    D: int = 40000,
    rng: Seed = None,
) -> pd.DataFrame:
    """Forward and inverse mapping trials per architecture (``model`` column).

    The forward final excess is ``forward_excess``; the inverse one is that plus the
    architecture's gap; both with Gaussian ``noise``.
    """
    gaps = dict(gaps or {"gpt2": 1.16, "mlp": 0.22})
    gen = np.random.default_rng(rng)
    design = _grid(model=list(gaps), direction=["forward", "inverse"]).assign(K=K, D=D)
    rows = design.loc[design.index.repeat(seeds)].reset_index(drop=True)
    mean = forward_excess + np.where(rows["direction"] == "inverse", rows["model"].map(gaps), 0.0)
    excess = mean + noise * gen.standard_normal(len(rows))
    out = _base_rows(rows, task="mapping", seeds=seeds)
    return _final_rows(out, excess, budget=2000)


def simulate_routing_study(
    *,
    trials: int = 4,
    seeds: int = 3,
    lead: float = 0.5,
    lead_sd: float = 0.1,
    z_gap_lead: float = 0.3,
    K: int = 10,
    onset: int = 200,
    waiting: float = 2000.0,
    waiting_sd: float = 0.3,
    eval_every: int = 20,
    budget: int | None = None,
    noise: float = 0.01,
    rng: Seed = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Disambiguation curves whose routing score rises ahead of the loss escape.

    Per seed: the candidate loss sits at log K from ``onset`` and falls as a logistic
    centred on the escape E = onset + W (W log-normal around ``waiting``); the routing
    score rises from 0 to 1 as a logistic centred on E - f W, f ~ N(lead, lead_sd); the
    z-shuffle gap likewise with mean ``z_gap_lead``. Runs without escape by ``budget``
    are censored. The trials table is computed from the curves by the escape rule.

    Returns:
        (trials, curves).
    """
    gen = np.random.default_rng(rng)
    log_k = math.log(K)
    n = trials * seeds
    w = waiting * np.exp(waiting_sd * gen.standard_normal(n))
    escape_at = onset + w
    route_at = escape_at - w * (lead + lead_sd * gen.standard_normal(n))
    gap_at = escape_at - w * (z_gap_lead + lead_sd * gen.standard_normal(n))
    width = 0.03 * w  # of the loss drop and of the probes' rises, in steps
    last = budget or int(onset + 3 * waiting)
    steps = np.arange(0, last + 1, eval_every, dtype=float)
    curves = []
    for i in range(n):
        loss = log_k * expit((escape_at[i] - steps) / width[i])
        loss = np.where(steps < onset, math.log(VOCAB), loss)
        curves.append(pd.DataFrame({
            "trial_id": f"t{i // seeds:04d}",
            "seed": i % seeds,
            "step": steps.astype(int),
            "candidate_loss": loss + noise * gen.standard_normal(len(steps)),
            "routing_score": expit((steps - route_at[i]) / width[i])
            + noise * gen.standard_normal(len(steps)),
            "z_shuffle_gap": 2.0 * expit((steps - gap_at[i]) / width[i])
            + noise * gen.standard_normal(len(steps)),
        }))  # fmt: skip
    curve_table = pd.concat(curves, ignore_index=True)
    curve_table["loss"] = curve_table["candidate_loss"]
    curve_table["first_token_loss"] = curve_table["candidate_loss"]
    curve_table["excess"] = curve_table["loss"]
    curve_table["lr_now"] = 1e-3
    curve_table = curve_table[list(CURVE_COLUMNS)]
    design = pd.DataFrame({"trial_id": [f"t{j:04d}" for j in range(trials)]})
    rows = design.loc[design.index.repeat(seeds)].reset_index(drop=True)
    table = _base_rows(rows.assign(K=K), task="disambiguation", seeds=seeds)
    table["trial_id"] = rows["trial_id"]
    table["floor"] = 0.0
    summary = escape_table(curve_table, table)
    recomputed = [c for c in summary.columns if c not in ("trial_id", "seed")]
    table = table.drop(columns=[c for c in recomputed if c in table.columns])
    table = table.merge(summary, on=["trial_id", "seed"])
    final = curve_table.groupby(["trial_id", "seed"])["loss"].last()
    table["final_loss"] = final.loc[
        list(zip(table["trial_id"], table["seed"], strict=True))
    ].to_numpy()
    table["final_excess"] = table["final_loss"] - table["floor"]
    return table, curve_table


def simulate_study(rng: Seed = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A small study with every law's axes, about the size of a smoke test: a 2 x 2
    lr x batch grid, a 2 x 2 D x K grid, 5 LoRA ranks, forward and inverse for gpt2 and
    mlp, and routing-score curves; 2-3 seeds each.

    Returns:
        (trials, curves), ready for :func:`analysis.report.write_report`.
    """
    gen = np.random.default_rng(rng)
    parts = [
        simulate_noise_study(lrs=(1e-3, 2e-3), batch_sizes=(64, 128), seeds=3, rng=gen),
        simulate_duration_study(
            Ds=(1000, 3000), Ks=(5, 10), seeds=3, lr=5e-4, batch_size=256, rng=gen
        ),
        simulate_capacity_study(ranks=(1, 4, 16, 64, 256), seeds=2, rng=gen),
        simulate_gap_study(seeds=2, rng=gen),
    ]
    routing_trials, curves = simulate_routing_study(trials=2, seeds=2, rng=gen)
    parts.append(routing_trials.assign(lr=3e-3, batch_size=32, D=5000))
    # trial ids are unique within a part; prefix them with the part
    for i, part in enumerate(parts):
        part["trial_id"] = f"p{i}_" + part["trial_id"].astype(str)
    curves = curves.assign(trial_id=f"p{len(parts) - 1}_" + curves["trial_id"])
    return pd.concat(parts, ignore_index=True), curves


# helpers -------------------------------------------------------------------------


def _grid(**axes: list[Any]) -> pd.DataFrame:
    index = pd.MultiIndex.from_product(list(axes.values()), names=list(axes))
    return index.to_frame(index=False)


def _base_rows(
    rows: pd.DataFrame, *, task: str, seeds: int, direction: str = "forward"
) -> pd.DataFrame:
    """The config columns of a trials table, defaults filled in."""
    n = len(rows)
    out = pd.DataFrame({
        "trial_id": [f"sim_{i // seeds:05d}" for i in range(n)],
        "status": CENSORED,
        "task": task,
        "direction": rows["direction"] if "direction" in rows else direction,
        "model": rows["model"] if "model" in rows else "gpt2",
        "K": rows["K"].astype(int),
        "D": rows["D"].astype(int) if "D" in rows else 1000 * rows["K"].astype(int),
        "lr": rows["lr"].astype(float) if "lr" in rows else 1e-3,
        "batch_size": rows["batch_size"].astype(int) if "batch_size" in rows else 128,
        "lora_rank": rows["lora_rank"] if "lora_rank" in rows else np.nan,
        "seed": np.tile(np.arange(seeds), n // seeds),
    })  # fmt: skip
    out["bases"] = out["D"] // out["K"]
    for name in (
        "steps",
        "plateau_onset_step",
        "escape_step",
        "plateau_loss",
        "floor",
        "final_loss",
        "final_excess",
    ):
        out[name] = np.nan
    out["wall_s"] = np.nan
    return out[list(TRIAL_COLUMNS)]


def _final_rows(out: pd.DataFrame, excess: np.ndarray, budget: int) -> pd.DataFrame:
    """Mapping-task rows: floor log K on the inverse task, 0 forward."""
    inverse = out["direction"] == "inverse"
    out["floor"] = np.where(inverse, np.log(out["K"].astype(float)), 0.0)
    out["final_excess"] = excess
    out["final_loss"] = out["floor"] + excess
    out["status"] = np.where(excess <= 0.05, CONVERGED, CENSORED)
    out["steps"] = budget
    return out
