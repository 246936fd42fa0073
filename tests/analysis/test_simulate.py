"""Simulated study tables: the real tables' columns, known laws, censoring at the budget."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.simulate import (
    CURVE_COLUMNS,
    TRIAL_COLUMNS,
    simulate_capacity_study,
    simulate_duration_study,
    simulate_gap_study,
    simulate_noise_study,
    simulate_routing_study,
    simulate_study,
)

SIMULATORS = [
    simulate_noise_study,
    simulate_duration_study,
    simulate_capacity_study,
    simulate_gap_study,
    lambda rng: simulate_routing_study(rng=rng)[0],
]


@pytest.mark.parametrize("simulate", SIMULATORS)
def test_tables_have_the_trials_columns_and_one_row_per_trial_and_seed(simulate) -> None:
    trials = simulate(rng=0)
    assert set(TRIAL_COLUMNS) <= set(trials.columns)
    assert not trials.duplicated(["trial_id", "seed"]).any()
    assert trials["status"].isin(["escaped", "censored", "converged"]).all()


@pytest.mark.parametrize("simulate", SIMULATORS)
def test_same_seed_same_table(simulate) -> None:
    pd.testing.assert_frame_equal(simulate(rng=3), simulate(rng=3))


def test_escapes_past_the_budget_are_censored_at_the_budget() -> None:
    trials = simulate_noise_study(budget=1500, rng=0)
    censored = trials[trials["status"] == "censored"]
    escaped = trials[trials["status"] == "escaped"]
    assert len(censored) and len(escaped)
    assert (censored["steps"] == 1500).all() and censored["escape_step"].isna().all()
    assert (escaped["escape_step"] <= 1500).all()


def test_unknown_distribution_is_refused() -> None:
    with pytest.raises(ValueError, match="distribution='gamma' is not allowed"):
        simulate_noise_study(distribution="gamma")


def test_full_study_links_curves_to_trials() -> None:
    trials, curves = simulate_study(0)
    assert list(curves.columns) == list(CURVE_COLUMNS)
    keys = set(zip(trials["trial_id"], trials["seed"], strict=True))
    assert set(zip(curves["trial_id"], curves["seed"], strict=True)) <= keys
    assert not trials.duplicated(["trial_id", "seed"]).any()
    assert (trials.groupby("trial_id")["task"].nunique() == 1).all()  # no id shared by parts
