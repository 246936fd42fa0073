"""The one definition of plateau, escape and convergence.

Both the online stopper (inside a trial) and the offline analysis use this module, so
an escape step means the same thing everywhere.

- plateau: the watched loss lies within ``plateau_tolerance * log K`` of ``log K``.
  With ``onset="marginal"`` (the disambiguation task's default) the first-target-token
  loss over the whole vocabulary must lie there too: the model has learned which K
  first symbols belong to B, the marginal P(A | B), and does not yet use z. An
  untrained model's candidate-set loss is already log K, so the watched loss alone
  would put the onset at step 0. Evaluations without a first-token loss fall back to
  the watched loss.
- plateau onset: the first evaluation on the plateau, before the escape; a run that
  escapes without one has no plateau (no onset, no waiting time, no plateau height).
- escape: the watched loss is below ``fraction * log K`` for ``confirm`` consecutive
  evaluations; the escape step is the first evaluation of that run.
- convergence (tasks without a plateau to escape, such as the mapping task): the
  excess over the floor is at most ``converge_tol`` for ``confirm`` consecutive
  evaluations.
- diverged: the watched loss is not finite.

Example::

    tracker = EscapeTracker(EscapeRule(), log_k=math.log(10))
    for step, loss in curve:
        tracker.update(step, loss)
        if tracker.resolved:
            break
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

ESCAPED = "escaped"
CENSORED = "censored"
CONVERGED = "converged"
DIVERGED = "diverged"
FAILED = "failed"
RUNNING = "running"
STATUSES = (ESCAPED, CENSORED, CONVERGED, DIVERGED, FAILED, RUNNING)
ONSETS = ("marginal", "watched")


@dataclass(frozen=True)
class EscapeRule:
    """Thresholds of the escape rule.

    Args:
        fraction: escape threshold as a fraction of log K (0 < fraction < 1).
        confirm: consecutive evaluations below the threshold that confirm an escape.
        plateau_tolerance: relative distance to log K that counts as on the plateau.
        tail: evaluations kept after a confirmed escape (to measure its sharpness).
        mode: ``"escape"`` (leave the log K plateau) or ``"converge"`` (reach the floor).
        converge_tol: excess over the floor, in nats, that counts as converged.
        onset: ``"marginal"`` (the plateau also needs the first-token loss at log K)
            or ``"watched"`` (the watched loss alone).
    """

    fraction: float = 0.5
    confirm: int = 3
    plateau_tolerance: float = 0.05
    tail: int = 0
    mode: str = "escape"
    converge_tol: float = 0.05
    onset: str = "marginal"

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(
                f"escape fraction={self.fraction!r} is not allowed: must be in (0, 1)"
            )
        if self.confirm < 1:
            raise ValueError(f"escape confirm={self.confirm!r} is not allowed: must be >= 1")
        if self.plateau_tolerance <= 0:
            raise ValueError(
                f"plateau_tolerance={self.plateau_tolerance!r} is not allowed: must be > 0"
            )
        if self.tail < 0:
            raise ValueError(f"escape tail={self.tail!r} is not allowed: must be >= 0")
        if self.mode not in ("escape", "converge"):
            raise ValueError(
                f"escape mode={self.mode!r} is not allowed: must be 'escape' or 'converge'"
            )
        if self.converge_tol <= 0:
            raise ValueError(f"converge_tol={self.converge_tol!r} is not allowed: must be > 0")
        if self.onset not in ONSETS:
            raise ValueError(
                f"plateau onset={self.onset!r} is not allowed: must be one of {ONSETS}"
            )


@dataclass
class EscapeTracker:
    """Follows one seed's curve, evaluation by evaluation.

    ``value`` is the watched loss: the candidate-set loss for the disambiguation task
    (plateau at log K), the reported loss otherwise. ``floor`` is that loss's floor.
    ``marginal`` is the first-target-token loss, when recorded (see ``onset``).
    """

    rule: EscapeRule
    log_k: float
    floor: float = 0.0
    onset_step: int | None = None
    escape_step: int | None = None
    diverged_step: int | None = None
    converged_step: int | None = None
    _run_start: int | None = None
    _run_length: int = 0
    _after_confirm: int = 0
    _n: int = field(default=0, repr=False)

    @property
    def threshold(self) -> float:
        if self.rule.mode == "converge":
            return self.floor + self.rule.converge_tol
        return self.rule.fraction * self.log_k

    @property
    def confirmed(self) -> bool:
        return self.escape_step is not None or self.converged_step is not None

    @property
    def resolved(self) -> bool:
        """True once nothing more is to be learned from this seed."""
        if self.diverged_step is not None:
            return True
        return self.confirmed and self._after_confirm >= self.rule.tail

    @property
    def status(self) -> str:
        """Status if the run ended now (budget reached counts as censored)."""
        if self.diverged_step is not None:
            return DIVERGED
        if self.escape_step is not None:
            return ESCAPED
        if self.converged_step is not None:
            return CONVERGED
        return CENSORED

    def update(self, step: int, value: float, marginal: float | None = None) -> None:
        """Feeds one evaluation; evaluations must come in increasing step order."""
        if self.diverged_step is not None:
            return
        self._n += 1
        if not math.isfinite(value):
            self.diverged_step = step
            return
        if self.confirmed:
            self._after_confirm += 1
            return
        if self.onset_step is None and self._on_plateau(value, marginal):
            self.onset_step = step
        if value < self.threshold:
            if self._run_start is None:
                self._run_start = step
            self._run_length += 1
        else:
            self._run_start, self._run_length = None, 0
        if self._run_length >= self.rule.confirm:
            if self.rule.mode == "converge":
                self.converged_step = self._run_start
            else:
                self.escape_step = self._run_start

    def _on_plateau(self, value: float, marginal: float | None) -> bool:
        if self.log_k <= 0:
            return False
        near = self.rule.plateau_tolerance * self.log_k
        if abs(value - self.log_k) > near:
            return False
        if self.rule.onset == "watched" or marginal is None or not math.isfinite(marginal):
            return True
        return abs(marginal - self.log_k) <= near


@dataclass(frozen=True)
class EscapeSummary:
    """What the escape rule makes of one complete curve."""

    status: str
    onset_step: int | None
    escape_step: int | None
    converged_step: int | None
    diverged_step: int | None
    waiting_time: int | None
    transition_width: int | None
    plateau_height: float | None
    last_step: int


def summarize_curve(
    steps: Sequence[int],
    values: Sequence[float],
    log_k: float,
    rule: EscapeRule | None = None,
    floor: float = 0.0,
    marginals: Sequence[float | None] | None = None,
) -> EscapeSummary:
    """Applies the escape rule to a whole curve.

    Args:
        steps: evaluation steps, increasing.
        values: the watched loss at each step.
        log_k: the plateau height the rule refers to (nats).
        rule: thresholds; the default rule when None.
        floor: floor of the watched loss (used in ``converge`` mode).
        marginals: the first-target-token loss at each step, for the ``marginal``
            plateau onset; None when not recorded.

    Returns:
        The status a run ending at the last step would have, onset, escape step,
        waiting time (escape - onset), transition width (steps from the last
        evaluation above 0.9 log K to the first below 0.1 log K) and plateau height
        (median watched loss from onset to escape, or to the end when censored).
    """
    rule = rule or EscapeRule()
    if len(steps) != len(values):
        raise ValueError(f"steps and values differ in length: {len(steps)} != {len(values)}")
    if marginals is not None and len(marginals) != len(steps):
        raise ValueError(f"steps and marginals differ in length: {len(steps)} != {len(marginals)}")
    tracker = EscapeTracker(rule, log_k, floor)
    for i, (step, value) in enumerate(zip(steps, values, strict=True)):
        marginal = None if marginals is None or marginals[i] is None else float(marginals[i])
        tracker.update(int(step), float(value), marginal)
    waiting = None
    if tracker.escape_step is not None and tracker.onset_step is not None:
        waiting = tracker.escape_step - tracker.onset_step
    return EscapeSummary(
        status=tracker.status,
        onset_step=tracker.onset_step,
        escape_step=tracker.escape_step,
        converged_step=tracker.converged_step,
        diverged_step=tracker.diverged_step,
        waiting_time=waiting,
        transition_width=_transition_width(steps, values, log_k),
        plateau_height=_plateau_height(steps, values, tracker),
        last_step=int(steps[-1]) if len(steps) else 0,
    )


def _transition_width(steps: Sequence[int], values: Sequence[float], log_k: float) -> int | None:
    if log_k <= 0:
        return None
    first_low = next((i for i, v in enumerate(values) if v < 0.1 * log_k), None)
    if first_low is None:
        return None
    high = [i for i in range(first_low) if values[i] > 0.9 * log_k]
    if not high:
        return None
    return int(steps[first_low]) - int(steps[high[-1]])


def _plateau_height(
    steps: Sequence[int], values: Sequence[float], tracker: EscapeTracker
) -> float | None:
    if tracker.onset_step is None:
        return None
    end = tracker.escape_step if tracker.escape_step is not None else math.inf
    window = sorted(v for s, v in zip(steps, values, strict=True) if tracker.onset_step <= s < end)
    finite = [v for v in window if math.isfinite(v)]
    if not finite:
        return None
    mid = len(finite) // 2
    if len(finite) % 2:
        return finite[mid]
    return 0.5 * (finite[mid - 1] + finite[mid])


def finite_or_none(value: Any) -> float | None:
    """A finite float, or None for a missing, non-numeric or non-finite value."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def all_resolved(trackers: Iterable[EscapeTracker]) -> bool:
    """True when every seed has escaped (and its tail), converged or diverged."""
    return all(t.resolved for t in trackers)
