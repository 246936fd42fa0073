"""The study report: ``laws.json``, the figures and ``report.md`` in one call.

Example::

    laws = write_report(trials, curves, "reports/quick")
    # reports/quick/laws.json, reports/quick/*.png, reports/quick/report.md
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.escape import EscapeRule
from analysis.escape_times import escape_table
from analysis.figures import draw_all
from analysis.laws import LAWS, fit_all

logger = logging.getLogger(__name__)

TITLES = {
    "noise_stabilization": "Noise stabilization",
    "plateau_duration": "Plateau duration",
    "capacity_wall": "Capacity wall",
    "directional_gap": "Directional gap",
    "routing_lead": "Routing lead",
}
LAW_FIGURES = {
    "noise_stabilization": ("noise_law", "phase_lr_batch", "km_temperature"),
    "plateau_duration": ("plateau_duration", "phase_K_D"),
    "capacity_wall": ("capacity_wall", "phase_rank_K"),
    "directional_gap": (),
    "routing_lead": ("routing_lead",),
}


def write_report(
    trials: pd.DataFrame, curves: pd.DataFrame | None, out_dir: str | Path
) -> dict[str, Any]:
    """Fits every law and writes ``laws.json``, the PNG figures, ``escape_times.csv``
    (when there are curves) and ``report.md`` into ``out_dir``.

    Args:
        trials: the trials table (design.md), one row per trial and seed.
        curves: the curves table, or None (no loss curves, no routing lead).
        out_dir: created if missing; files in it are overwritten.

    Returns:
        The laws dict written to ``laws.json``.

    Raises:
        ValueError: the trials table lacks ``trial_id`` or ``status``, or a curve cannot
            be matched to its trial.
    """
    missing = [c for c in ("trial_id", "status") if c not in trials.columns]
    if missing:
        raise ValueError(
            f"trials columns={sorted(trials.columns)!r} are not allowed: missing "
            f"{', '.join(missing)}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if curves is not None and curves.empty:
        curves = None

    laws = fit_all(trials, curves)
    (out / "laws.json").write_text(json.dumps(laws, indent=2, allow_nan=False) + "\n")
    figures = draw_all(trials, curves, laws, out)
    if curves is not None:
        escape_table(curves, trials).to_csv(out / "escape_times.csv", index=False)
    _remove_stale(out, figures, with_escapes=curves is not None)
    (out / "report.md").write_text(render_report(trials, laws, figures))
    logger.info("report written to %s", out)
    return laws


def _remove_stale(out: Path, figures: dict[str, str], with_escapes: bool) -> None:
    """Removes files an earlier report left that this one did not write (a figure of a
    law that is now skipped), so that the directory matches its report.md."""
    names = {"loss_curves", *(name for group in LAW_FIGURES.values() for name in group)}
    stale = [out / f"{name}.png" for name in names if name not in figures]
    if not with_escapes:
        stale.append(out / "escape_times.csv")
    for path in stale:
        if path.is_file():
            path.unlink()
            logger.info("removed %s: the new report has none", path)


def render_report(trials: pd.DataFrame, laws: dict[str, Any], figures: dict[str, str]) -> str:
    """The Markdown report (figures referenced by file name, beside ``report.md``)."""
    lines = ["# Study report", "", *_study_summary(trials), ""]
    if "loss_curves" in figures:
        lines += [f"![loss curves]({figures['loss_curves']})", ""]
    lines += ["## Laws at a glance", "", "| law | result |", "|---|---|"]
    lines += [f"| {TITLES[name]} | {_headline(laws[name])} |" for name in LAWS]
    lines.append("")
    for name in LAWS:
        lines += _law_section(name, laws[name], figures)
    lines += _method_notes()
    return "\n".join(lines) + "\n"


# sections ---------------------------------------------------------------------------


def _study_summary(trials: pd.DataFrame) -> list[str]:
    counts = trials["status"].value_counts()
    statuses = ", ".join(f"{n} {s}" for s, n in counts.items())
    lines = [f"{len(trials)} trial rows (one per trial and seed): {statuses}."]
    if "task" in trials.columns:
        tasks = ", ".join(f"{n} {t}" for t, n in trials["task"].value_counts().items())
        lines.append(f"Tasks: {tasks}.")
    return lines


def _headline(entry: dict[str, Any]) -> str:
    if "skipped" in entry:
        return f"skipped: {entry['skipped']}"
    shown = list(entry["params"].items())[:3]
    return (
        "; ".join(f"{name} {_interval(p)}" for name, p in shown)
        + f" (n={entry['n']}, censored {entry['n_censored']})"
    )


def _law_section(name: str, entry: dict[str, Any], figures: dict[str, str]) -> list[str]:
    lines = [f"## {TITLES[name]}", ""]
    if "skipped" in entry:
        lines += [f"Skipped: {entry['skipped']}.", ""]
        lines += [f"{i}. {remedy}" for i, remedy in enumerate(entry.get("try", []), 1)]
        return [*lines, ""] if entry.get("try") else lines
    lines += [f"Model: {entry['model']}. n = {entry['n']}, censored = {entry['n_censored']}."]
    if "trials" in entry:
        cost = f"Cost: {entry['trials']} trials"
        if "trial_wall_s" in entry:
            cost += f", {_duration(entry['trial_wall_s'])} of trial wall time in all"
        lines.append(cost + ".")
    if entry.get("held_fixed"):
        held = ", ".join(f"{k}={v}" for k, v in entry["held_fixed"].items())
        lines.append(f"Held fixed: {held}.")
    lines += ["", *_param_table(entry), ""]
    lines += _VERDICTS.get(name, lambda e: [])(entry)
    refs = entry.get("reference", [])
    if refs:
        lines += ["", "Reference numbers:", ""]
        lines += [
            f"- `{r['param']}`"
            + (f" = {_number(r['value'])}" if r["value"] is not None else "")
            + f": {r['note']}"
            for r in refs
        ]
    for warning in entry.get("warnings", []):
        lines += ["", f"> Caveat: {warning}"]
    lines.append("")
    for fig in LAW_FIGURES[name]:
        if fig in figures:
            lines += [f"![{fig.replace('_', ' ')}]({figures[fig]})", ""]
    return lines


def _cell_table(cells: list[dict[str, Any]]) -> list[str]:
    """Median escape step per (lr, batch) cell: rows lr, columns batch size."""
    if not cells:
        return []
    batches = sorted({c["batch_size"] for c in cells})
    by = {(c["lr"], c["batch_size"]): c for c in cells}
    lines = [
        "Median escape step per cell (Kaplan-Meier, censored runs included; escaped / runs):",
        "",
        "| lr \\ batch | " + " | ".join(f"{b:g}" for b in batches) + " |",
        "|---|" + "---|" * len(batches),
    ]
    for lr in sorted({c["lr"] for c in cells}):
        row = []
        for b in batches:
            c = by.get((lr, b))
            if c is None:
                row.append("")
                continue
            median = "not reached" if c["median_escape"] is None else _number(c["median_escape"])
            row.append(f"{median} ({c['escaped']}/{c['n']})")
        lines.append(f"| {lr:g} | " + " | ".join(row) + " |")
    return [*lines, ""]


def _duration(seconds: float) -> str:
    """Seconds as ``1 h 02 min``, ``12 min 05 s`` or ``42 s``."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def _param_table(entry: dict[str, Any]) -> list[str]:
    refs: dict[str, list[str]] = {}
    for r in entry.get("reference", []):
        if r["value"] is not None:
            refs.setdefault(r["param"], []).append(_number(r["value"]))
    rows = ["| parameter | fitted | 95% interval | paper |", "|---|---|---|---|"]
    for name, p in entry["params"].items():
        # "gpt2 K=5" and "gpt2 - mlp K=5" take the reference of "gpt2" and "gpt2 - mlp"
        base = " ".join(part for part in name.split(" ") if "=" not in part)
        paper = refs.get(name) or refs.get(base) or ["-"]
        rows.append(
            f"| {name} | {_number(p['value'])} | [{_number(p['ci_low'])}, "
            f"{_number(p['ci_high'])}] | {' / '.join(paper)} |"
        )
    return rows


