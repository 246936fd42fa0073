"""A compact live table of a running study, in the study's own terms.

Each report is one log record on this module's logger: a header line with counts,
then one row per trial (running first) with the swept values, the step, the loss,
the candidate-set loss and how many seeds have escaped. The CLI shows it on stdout.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from ray.tune import ProgressReporter
from ray.tune.experiment import Trial

from study.spec import case_of, trial_config
from study.tables import text_table

logger = logging.getLogger(__name__)

_ORDER = {"RUNNING": 0, "ERROR": 1, "TERMINATED": 2, "PAUSED": 3, "PENDING": 4}


class StudyProgress(ProgressReporter):
    """Logs the study table every ``interval_s`` seconds and at the end.

    Args:
        study: the study name, for the header.
        axes: the swept config keys, shown as columns.
        interval_s: seconds between tables.
        max_rows: trials listed at most (running ones first).
    """

    def __init__(
        self, study: str, axes: Sequence[str], interval_s: float = 10.0, max_rows: int = 20
    ) -> None:
        self.study = study
        self.axes = list(axes)
        self.interval_s = interval_s
        self.max_rows = max_rows
        self._start = time.time()
        self._last = 0.0
        self._total: int | None = None

    def setup(
        self,
        start_time: float | None = None,
        total_samples: int | None = None,
        metric: str | None = None,
        mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        self._start = start_time or time.time()
        self._total = total_samples

    def should_report(self, trials: list[Trial], done: bool = False) -> bool:
        return done or time.time() - self._last >= self.interval_s

    def report(self, trials: list[Trial], done: bool, *sys_info: str) -> None:
        self._last = time.time()
        rows = [trial_row(t.trial_id, t.status, t.config, t.last_result) for t in trials]
        logger.info(
            "%s", render(self.study, rows, self.axes, time.time() - self._start, self.max_rows)
        )


def trial_row(
    trial_id: str, ray_status: str, params: Mapping[str, Any], result: Mapping[str, Any] | None
) -> dict[str, Any]:
    """One row of the progress table from a trial's params and last report."""
    result = result or {}
    config = trial_config(params)
    seeds = result.get("seeds") or []
    statuses = [s.get("status") for s in seeds]
    return {
        "trial": trial_id,
        "_ray": ray_status,
        "state": _state(ray_status, statuses, seeds),
        "_case": case_of(params),
        **{f"_{k}": v for k, v in config.items()},
        "step": result.get("step"),
        "loss": result.get("loss"),
        "cand_loss": result.get("candidate_loss"),
        "escaped": f"{result['n_escaped']}/{result['n_seeds']}" if "n_seeds" in result else None,
        "steps/s": result.get("steps_per_s"),
    }


def _state(ray_status: str, statuses: list[Any], seeds: list[Mapping[str, Any]]) -> str:
    if ray_status == "PENDING":
        return "pending"
    if ray_status == "ERROR":
        return "failed"
    if ray_status == "TERMINATED" and statuses:
        kinds = set(statuses)
        return statuses[0] if len(kinds) == 1 else "mixed"
    if any(s.get("status") in ("escaped", "converged") for s in seeds):
        return "escaping"
    if any(s.get("onset_step") is not None for s in seeds):
        return "plateau"
    return "running" if ray_status == "RUNNING" else ray_status.lower()


def render(
    study: str,
    rows: list[dict[str, Any]],
    axes: Sequence[str],
    elapsed_s: float,
    max_rows: int = 20,
) -> str:
    """The progress table as text: a header line, then one line per trial.

    Args:
        study: the study name.
        rows: rows made by :func:`trial_row`.
        axes: swept config keys to show.
        elapsed_s: seconds since the study started.
        max_rows: trials listed at most; running trials come first.

    Returns:
        The table; its first line counts trials by state.
    """
    counts = Counter(r["state"] for r in rows)
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    header = f"[{study}] {_clock(elapsed_s)} | {len(rows)} trials: {summary or 'none yet'}"
    shown = sorted(rows, key=lambda r: (_ORDER.get(r["_ray"], 5), r["trial"]))[:max_rows]
    if not shown:
        return header
    frame = pd.DataFrame(
        [
            {
                "trial": r["trial"],
                "state": r["state"],
                **{a: r.get(f"_{a}") for a in axes},
                **{k: r[k] for k in ("step", "loss", "cand_loss", "escaped", "steps/s")},
            }
            for r in shown
        ]
    )
    text = text_table(frame, digits=4, missing="-")
    hidden = len(rows) - len(shown)
    more = f"\n... {hidden} more trials" if hidden else ""
    return f"{header}\n{text}{more}"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
