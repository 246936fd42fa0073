"""Ray metrics of a running study, for the dashboard and Prometheus.

Exported from the driver (with Ray's dashboard extra installed) on the metrics port of
the driver's node, as Prometheus text; Ray prefixes the names with ``ray_``:

- ``ray_phasetune_trials{study, state}``: trials by state (pending, running, plateau,
  escaping, escaped, converged, censored, diverged, mixed, failed);
- ``ray_phasetune_trial_steps_per_second{study, trial}``: training speed of each trial;
- ``ray_phasetune_trial_loss{study, trial}``: the last reported loss of each trial.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from ray import tune
from ray.tune.experiment import Trial

from study.progress import trial_row

logger = logging.getLogger(__name__)

STATES = ("pending", "running", "plateau", "escaping", "escaped", "converged", "censored",
          "diverged", "mixed", "failed")  # fmt: skip


class StudyMetrics(tune.Callback):
    """Publishes the study's gauges whenever a trial starts, reports or ends.

    Args:
        study: the study name, the ``study`` tag of every gauge.
    """

    def __init__(self, study: str) -> None:
        self.study = study
        self._gauges: dict[str, Any] | None = None
        self._ended: dict[str, str] = {}  # trial id -> TERMINATED or ERROR

    def __getstate__(self) -> dict[str, Any]:
        # gauges hold handles of the running Ray session; they are rebuilt on resume
        return {"study": self.study, "_gauges": None, "_ended": {}}

    def on_trial_start(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self._ended.pop(trial.trial_id, None)
        self._publish(trials)

    def on_trial_result(
        self,
        iteration: int,
        trials: list[Trial],
        trial: Trial,
        result: dict[str, Any],
        **info: Any,
    ) -> None:
        gauges = self._ensure()
        if gauges is None:
            return
        tags = {"study": self.study, "trial": trial.trial_id}
        for key, name in (("steps_per_s", "steps_per_s"), ("loss", "loss")):
            value = result.get(key)
            if isinstance(value, int | float):
                gauges[name].set(float(value), tags=tags)
        self._publish(trials)

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        # Ray updates the trial's status only after its callbacks have run
        self._ended[trial.trial_id] = Trial.TERMINATED
        self._publish(trials)

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self._ended[trial.trial_id] = Trial.ERROR
        self._publish(trials)

    def on_trial_recover(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self._ended.pop(trial.trial_id, None)
        self._publish(trials)

    def _publish(self, trials: list[Trial]) -> None:
        gauges = self._ensure()
        if gauges is None:
            return
        counts = Counter(
            trial_row(t.trial_id, self._ended.get(t.trial_id, t.status), t.config, t.last_result)[
                "state"
            ]
            for t in trials
        )
        for state in STATES:
            gauges["trials"].set(counts.get(state, 0), tags={"study": self.study, "state": state})

    def _ensure(self) -> dict[str, Any] | None:
        if self._gauges is None:
            try:
                from ray.util.metrics import Gauge

                self._gauges = {
                    "trials": Gauge(
                        "phasetune_trials",
                        description="Trials of a study by state",
                        tag_keys=("study", "state"),
                    ),
                    "steps_per_s": Gauge(
                        "phasetune_trial_steps_per_second",
                        description="Optimizer steps per second of a trial",
                        tag_keys=("study", "trial"),
                    ),
                    "loss": Gauge(
                        "phasetune_trial_loss",
                        description="Last reported loss of a trial",
                        tag_keys=("study", "trial"),
                    ),
                }
            except Exception as err:  # metrics are a convenience; the study goes on without
                logger.warning(
                    "Ray metrics are unavailable (%s); the study runs without them", err
                )
                self._gauges = {}
        return self._gauges or None
