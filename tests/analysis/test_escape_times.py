"""Escape times per trial and seed, recomputed from the curves by the shared rule."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.escape import EscapeRule, summarize_curve
from analysis.escape_times import escape_table, rise_lead
from analysis.simulate import simulate_routing_study

LOG_K = math.log(10)


def _curve(
    values: list[float], trial_id: str = "t0", seed: int = 0, every: int = 100
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "trial_id": trial_id,
            "seed": seed,
            "step": [i * every for i in range(len(values))],
            "candidate_loss": values,
            "loss": values,
        }
    )


def _trials(**columns: object) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "trial_id": ["t0"],
            "seed": [0],
            "task": ["disambiguation"],
            "K": [10],
            "floor": [0.0],
            "status": ["escaped"],
            **columns,
        }
    )


def test_rows_agree_with_the_escape_rule_on_each_curve() -> None:
    high, low = LOG_K, 0.2 * LOG_K
    values = [3.5, high, high, high, low, low, low, 0.1 * LOG_K * 0.5]
    row = escape_table(_curve(values), _trials()).iloc[0]
    summary = summarize_curve([i * 100 for i in range(len(values))], values, LOG_K)
    assert row["status"] == "escaped" == summary.status
    assert row["plateau_onset_step"] == summary.onset_step == 100
    assert row["escape_step"] == summary.escape_step == 400
    assert row["waiting_time"] == 300
    assert row["plateau_loss"] == pytest.approx(high)
    assert row["plateau_height"] == pytest.approx(1.0)
    assert row["transition_width"] == summary.transition_width
    assert row["steps"] == 700


def test_a_step_reported_twice_keeps_the_last_report() -> None:
    # the first attempt reported an escape at 300..500; its retry re-reported those steps
    first = _curve([3.5, LOG_K, LOG_K, 0.1, 0.1, 0.1])
    retry = _curve([3.5, LOG_K, LOG_K, LOG_K, LOG_K, LOG_K]).iloc[3:]
    assert escape_table(first, _trials()).iloc[0]["status"] == "escaped"
    row = escape_table(pd.concat([first, retry]), _trials()).iloc[0]
    assert row["status"] == "censored"
    assert row["steps"] == 500


def test_trial_rule_columns_override_the_default_rule() -> None:
    values = [3.5, LOG_K, LOG_K, 0.2, 0.2, LOG_K, LOG_K]
    default = escape_table(_curve(values), _trials()).iloc[0]
    lenient = escape_table(_curve(values), _trials(escape_confirm=[2])).iloc[0]
    assert default["status"] == "censored"
    assert lenient["status"] == "escaped" and lenient["escape_step"] == 300


def test_an_explicit_rule_applies_to_every_trial() -> None:
    values = [3.5, LOG_K, 0.4 * LOG_K, 0.4 * LOG_K, 0.4 * LOG_K]
    row = escape_table(_curve(values), _trials(), EscapeRule(fraction=0.3)).iloc[0]
    assert row["status"] == "censored"


def test_mapping_curves_converge_to_the_trial_floor() -> None:
    floor = math.log(5)
    values = [4.0, 3.0, floor + 0.01, floor + 0.02, floor + 0.01, floor + 0.01]
    trials = _trials(task=["mapping"], K=[5], floor=[floor])
    row = escape_table(_curve(values), trials).iloc[0]
    assert row["status"] == "converged"
    assert row["converged_step"] == 200
    assert pd.isna(row["escape_step"])


def test_mapping_trial_without_floor_is_refused() -> None:
    trials = _trials(task=["mapping"], floor=[np.nan])
    with pytest.raises(ValueError, match="floor of trial_id='t0' is missing"):
        escape_table(_curve([1.0, 0.5]), trials)


@pytest.mark.parametrize("status", ["failed", "running"])
def test_unresolved_curve_keeps_the_trial_status(status: str) -> None:
    row = escape_table(_curve([3.5, LOG_K, LOG_K]), _trials(status=[status])).iloc[0]
    assert row["status"] == status


def test_diverged_curve_is_diverged() -> None:
    row = escape_table(_curve([3.5, LOG_K, float("nan")]), _trials()).iloc[0]
    assert row["status"] == "diverged"
    assert row["diverged_step"] == 200


def test_seeds_of_one_trial_share_its_config_row() -> None:
    curves = pd.concat([_curve([3.5, LOG_K, 0.1, 0.1, 0.1], seed=s) for s in (0, 1, 2)])
    trials = _trials().drop(columns="seed")
    table = escape_table(curves, trials)
    assert list(table["seed"]) == [0, 1, 2]
    assert (table["escape_step"] == 200).all()


def test_curve_of_an_unknown_trial_is_refused() -> None:
    with pytest.raises(ValueError, match="trial_id='t9' is not allowed"):
        escape_table(_curve([1.0], trial_id="t9"), _trials())


def test_missing_columns_are_named() -> None:
    with pytest.raises(ValueError, match="missing K"):
        escape_table(_curve([1.0]), _trials().drop(columns="K"))


def test_step_columns_are_nullable_integers() -> None:
    table = escape_table(_curve([3.5, LOG_K, LOG_K]), _trials())
    assert str(table["escape_step"].dtype) == "Int64"
    assert table["escape_step"].isna().all()


def test_routing_lead_is_measured_on_the_waiting_time_clock() -> None:
    trials, curves = simulate_routing_study(
        trials=1, seeds=1, lead=0.5, lead_sd=0.0, waiting_sd=0.0, eval_every=10, noise=0.0, rng=0
    )
    assert trials["routing_lead"].iloc[0] == pytest.approx(0.5, abs=0.01)
    assert trials["z_shuffle_lead"].iloc[0] == pytest.approx(0.3, abs=0.01)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0, 0, 0, 0, 1, 1, 1, 1, 1], 0.5),  # half-way at step 4 of onset 2 .. escape 6
        ([0, 0, 0, 0, 0, 0, 1, 1, 1], 0.0),  # rises with the escape
        ([0, 0, 1, 1, 1, 1, 1, 1, 1], 1.0),  # already up at the onset
        ([1, 1, 1, 1, 1, 1, 1, 1, 1], None),  # no rise
        ([1, 1, 1, 1, 0, 0, 0, 0, 0], None),  # falls
    ],
)
def test_rise_lead(values: list[float], expected: float | None) -> None:
    lead = rise_lead(range(9), values, onset_step=2, escape_step=6)
    assert lead == (None if expected is None else pytest.approx(expected))


def test_rise_lead_needs_an_escape_after_the_onset() -> None:
    assert rise_lead(range(5), [0, 0, 1, 1, 1], onset_step=None, escape_step=3) is None
    assert rise_lead(range(5), [0, 0, 1, 1, 1], onset_step=3, escape_step=3) is None


@pytest.mark.parametrize(
    ("columns", "onset"),
    [({}, 200), ({"plateau_onset": "watched"}, 0), ({"distinct_first": False}, 0)],
)
def test_the_plateau_onset_reads_the_first_token_loss_unless_the_trial_says_otherwise(
    columns: dict[str, object], onset: int
) -> None:
    high, low = LOG_K, 0.2 * LOG_K
    curve = _curve([high, high, high, high, low, low, low])
    curve["first_token_loss"] = [math.log(36), 3.0, LOG_K, LOG_K, low, low, low]
    row = escape_table(curve, _trials(**columns)).iloc[0]
    assert row["plateau_onset_step"] == onset
    assert row["escape_step"] == 400
    assert row["waiting_time"] == 400 - onset
