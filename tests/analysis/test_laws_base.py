"""What the law fitters share: censored escape times, held-fixed slices, estimates, JSON."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from lifelines import LogNormalAFTFitter, WeibullAFTFitter

from analysis.laws import Estimate, FitError, FitWarning, NoiseStabilizationFitter
from analysis.laws._aft import fit_aft
from analysis.laws._base import hold_fixed, survival_data, to_plain
from analysis.simulate import simulate_noise_study


def _rows(statuses: list[str]) -> pd.DataFrame:
    n = len(statuses)
    return pd.DataFrame(
        {
            "status": statuses,
            "escape_step": [500.0 if s == "escaped" else np.nan for s in statuses],
            "steps": [600] * n,
        }
    )


def test_escaped_rows_are_events_and_the_rest_censored_at_their_last_step() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        data = survival_data(
            _rows(["escaped", "censored", "diverged", "failed", "running"]), "law"
        )
    assert list(data.frame["event"]) == [True, False, False, False, False]
    assert list(data.frame["duration"]) == [500.0, 600.0, 600.0, 600.0, 600.0]
    assert data.n_censored == 4


def test_unusual_statuses_are_named_in_a_warning() -> None:
    with pytest.warns(FitWarning, match="'failed': 1"):
        survival_data(_rows(["escaped", "failed"]), "law")


def test_rows_without_a_time_are_left_out_with_a_warning() -> None:
    rows = _rows(["escaped", "censored", "converged"])
    rows.loc[1, "steps"] = np.nan
    with pytest.warns(FitWarning, match="2 rows have no escape step"):
        data = survival_data(rows, "law")
    assert len(data.frame) == 1


def test_escape_at_step_zero_counts_as_one_step() -> None:
    rows = _rows(["escaped"]).assign(escape_step=0.0)
    assert survival_data(rows, "law").frame["duration"].iloc[0] == 1.0


def test_hold_fixed_keeps_the_slice_with_most_cells() -> None:
    trials = pd.DataFrame(
        {
            "lr": [1, 2, 3, 1, 1],
            "batch_size": [8, 8, 8, 8, 8],
            "K": [10, 10, 10, 5, 5],
            "seed": [0, 0, 0, 0, 1],  # seeds are not design
        }
    )
    rows, held = hold_fixed(trials, ("lr",))
    assert held == {"K": 10}
    assert list(rows["lr"]) == [1, 2, 3]


def test_a_column_set_by_an_axis_varies_with_it_and_a_warning_says_so() -> None:
    trials = pd.DataFrame(
        {
            "K": [8, 8, 12, 16, 8],
            "D": [1200, 2400, 2400, 2400, 2400],
            "alphabet_size": [8, 8, 12, 16, 8],  # an alphabet of K symbols
            "lr": [1, 1, 1, 1, 2],
        }
    )
    with pytest.warns(FitWarning, match=r"alphabet_size changes with K \(K -> alphabet_size: "
                      r"8: 8, 12: 12, 16: 16\)"):  # fmt: skip
        rows, held = hold_fixed(trials, ("D", "K"))
    assert held == {"lr": 1}
    assert sorted(rows["K"]) == [8, 8, 12, 16]


def test_a_column_set_by_an_axis_is_held_when_the_slice_fixes_it() -> None:
    trials = pd.DataFrame({"lr": [3, 1, 2, 4], "K": [10, 5, 5, 5], "alphabet_size": [16, 8, 8, 8]})
    with warnings.catch_warnings():
        warnings.simplefilter("error", FitWarning)
        rows, held = hold_fixed(trials, ("lr",))
    assert held == {"K": 5, "alphabet_size": 8}
    assert sorted(rows["lr"]) == [1, 2, 4]


def test_hold_fixed_without_other_axes_returns_everything() -> None:
    trials = pd.DataFrame({"lr": [1, 2], "K": [10, 10]})
    rows, held = hold_fixed(trials, ("lr",))
    assert held == {} and len(rows) == 2


def test_to_plain_makes_json_values() -> None:
    out = to_plain(
        {
            "a": np.float64(1.5),
            "b": np.int64(2),
            "c": math.nan,
            "d": [np.inf],
            "e": np.bool_(True),
            "f": np.array([1, 2]),
        }
    )
    assert out == {"a": 1.5, "b": 2, "c": None, "d": [None], "e": True, "f": [1, 2]}


def test_estimate_covers_and_transforms() -> None:
    est = Estimate(0.0, -1.0, 1.0)
    assert est.covers(1.0) and not est.covers(1.5)
    assert est.transformed(math.exp).to_dict() == {
        "value": 1.0,
        "ci_low": math.exp(-1.0),
        "ci_high": math.exp(1.0),
    }


def test_unfitted_fitter_refuses_to_dict() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        NoiseStabilizationFitter().to_dict()


@pytest.mark.parametrize(
    ("distribution", "reference", "location"),
    [("lognormal", LogNormalAFTFitter, "mu_"), ("weibull", WeibullAFTFitter, "lambda_")],
)
def test_aft_fit_reaches_the_same_optimum_as_plain_lifelines(
    distribution, reference, location
) -> None:
    trials = simulate_noise_study(seeds=3, budget=2500, rng=0)
    frame = survival_data(trials, "law").frame
    frame["x"] = np.log(frame["lr"] / 1e-3)
    ours = fit_aft(frame, ["x"], distribution, "law")
    theirs = reference().fit(frame[["x", "duration", "event"]].astype(float), "duration", "event")
    assert ours.coef.to_numpy() == pytest.approx(theirs.params_[location].to_numpy(), rel=1e-4)
    assert ours.log_likelihood == pytest.approx(theirs.log_likelihood_)


def test_aft_interval_is_wider_than_the_plain_wald_interval() -> None:
    trials = simulate_noise_study(seeds=2, budget=2500, rng=1)
    frame = survival_data(trials, "law").frame
    frame["x"] = np.log(frame["lr"] / 1e-3)
    ours = fit_aft(frame, ["x"], "lognormal", "law").estimate("x")
    theirs = LogNormalAFTFitter().fit(
        frame[["x", "duration", "event"]].astype(float), "duration", "event"
    )
    wald_se = float(theirs.standard_errors_[("mu_", "x")])
    assert ours.se > wald_se
    assert ours.ci_high - ours.ci_low > 2 * 1.96 * wald_se


def test_fit_error_message_lists_numbered_remedies() -> None:
    err = FitError("law", "it failed", ["do this", "or that"])
    assert str(err) == "law: it failed. Try: (1) do this (2) or that"