def _noise_verdict(entry: dict[str, Any]) -> list[str]:
    lines = _cell_table(entry.get("cells") or [])
    if "better_fit" in entry:
        close = " (below 2: the data do not separate the two)" if entry["delta_aic"] < 2 else ""
        lines.append(
            f"Better fit by AIC: {entry['better_fit'].replace('_', ' ')}, by "
            f"{_number(entry['delta_aic'])}{close}; AIC {_aic(entry['aic'])}."
        )
    t_only = entry.get("temperature_only", {})
    if "skipped" in t_only:
        lines.append(f"Temperature-only test skipped: {t_only['skipped']}.")
    elif t_only:
        verdict = "are consistent with" if t_only["exponent_sum_covers_0"] else "reject"
        lines.append(
            f"The data {verdict} lr and batch size entering only through "
            f"T = lr / batch (a + b = 0: Wald p = {_number(t_only['wald_p'])}, "
            f"likelihood-ratio p = {_number(t_only['likelihood_ratio_p'])})."
        )
    if "lr_ratio" in entry:
        lines.append(
            f"`slowdown` spans the study's {_number(entry['lr_ratio'])}x lr range; "
            "`slowdown_7x` extrapolates the power law to the paper's 7x."
        )
    return lines


def _duration_verdict(entry: dict[str, Any]) -> list[str]:
    lines = []
    if "K_independent" in entry:
        verdict = "does not depend" if entry["K_independent"] else "depends"
        lines.append(
            f"At fixed D the escape step {verdict} on K (K_exponent interval "
            f"{'covers' if entry['K_independent'] else 'excludes'} 0)."
        )
    if "K_independent_fixed_bases" in entry:
        fixed = entry["K_independent_fixed_bases"]
        lines.append(
            f"At a fixed number of bases (D / K) it {'does not depend' if fixed else 'depends'}"
            f" on K (K_exponent_fixed_bases = D_exponent + K_exponent; interval "
            f"{'covers' if fixed else 'excludes'} 0)."
        )
    if "plateau_candidates" in entry:
        lines.append(
            f"{entry['plateau_rows']} of {entry['plateau_candidates']} disambiguation runs "
            "had a plateau onset (the first evaluation on the plateau before the escape)."
        )
    if "plateau_height" in entry["params"]:
        lines.append(
            f"Plateau height / log K over {entry.get('plateau_height_n')} rows: "
            f"{_interval(entry['params']['plateau_height'])}."
        )
    by_k = entry.get("plateau_height_by_K") or {}
    if by_k:
        parts = [f"K={k}: {_interval(v)} ({v['n']} rows)" for k, v in by_k.items()]
        lines.append(f"By K: {'; '.join(parts)}.")
    return lines


