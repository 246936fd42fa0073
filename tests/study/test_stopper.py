"""The escape stopper: the one escape rule, applied in the driver to each trial's reports."""

from __future__ import annotations

import math
from typing import Any

import pytest

from study.spec import VARIANT_KEY
from study.stopper import EscapeStopper, TrialWatch, escape_rule, watched_metric
from trainables.config import resolve

LOG4 = math.log(4)


def params(**over: Any) -> dict[str, Any]:
    base = {
        "task": "disambiguation",
        "K": 4,
        "D": 400,
        "batch_size": 32,
        "size": "tiny",
        "max_steps": 1000,
        "eval_every": 50,
        "escape_confirm": 2,
    }
    return {**base, **over}


def report(
    step: int,
    values: list[float],
    config: dict[str, Any],
    key: str = "candidate_loss",
    floor: float = 0.0,
    done: bool = False,
) -> dict[str, Any]:
    return {
        "step": step,
        "done": done,
        "config": config,
        "seeds": [{key: v, "floor": floor} for v in values],
    }


def feed(
    stopper: EscapeStopper,
    trial: str,
    config: dict[str, Any],
    curve: list[tuple[int, list[float]]],
    **kw: Any,
) -> int | None:
    """The step at which the stopper stops the trial (None if it never does)."""
    for step, values in curve:
        if stopper(trial, report(step, values, config, **kw)):
            return step
    return None


PLATEAU_THEN_ESCAPE = [
    (0, [LOG4, LOG4]),
    (50, [LOG4, LOG4]),
    (100, [0.5, LOG4]),
    (150, [0.3, 0.6]),
    (200, [0.2, 0.4]),
    (250, [0.1, 0.3]),
]


def test_a_trial_stops_once_every_seed_has_confirmed_its_escape() -> None:
    stopper = EscapeStopper()
    # seed 0 escapes at 100 (confirmed at 150), seed 1 at 150 (confirmed at 200)
    assert feed(stopper, "t", params(), PLATEAU_THEN_ESCAPE) == 200
    assert stopper.stop_all() is False


def test_the_tail_keeps_a_trial_running_after_the_escape() -> None:
    stopper = EscapeStopper()
    assert feed(stopper, "t", params(escape_tail=1), PLATEAU_THEN_ESCAPE) == 250


def test_stop_on_escape_false_runs_to_the_budget() -> None:
    stopper = EscapeStopper()
    assert feed(stopper, "t", params(stop_on_escape=False), PLATEAU_THEN_ESCAPE) is None


def test_a_single_dip_below_the_threshold_does_not_stop() -> None:
    stopper = EscapeStopper()
    curve = [(0, [LOG4]), (50, [0.2]), (100, [LOG4]), (150, [0.2]), (200, [LOG4])]
    assert feed(stopper, "t", params(), curve) is None


def test_a_report_that_says_done_stops_the_trial() -> None:
    stopper = EscapeStopper()
    assert stopper("t", report(1000, [LOG4], params(), done=True)) is True


def test_a_non_finite_loss_resolves_the_seed_as_diverged() -> None:
    stopper = EscapeStopper()
    assert feed(stopper, "t", params(), [(0, [LOG4]), (50, [math.nan])]) == 50


def test_the_mapping_task_stops_when_the_loss_reaches_its_floor() -> None:
    config = params(task="mapping", direction="inverse", K=2, D=200)
    cfg = resolve(config)
    assert watched_metric(cfg) == "loss" and escape_rule(cfg).mode == "converge"
    stopper = EscapeStopper()
    curve = [(0, [9.0]), (50, [2.0]), (100, [0.72]), (150, [0.70])]
    assert feed(stopper, "t", config, curve, key="loss", floor=math.log(2)) == 150


def test_a_grid_point_is_read_from_the_variant() -> None:
    # the variant turns the default (escape) into stop_on_escape: false
    config = {**params(), VARIANT_KEY: {"case": "x", "stop_on_escape": False}}
    assert feed(EscapeStopper(), "t", config, PLATEAU_THEN_ESCAPE) is None


def test_trials_are_tracked_separately() -> None:
    stopper = EscapeStopper()
    for step, values in PLATEAU_THEN_ESCAPE[:3]:
        assert not stopper("a", report(step, values, params()))
        assert not stopper("b", report(step, [LOG4, LOG4], params()))
    assert stopper("a", report(150, [0.3, 0.6], params())) is False
    assert stopper("a", report(200, [0.2, 0.4], params())) is True
    assert stopper("b", report(200, [LOG4, LOG4], params())) is False


def test_a_retry_that_reports_steps_again_rewinds_the_trackers() -> None:
    watch = TrialWatch.for_config(resolve(params()))
    for step, values in [(0, [LOG4]), (50, [0.2]), (100, [0.2])]:
        watch.update(step, [{"candidate_loss": v} for v in values])
    assert watch.trackers[0].escape_step == 50
    # the retry resumes from a checkpoint at step 50 and the run goes another way
    for step, values in [(50, [LOG4]), (100, [0.2]), (150, [0.2])]:
        watch.update(step, [{"candidate_loss": v} for v in values])
    assert watch.trackers[0].escape_step == 100
    assert [point[0] for point in watch.history[0]] == [0, 50, 100, 150]


def test_an_invalid_trial_config_is_left_to_the_trial_to_fail() -> None:
    stopper = EscapeStopper()
    assert stopper("t", report(0, [LOG4], params(lr=-1.0))) is False


@pytest.mark.parametrize("metrics", [{"step": 0}, {"config": params()}])
def test_reports_without_per_seed_metrics_never_stop(metrics: dict[str, Any]) -> None:
    stopper = EscapeStopper()
    assert stopper("t", {"config": params(), **metrics}) is False
