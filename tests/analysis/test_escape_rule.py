"""The escape rule shared by the online stopper and the analysis."""

import math

import pytest

from analysis.escape import (
    CENSORED,
    CONVERGED,
    DIVERGED,
    ESCAPED,
    EscapeRule,
    EscapeTracker,
    summarize_curve,
)

LOG_K = math.log(10)


def _curve(values: list[float], every: int = 100) -> tuple[list[int], list[float]]:
    return [i * every for i in range(len(values))], values


def test_confirmed_escape_reports_first_step_of_the_run() -> None:
    high, low = LOG_K, 0.2 * LOG_K
    steps, values = _curve([3.5, high, high, high, low, low, low, low])
    summary = summarize_curve(steps, values, LOG_K, EscapeRule(confirm=3))
    assert summary.status == ESCAPED
    assert summary.onset_step == 100
    assert summary.escape_step == 400
    assert summary.waiting_time == 300
    assert summary.plateau_height == pytest.approx(high)


def test_single_noisy_crossing_is_not_an_escape() -> None:
    high, low = LOG_K, 0.3 * LOG_K
    steps, values = _curve([high, low, high, high, low, low, high])
    summary = summarize_curve(steps, values, LOG_K, EscapeRule(confirm=3))
    assert summary.status == CENSORED
    assert summary.escape_step is None
    assert summary.last_step == 600


def test_non_finite_loss_is_diverged_at_its_step() -> None:
    steps, values = _curve([LOG_K, LOG_K, float("nan"), 0.0, 0.0, 0.0])
    summary = summarize_curve(steps, values, LOG_K)
    assert summary.status == DIVERGED
    assert summary.diverged_step == 200


def test_converge_mode_watches_excess_over_floor() -> None:
    floor = math.log(5)
    steps, values = _curve([4.0, 3.0, floor + 0.01, floor + 0.02, floor + 0.01])
    summary = summarize_curve(
        steps, values, math.log(5), EscapeRule(mode="converge", confirm=3), floor=floor
    )
    assert summary.status == CONVERGED
    assert summary.converged_step == 200


def test_tracker_resolves_only_after_the_tail() -> None:
    tracker = EscapeTracker(EscapeRule(confirm=2, tail=2), LOG_K)
    for step, value in enumerate([LOG_K, 0.1, 0.1]):
        tracker.update(step, value)
    assert tracker.escape_step == 1
    assert not tracker.resolved
    tracker.update(3, 0.1)
    tracker.update(4, 0.1)
    assert tracker.resolved


def test_transition_width_spans_ninety_to_ten_percent() -> None:
    steps, values = _curve([LOG_K, 0.95 * LOG_K, 0.5 * LOG_K, 0.05 * LOG_K, 0.01, 0.01])
    summary = summarize_curve(steps, values, LOG_K)
    assert summary.transition_width == 200


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"fraction": 0.0}, "fraction"),
        ({"confirm": 0}, "confirm"),
        ({"plateau_tolerance": 0}, "plateau_tolerance"),
        ({"tail": -1}, "tail"),
        ({"mode": "sideways"}, "mode"),
        ({"converge_tol": 0}, "converge_tol"),
    ],
)
def test_bad_rule_is_refused(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        EscapeRule(**kwargs)


LOG_V = math.log(36)  # first-token loss of a model that has not learned B's first symbols


def test_marginal_onset_waits_for_the_first_token_loss_to_reach_log_k() -> None:
    # an untrained model: candidate-set loss already log K, first-token loss log 36
    high, low = LOG_K, 0.2 * LOG_K
    steps, values = _curve([high, high, high, high, low, low, low])
    marginals = [LOG_V, 0.9 * LOG_V, LOG_K, LOG_K, low, low, low]
    summary = summarize_curve(steps, values, LOG_K, EscapeRule(confirm=3), marginals=marginals)
    assert summary.onset_step == 200
    assert summary.escape_step == 400
    assert summary.waiting_time == 200
    watched = summarize_curve(steps, values, LOG_K, EscapeRule(confirm=3, onset="watched"))
    assert watched.onset_step == 0
    assert watched.waiting_time == 400


def test_a_run_that_escapes_without_learning_the_marginal_has_no_plateau() -> None:
    high, low = LOG_K, 0.2 * LOG_K
    steps, values = _curve([high, high, 0.8 * high, low, low, low])
    marginals = [LOG_V, 3.0, 2.9, 1.0, 0.5, 0.2]
    summary = summarize_curve(steps, values, LOG_K, EscapeRule(confirm=3), marginals=marginals)
    assert summary.status == ESCAPED
    assert summary.escape_step == 300
    assert summary.onset_step is None
    assert summary.waiting_time is None
    assert summary.plateau_height is None


def test_evaluations_without_a_first_token_loss_fall_back_to_the_watched_loss() -> None:
    steps, values = _curve([LOG_K, LOG_K, LOG_K])
    summary = summarize_curve(steps, values, LOG_K, marginals=[None, float("nan"), None])
    assert summary.onset_step == 0


def test_marginals_must_match_the_steps() -> None:
    with pytest.raises(ValueError, match="marginals"):
        summarize_curve([0, 100], [LOG_K, LOG_K], LOG_K, marginals=[LOG_K])


def test_an_unknown_onset_is_refused() -> None:
    with pytest.raises(ValueError, match="onset='first'"):
        EscapeRule(onset="first")