def _capacity_verdict(entry: dict[str, Any]) -> list[str]:
    lines = [
        f"Main wall at K={entry['K']}, D={entry['D']}, ranks "
        f"{', '.join(_number(r) for r in entry['ranks'])}."
    ]
    for wall in entry.get("walls", []):
        if "error" in wall:
            lines.append(f"- K={wall['K']}, D={wall['D']}: {wall['error']}")
        else:
            lines.append(
                f"- K={wall['K']}, D={wall['D']} (D log K = "
                f"{_number(wall['information'])}): r* {_interval(wall['r_star'])}"
            )
    return lines


def _gap_verdict(entry: dict[str, Any]) -> list[str]:
    lines = [
        "| group | forward excess | inverse excess | n forward | n inverse |",
        "|---|---|---|---|---|",
    ]
    for g in entry["groups"]:
        lines.append(
            f"| {g['label']} | {_number(g.get('forward_excess'))} | "
            f"{_number(g.get('inverse_excess'))} | {g['n_forward']} | "
            f"{g['n_inverse']} |"
        )
    return lines


def _routing_verdict(entry: dict[str, Any]) -> list[str]:
    return [
        f"Definition: {entry['definition']}.",
        f"Median routing lead {_number(entry['median_routing_lead'])}; escaped seeds whose "
        f"routing score did not rise: {entry['n_no_rise']}; escaped without a plateau "
        f"onset (no waiting time): {entry.get('n_no_plateau', 0)}.",
    ]


_VERDICTS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "noise_stabilization": _noise_verdict,
    "plateau_duration": _duration_verdict,
    "capacity_wall": _capacity_verdict,
    "directional_gap": _gap_verdict,
    "routing_lead": _routing_verdict,
}


def _method_notes() -> list[str]:
    rule = EscapeRule()
    return [
        "## Method",
        "",
        f"- Escape: the watched loss (candidate-set loss for the disambiguation task) below "
        f"{rule.fraction} x log K for {rule.confirm} consecutive evaluations, unless a trial "
        "set its own rule; the escape step is the first of them. Plateau onset: the first "
        f"evaluation before the escape where the watched loss and the first-target-token "
        f"loss over the whole vocabulary are both within {rule.plateau_tolerance:.0%} of "
        "log K (the marginal is learned; an untrained model's candidate-set loss is "
        "already log K), or the watched loss alone for trials with `plateau_onset: "
        "watched`; runs without an onset have no waiting time and no plateau height.",
        "- Censoring: trials that did not escape (censored, diverged, failed, running) enter "
        "the escape-time fits as right-censored at their last step; none is dropped.",
        "- Escape-time laws are accelerated-failure-time regressions (lifelines); intervals "
        "are 95% Wald intervals with a small-sample t correction (covariance scaled by "
        "e / (e - k), e escapes, k coefficients). The capacity wall is a least-squares "
        "sigmoid in log rank with delta-method t intervals; the directional gap a Welch "
        "interval; the routing lead a t interval over escaped seeds.",
        "",
    ]


# formatting -------------------------------------------------------------------------


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, int | float) and not isinstance(value, bool):
        v = float(value)
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
            return f"{v:.3g}"
        if abs(v) >= 1000 or isinstance(value, int):
            return f"{v:,.0f}"
        if v == 0:
            return "0"
        return f"{v:#.3g}".rstrip(".")  # 3 significant digits, zeros kept: 1.00, 0.0953, 156
    return str(value)


def _interval(p: dict[str, Any]) -> str:
    return f"{_number(p['value'])} [{_number(p['ci_low'])}, {_number(p['ci_high'])}]"


def _aic(aic: dict[str, float]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {_number(v)}" for k, v in aic.items())
