"""Escape-aware early stopping for Ray Tune.

The stopper runs in the driver and applies the one escape rule
(:mod:`analysis.escape`) to the per-seed curves that trials report: a trial stops
once every seed is resolved (escaped and its tail, converged, diverged) or when its
report says the loop is done. Trials that reach ``max_steps`` end by themselves and
are censored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ray import tune

from analysis.escape import EscapeRule, EscapeTracker, finite_or_none
from study.spec import trial_config
from trainables.config import (
    MARGINAL_METRIC,
    ConfigError,
    TrialConfig,
    escape_rule,
    resolve,
    watched_metric,
)

logger = logging.getLogger(__name__)


@dataclass
class TrialWatch:
    """The escape trackers of one trial, one per seed, fed report by report.

    Reports may repeat steps after a retry from a checkpoint; the trackers are then
    rebuilt from the evaluations before the repeated step.
    """

    rule: EscapeRule
    log_k: float
    metric: str
    stop_on_escape: bool = True
    # per seed: (step, watched loss, floor, first-token loss or None)
    history: dict[int, list[tuple[int, float, float, float | None]]] = field(default_factory=dict)
    trackers: dict[int, EscapeTracker] = field(default_factory=dict)
    last_step: int = -1

    @classmethod
    def for_config(cls, cfg: TrialConfig) -> TrialWatch:
        return cls(escape_rule(cfg), cfg.log_k, watched_metric(cfg), cfg.stop_on_escape)

    @property
    def resolved(self) -> bool:
        """True once every seed seen so far is resolved (False before any report)."""
        return bool(self.trackers) and all(t.resolved for t in self.trackers.values())

    def update(self, step: int, seeds: list[Mapping[str, Any]]) -> None:
        """Feeds one report's per-seed metrics."""
        if step <= self.last_step:
            self._rewind(step)
        self.last_step = step
        for i, seed in enumerate(seeds):
            value = seed.get(self.metric)
            if value is None:
                continue
            floor = float(seed.get("floor") or 0.0)
            marginal = finite_or_none(seed.get(MARGINAL_METRIC))
            self.history.setdefault(i, []).append((step, float(value), floor, marginal))
            self._tracker(i, floor).update(step, float(value), marginal)

    def _tracker(self, index: int, floor: float) -> EscapeTracker:
        if index not in self.trackers:
            self.trackers[index] = EscapeTracker(self.rule, self.log_k, floor)
        return self.trackers[index]

    def _rewind(self, step: int) -> None:
        history, self.history, self.trackers = self.history, {}, {}
        for index, points in history.items():
            kept = [p for p in points if p[0] < step]
            self.history[index] = kept
            for s, value, floor, marginal in kept:
                self._tracker(index, floor).update(s, value, marginal)


class EscapeStopper(tune.Stopper):
    """Stops a trial when its report says done or when every seed is resolved.

    Trials whose config sets ``stop_on_escape: false`` run to their budget.
    """

    def __init__(self) -> None:
        self._watches: dict[str, TrialWatch | None] = {}

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if result.get("done"):
            self._watches.pop(trial_id, None)
            return True
        watch = self._watch(trial_id, result.get("config") or {})
        if watch is None or "step" not in result:
            return False
        watch.update(int(result["step"]), result.get("seeds") or [])
        if watch.stop_on_escape and watch.resolved:
            logger.debug("trial %s resolved at step %s", trial_id, result["step"])
            self._watches.pop(trial_id, None)
            return True
        return False

    def stop_all(self) -> bool:
        return False

    def _watch(self, trial_id: str, params: Mapping[str, Any]) -> TrialWatch | None:
        if trial_id not in self._watches:
            try:
                cfg = resolve(trial_config(params))
            except ConfigError as err:  # the trial itself fails with this message
                logger.warning("trial %s: %s", trial_id, err)
                self._watches[trial_id] = None
                return None
            self._watches[trial_id] = TrialWatch.for_config(cfg)
        return self._watches[trial_id]
