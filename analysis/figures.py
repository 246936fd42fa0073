"""Figures of a study: loss curves, phase diagrams, Kaplan-Meier curves and the fitted laws.

Every function draws one PNG from the study tables (and, for a law, its ``laws.json``
entry) and returns the path written, or None when the study lacks what the figure
shows. Figures are drawn on the Agg canvas directly, so importing this module changes
no global matplotlib state and needs no display.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from lifelines import KaplanMeierFitter
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from analysis import escape
from analysis.escape_times import escape_table
from analysis.laws._base import hold_fixed, select_task
from analysis.laws.capacity import CURVE_PARAMS, wall_curve

logger = logging.getLogger(__name__)

DPI = 120
MAX_CURVES = 40  # per panel; more make an unreadable tangle


def draw_all(
    trials: pd.DataFrame,
    curves: pd.DataFrame | None,
    laws: dict[str, Any],
    out_dir: str | Path,
) -> dict[str, str]:
    """Draws every figure the study supports.

    Returns:
        ``{figure name: file name}`` for the figures written into ``out_dir``.
    """
    out = Path(out_dir)
    makers: dict[str, Callable[[Path], Path | None]] = {
        "loss_curves": lambda p: loss_curves(trials, curves, p),
        "phase_lr_batch": lambda p: phase_lr_batch(trials, p),
        "phase_K_D": lambda p: phase_k_d(trials, p),
        "phase_rank_K": lambda p: phase_rank_k(trials, p),
        "phase_rank_D": lambda p: phase_rank_d(trials, p),
        "km_temperature": lambda p: km_by_temperature(trials, p),
        "noise_law": lambda p: noise_law(trials, laws.get("noise_stabilization", {}), p),
        "plateau_duration": lambda p: duration_law(trials, laws.get("plateau_duration", {}), p),
        "capacity_wall": lambda p: capacity_wall(trials, laws.get("capacity_wall", {}), p),
        "directional_gap": lambda p: directional_gap(laws.get("directional_gap", {}), p),
        "routing_lead": lambda p: routing_lead(trials, curves, p),
    }
    written = {}
    for name, make in makers.items():
        path = make(out / f"{name}.png")
        if path is not None:
            written[name] = path.name
    logger.info("wrote %d figures to %s", len(written), out)
    return written


# loss curves ----------------------------------------------------------------------


def loss_curves(
    trials: pd.DataFrame, curves: pd.DataFrame | None, path: str | Path
) -> Path | None:
    """Watched loss against step: candidate loss with its log K, escape threshold and
    floor lines for the disambiguation task; loss with its floor for the mapping task."""
    if curves is None or curves.empty:
        return None
    panels = []
    for task, column in (("disambiguation", "candidate_loss"), ("mapping", "loss")):
        rows = select_task(trials, task)
        picked = curves[curves["trial_id"].isin(rows["trial_id"])]
        if column in picked.columns and picked[column].notna().any():
            panels.append((task, column, rows, picked))
    if not panels:
        return None
    fig = _figure(6.0 * len(panels), 4.2, ncols=len(panels))
    for ax, (task, column, rows, picked) in zip(fig.axes, panels, strict=True):
        _draw_curves(ax, task, column, rows, picked)
    return _save(fig, path)


def _draw_curves(
    ax: Any, task: str, column: str, rows: pd.DataFrame, picked: pd.DataFrame
) -> None:
    config = rows.drop_duplicates("trial_id").set_index("trial_id")
    keys = picked[["trial_id", "seed"]].drop_duplicates()
    if len(keys) > MAX_CURVES:
        keys = keys.iloc[np.linspace(0, len(keys) - 1, MAX_CURVES).astype(int)]
    colour_by = "K" if task == "disambiguation" else "direction"
    levels = sorted(
        config.loc[keys["trial_id"].unique(), colour_by].dropna().unique().tolist(), key=str
    )
    palette = {v: f"C{i % 10}" for i, v in enumerate(levels)}
    for trial_id, seed in keys.itertuples(index=False):
        curve = picked[(picked["trial_id"] == trial_id) & (picked["seed"] == seed)]
        curve = curve.sort_values("step").drop_duplicates("step", keep="last")
        level = config.at[trial_id, colour_by]
        ax.plot(curve["step"], curve[column], lw=0.8, alpha=0.6, color=palette.get(level, "k"))
    for level, colour in palette.items():
        if task == "disambiguation":
            log_k = math.log(float(level))
            ax.axhline(log_k, color=colour, ls="--", lw=1.2, label=f"log K, K={level}")
            ax.axhline(0.5 * log_k, color=colour, ls=":", lw=0.8)
        else:
            floors = config.loc[config["direction"] == level, "floor"].dropna().unique()
            for floor in floors:
                ax.axhline(floor, color=colour, ls="--", lw=1.2, label=f"floor, {level}")
    if task == "disambiguation":
        ax.axhline(0.0, color="k", ls="-.", lw=0.8, label="floor (0)")
        ax.set_title("candidate loss (dotted: escape threshold)")
    else:
        ax.set_title("mapping loss")
    ax.set_xlabel("step")
    ax.set_ylabel(f"{column} (nats)")
    ax.legend(fontsize=7, loc="upper right")


# phase diagrams ---------------------------------------------------------------------


def phase_lr_batch(trials: pd.DataFrame, path: str | Path) -> Path | None:
    """Median escape step (Kaplan-Meier, censoring-aware) over lr x batch size."""
    rows = select_task(trials, "disambiguation")
    return _escape_heatmap(rows, "lr", "batch_size", path, "learning rate", "batch size")


def phase_k_d(trials: pd.DataFrame, path: str | Path) -> Path | None:
    """Median escape step over K x D (training examples)."""
    rows = select_task(trials, "disambiguation")
    return _escape_heatmap(rows, "D", "K", path, "D (training examples)", "K")


def phase_rank_k(trials: pd.DataFrame, path: str | Path) -> Path | None:
    """Median final excess of LoRA on the inverse mapping task over rank x K; cells where
    most runs did not converge within the budget are hatched. Not drawn where K has one
    value and D several (:func:`phase_rank_d` draws that)."""
    if _rank_axis(trials) != "K":
        return None
    return _phase_rank(trials, "K", path)


def phase_rank_d(trials: pd.DataFrame, path: str | Path) -> Path | None:
    """As :func:`phase_rank_k` over rank x D, where K has one value and D several."""
    if _rank_axis(trials) != "D":
        return None
    return _phase_rank(trials, "D", path)


def _rank_axis(trials: pd.DataFrame) -> str:
    """The second axis of the rank phase diagram: D where only D varies among LoRA rows."""
    if not {"lora_rank", "D", "K"} <= set(trials.columns):
        return "K"
    rows = trials[pd.to_numeric(trials["lora_rank"], errors="coerce") > 0]
    return "D" if rows["K"].nunique() == 1 and rows["D"].nunique() > 1 else "K"


def _phase_rank(trials: pd.DataFrame, y: str, path: str | Path) -> Path | None:
    if not {"lora_rank", "final_excess", y} <= set(trials.columns):
        return None
    rows = select_task(trials, "mapping")
    if "direction" in rows.columns:
        rows = rows[rows["direction"] == "inverse"]
    rows = rows[pd.to_numeric(rows["lora_rank"], errors="coerce") > 0]
    rows = rows[np.isfinite(pd.to_numeric(rows["final_excess"], errors="coerce"))]
    if rows.empty:
        return None
    rows, held = hold_fixed(rows, ("lora_rank", y))
    cells = (
        rows.groupby(["lora_rank", y])
        .agg(
            value=("final_excess", "median"),
            n=("final_excess", "size"),
            unresolved=("status", lambda s: int((s == escape.CENSORED).sum())),
        )
        .reset_index()
    )
    if len(cells) < 2:
        return None
    cells["censored"] = cells["unresolved"] > cells["n"] / 2
    cells["label"] = [f"{v:.2f}\n(n={n})" for v, n in zip(cells["value"], cells["n"], strict=True)]
    return _heatmap(
        cells,
        "lora_rank",
        y,
        path,
        "LoRA rank",
        "D (training examples)" if y == "D" else "K",
        "median final excess (nats), inverse task; hatched: most runs did not converge",
        held,
        log_colour=False,
    )


def _escape_heatmap(
    rows: pd.DataFrame, x: str, y: str, path: str | Path, xlabel: str, ylabel: str
) -> Path | None:
    needed = {x, y, "status", "escape_step", "steps"}
    if not needed <= set(rows.columns) or rows.empty:
        return None
    rows, held = hold_fixed(rows, (x, y))
    cells = []
    for (xv, yv), cell in rows.groupby([x, y]):
        median, n_escaped, last = km_median(cell)
        cells.append({x: xv, y: yv, "value": median if math.isfinite(median) else last,
                      "censored": not math.isfinite(median),
                      "label": (f"{median:,.0f}" if math.isfinite(median) else f">{last:,.0f}")
                      + f"\n{n_escaped}/{len(cell)}"})  # fmt: skip
    table = pd.DataFrame(cells)
    if len(table) < 2:
        return None
    return _heatmap(
        table,
        x,
        y,
        path,
        xlabel,
        ylabel,
        "median escape step (escaped / trials; hatched: median not reached)",
        held,
    )


def _heatmap(
    cells: pd.DataFrame,
    x: str,
    y: str,
    path: str | Path,
    xlabel: str,
    ylabel: str,
    title: str,
    held: dict[str, Any],
    log_colour: bool = True,
) -> Path:
    xs, ys = sorted(cells[x].unique()), sorted(cells[y].unique())
    grid = np.full((len(ys), len(xs)), np.nan)
    for row in cells.itertuples(index=False):
        grid[ys.index(getattr(row, y)), xs.index(getattr(row, x))] = row.value
    fig = _figure(1.6 + 1.3 * len(xs), 1.4 + 0.9 * len(ys))
    ax = fig.axes[0]
    positive = grid[np.isfinite(grid) & (grid > 0)]
    norm = (
        LogNorm(positive.min(), max(positive.max(), positive.min() * 1.01))
        if log_colour and len(positive)
        else None
    )
    image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis", norm=norm)
    fig.colorbar(image, ax=ax)
    for row in cells.itertuples(index=False):
        i, j = ys.index(getattr(row, y)), xs.index(getattr(row, x))
        if row.censored:
            ax.add_patch(_hatch(j, i))
        ax.text(
            j,
            i,
            row.label,
            ha="center",
            va="center",
            fontsize=7,
            color="w",
            bbox={"facecolor": "k", "alpha": 0.45, "lw": 0, "pad": 1.5},
        )
    ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
    ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title + _held_note(held), fontsize=8)
    return _save(fig, path)


def _hatch(j: int, i: int) -> Rectangle:
    return Rectangle(
        (j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", edgecolor="w", lw=0, alpha=0.6
    )


def km_median(cell: pd.DataFrame) -> tuple[float, int, float]:
    """Kaplan-Meier median escape step of a group of trials (censoring-aware).

    Returns:
        (median or inf when more than half never escaped, escapes, last step seen).
    """
    event = (cell["status"] == escape.ESCAPED).to_numpy()
    time = np.where(event, cell["escape_step"].astype(float), cell["steps"].astype(float))
    ok = np.isfinite(time)
    last = float(np.nanmax(time)) if ok.any() else math.nan
    if not ok.any():
        return math.inf, 0, last
    kmf = KaplanMeierFitter().fit(time[ok], event[ok])
    return float(kmf.median_survival_time_), int(event.sum()), last


# Kaplan-Meier ---------------------------------------------------------------------


def km_by_temperature(trials: pd.DataFrame, path: str | Path) -> Path | None:
    """Fraction of trials still on the plateau against step, one curve per T = lr / B
    (ticks: censored trials)."""
    rows = select_task(trials, "disambiguation")
    if not {"lr", "batch_size", "status", "escape_step", "steps"} <= set(rows.columns):
        return None
    rows, held = hold_fixed(rows, ("lr", "batch_size"))
    temperature = rows["lr"] / rows["batch_size"]
    if rows.empty or temperature.nunique() < 2:
        return None
    fig = _figure(6.0, 4.2)
    ax = fig.axes[0]
    for i, (t_value, group) in enumerate(rows.groupby(temperature.round(15))):
        event = (group["status"] == escape.ESCAPED).to_numpy()
        time = np.where(event, group["escape_step"].astype(float), group["steps"].astype(float))
        ok = np.isfinite(time)
        if not ok.any():
            continue
        kmf = KaplanMeierFitter().fit(time[ok], event[ok])
        surv = kmf.survival_function_.iloc[:, 0]
        colour = f"C{i % 10}"
        ax.step(
            surv.index,
            surv.to_numpy(),
            where="post",
            color=colour,
            label=f"T={t_value:.3g} (n={int(ok.sum())})",
        )
        censored = time[ok][~event[ok]]
        ax.plot(censored, kmf.predict(censored), "|", color=colour, ms=8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step")
    ax.set_ylabel("fraction not yet escaped")
    ax.set_title("Kaplan-Meier escape curves by temperature" + _held_note(held), fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


# fitted laws ------------------------------------------------------------------------


def noise_law(trials: pd.DataFrame, law: dict[str, Any], path: str | Path) -> Path | None:
    """Escape steps against lr per batch size, with the fitted power-law medians."""
    return _aft_scatter(
        trials,
        law,
        path,
        x="lr",
        by="batch_size",
        slope="lr_exponent",
        by_slope="batch_exponent",
        xlabel="learning rate",
    )


def duration_law(trials: pd.DataFrame, law: dict[str, Any], path: str | Path) -> Path | None:
    """Escape steps against D per K, with the fitted medians."""
    return _aft_scatter(
        trials,
        law,
        path,
        x="D",
        by="K",
        slope="D_exponent",
        by_slope="K_exponent",
        xlabel="D (training examples)",
    )


def _aft_scatter(
    trials: pd.DataFrame,
    law: dict[str, Any],
    path: str | Path,
    *,
    x: str,
    by: str,
    slope: str,
    by_slope: str,
    xlabel: str,
) -> Path | None:
    if "params" not in law:
        return None
    rows, held = hold_fixed(select_task(trials, "disambiguation"), (x, by))  # as the law did
    params, ref = law["params"], law["reference_point"]
    fig = _figure(6.0, 4.2)
    ax = fig.axes[0]
    grid = np.geomspace(rows[x].min(), rows[x].max(), 50)
    for i, (level, group) in enumerate(rows.groupby(by)):
        colour = f"C{i % 10}"
        escaped = group["status"] == escape.ESCAPED
        ax.plot(
            group.loc[escaped, x],
            group.loc[escaped, "escape_step"],
            "o",
            color=colour,
            ms=4,
            alpha=0.7,
            label=f"{by}={level:g}",
        )
        ax.plot(
            group.loc[~escaped, x],
            group.loc[~escaped, "steps"],
            "^",
            mfc="none",
            color=colour,
            ms=6,
            alpha=0.7,
        )
        log_m = math.log(params["median_escape_at_ref"]["value"])
        log_m += params[slope]["value"] * np.log(grid / ref[x])
        if by_slope in params:
            log_m += params[by_slope]["value"] * math.log(level / ref[by])
        ax.plot(grid, np.exp(log_m), "-", color=colour, lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("escape step")
    ax.set_title(
        f"lines: fitted median; open triangles: censored at their last step{_held_note(held)}",
        fontsize=8,
    )
    ax.legend(fontsize=7)
    return _save(fig, path)


def capacity_wall(trials: pd.DataFrame, law: dict[str, Any], path: str | Path) -> Path | None:
    """Final excess against LoRA rank with the fitted wall and r* (band: its interval).

    One colour per (K, D) wall the law fitted (its ``walls``), or the main wall alone.
    """
    if "params" not in law:
        return None
    rows = select_task(trials, "mapping")
    rows = rows[
        (rows["direction"] == "inverse") & (pd.to_numeric(rows["lora_rank"], errors="coerce") > 0)
    ]
    rows, _ = hold_fixed(rows, ("lora_rank", "K", "D"))  # the slice the law used
    p = law["params"]
    main = {
        "K": law["K"],
        "D": law["D"],
        "r_star": p["r_star"],
        **{name: p[name]["value"] for name in CURVE_PARAMS if name in p},
    }
    walls = [w for w in law.get("walls", []) if "r_star" in w and "excess_low_rank" in w]
    walls = sorted(walls, key=lambda w: (w["K"], w["D"])) or [main]
    fig = _figure(6.0, 4.2)
    ax = fig.axes[0]
    for i, wall in enumerate(walls):
        colour = f"C{i}"
        cell = rows[(rows["K"] == wall["K"]) & (rows["D"] == wall["D"])]
        if cell.empty:
            continue
        label = f"K={wall['K']:g}, D={wall['D']:g}" if len(walls) > 1 else "trials"
        ax.plot(
            cell["lora_rank"],
            cell["final_excess"],
            "o",
            ms=4,
            alpha=0.7,
            color=colour,
            label=label,
        )
        ranks = np.geomspace(cell["lora_rank"].min(), cell["lora_rank"].max(), 200)
        r_star = wall["r_star"]
        curve = wall_curve(
            ranks,
            r_star["value"],
            wall.get("sharpness", 50.0),  # a step wall: sharper than the grid resolves
            wall["excess_low_rank"],
            wall.get("excess_high_rank", 0.0),
        )
        ax.plot(ranks, curve, "-", color=colour, lw=1.2)
        ax.axvspan(r_star["ci_low"], r_star["ci_high"], color=colour, alpha=0.12)
        ax.axvline(
            r_star["value"], color=colour, ls="--", lw=1, label=f"r* = {r_star['value']:.3g}"
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("LoRA rank")
    ax.set_ylabel("final excess (nats)")
    if len(walls) > 1:
        title = f"capacity walls, inverse task; lines: {law['model']}"
        if "info_exponent" in p:
            e = p["info_exponent"]
            title += f"; r* ~ (D log K)^{e['value']:.2f} [{e['ci_low']:.2f}, {e['ci_high']:.2f}]"
    else:
        title = f"capacity wall, inverse task, K={law['K']}, D={law['D']}; line: {law['model']}"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def directional_gap(law: dict[str, Any], path: str | Path) -> Path | None:
    """Mean final excess forward and inverse per architecture group, with the fitted gap.

    A symmetric-log axis where the excesses span more than two decades (a converged
    group's hundredths of a nat beside an unconverged one's tens).
    """
    params = law.get("params", {})
    groups = [
        g
        for g in law.get("groups", [])
        if g.get("forward_excess") is not None and g.get("inverse_excess") is not None
    ]
    if not params or not groups:
        return None
    forward = np.array([g["forward_excess"] for g in groups], dtype=float)
    inverse = np.array([g["inverse_excess"] for g in groups], dtype=float)
    x = np.arange(len(groups))
    fig = _figure(max(6.0, 1.2 + 0.95 * len(groups)), 4.4)
    ax = fig.axes[0]
    width = 0.38
    ax.bar(x - width / 2, forward, width, color="C0", label="forward")
    ax.bar(x + width / 2, inverse, width, color="C3", label="inverse")
    values = np.concatenate([forward, inverse])
    positive = values[values > 0]
    if len(positive) and positive.max() > 100 * positive.min():
        ax.set_yscale("symlog", linthresh=max(positive.min(), 1e-3))
    for i, group in enumerate(groups):
        gap = params.get(group["label"])
        if gap is None:
            continue
        ax.annotate(
            f"gap {gap['value']:.3g}\n[{gap['ci_low']:.3g}, {gap['ci_high']:.3g}]",
            (i, max(forward[i], inverse[i])),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=6,
        )
    ax.set_xticks(x, [g["label"].replace(" ", "\n") for g in groups], fontsize=7)
    ax.set_ylabel("mean final excess (nats)")
    ax.set_title(
        "directional gap: inverse minus forward excess (95% interval); "
        f"n = {law.get('n', '?')}, censored {law.get('n_censored', '?')}",
        fontsize=8,
    )
    ax.legend(fontsize=7)
    ax.margins(y=0.15)
    return _save(fig, path)


def routing_lead(
    trials: pd.DataFrame, curves: pd.DataFrame | None, path: str | Path
) -> Path | None:
    """Routing score rise and loss fall on the waiting-time clock (0: onset, 1: escape)."""
    if (
        curves is None
        or "routing_score" not in curves.columns
        or curves["routing_score"].isna().all()
    ):
        return None
    rows = select_task(trials, "disambiguation")
    curves = curves[curves["trial_id"].isin(rows["trial_id"])]
    table = escape_table(curves, rows)
    table = table[(table["status"] == escape.ESCAPED) & (table["waiting_time"] > 0)]
    if table.empty:
        return None
    config = rows.drop_duplicates("trial_id").set_index("trial_id")
    fig = _figure(6.0, 4.2)
    ax = fig.axes[0]
    for k, row in enumerate(table.head(MAX_CURVES).itertuples(index=False)):
        curve = curves[(curves["trial_id"] == row.trial_id) & (curves["seed"] == row.seed)]
        curve = curve.sort_values("step").drop_duplicates("step", keep="last")
        onset, esc = float(row.plateau_onset_step), float(row.escape_step)
        clock = (curve["step"].to_numpy(float) - onset) / (esc - onset)
        score = curve["routing_score"].to_numpy(float)
        before, after = score[clock <= 0], score[clock >= 1]
        if not len(before) or not len(after):
            continue
        lo, hi = np.nanmedian(before), np.nanmedian(after)
        if not hi > lo:
            continue
        log_k = math.log(float(config.at[row.trial_id, "K"]))
        labels = (
            ("routing score (rise fraction)", "candidate loss / log K") if k == 0 else (None, None)
        )
        ax.plot(clock, (score - lo) / (hi - lo), color="C0", lw=0.7, alpha=0.5, label=labels[0])
        ax.plot(
            clock,
            curve["candidate_loss"].to_numpy(float) / log_k,
            color="C3",
            lw=0.7,
            alpha=0.5,
            label=labels[1],
        )
    ax.axvline(1.0, color="k", ls="--", lw=1)
    ax.axhline(0.5, color="k", ls=":", lw=0.8)
    ax.set_xlim(-0.2, 1.3)
    ax.set_ylim(-0.2, 1.3)
    ax.set_xlabel("(step - onset) / waiting time")
    ax.set_title("routing score against the loss escape (dashed: escape step)", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


# helpers ----------------------------------------------------------------------------


def _figure(width: float, height: float, ncols: int = 1) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    fig.subplots(1, ncols)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    return out


def _held_note(held: dict[str, Any]) -> str:
    if not held:
        return ""
    return "\nat " + ", ".join(f"{k}={v}" for k, v in held.items())
