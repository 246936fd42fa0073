"""Noise stabilization: escape step against lr and batch size, censored trials included."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from analysis.laws import FitError, FitWarning, NoiseStabilizationFitter
from analysis.laws.noise import _turns
from analysis.simulate import simulate_escape_trials, simulate_noise_study

TRUTH: dict[str, Any] = {"lr_exponent": 0.66, "batch_exponent": -0.66, "median_at_ref": 2000.0}


def _small_study(seed: int) -> pd.DataFrame:
    # 3 lr x 2 batch x 3 seeds, about a quarter censored
    return simulate_noise_study(
        lrs=(5e-4, 1e-3, 2e-3),
        batch_sizes=(64, 256),
        seeds=3,
        scale=0.3,
        budget=3000,
        rng=seed,
        **TRUTH,
    )


def test_intervals_cover_the_true_exponents_in_90_of_100_studies(assert_coverage) -> None:
    assert_coverage(
        "noise_stabilization",
        _small_study,
        lambda t: NoiseStabilizationFitter(compare=False).fit(t).params_,
        {
            "lr_exponent": 0.66,
            "batch_exponent": -0.66,
            "exponent_sum": 0.0,
            "median_escape_at_ref": 2000.0,
            "slowdown": 4.0**0.66,
        },
    )


def test_censored_trials_enter_the_fit() -> None:
    trials = _small_study(0)
    n_censored = int((trials["status"] == "censored").sum())
    assert n_censored > 0
    out = NoiseStabilizationFitter(compare=False).fit(trials).to_dict()
    assert out["n"] == len(trials)
    assert out["n_censored"] == n_censored


def test_dropping_censored_trials_would_bias_the_exponent_low() -> None:
    # the slow (high-lr, small-batch) cells are the censored ones: a fit without them
    # underestimates the slowdown, the censored fit does not
    trials = simulate_noise_study(seeds=12, budget=2200, rng=3, **TRUTH)
    with_censored = NoiseStabilizationFitter(compare=False).fit(trials)
    escaped_only = NoiseStabilizationFitter(compare=False).fit(
        trials[trials["status"] == "escaped"]
    )
    assert with_censored.params_["lr_exponent"].covers(0.66)
    assert escaped_only.params_["lr_exponent"].value < with_censored.params_["lr_exponent"].value


def test_summary_and_dict_follow_the_laws_json_contract() -> None:
    fitter = NoiseStabilizationFitter().fit(_small_study(1))
    out = fitter.to_dict()
    assert out["model"].startswith("power law")
    assert set(out["params"]["lr_exponent"]) == {"value", "ci_low", "ci_high"}
    assert list(fitter.summary.columns) == ["value", "ci_low", "ci_high"]
    assert "lr_exponent" in fitter.summary.index
    assert out["reference_point"] == {"lr": 1e-3, "batch_size": 128.0}
    assert {"power", "exponential_temperature", "power_temperature"} == set(out["aic"])
    assert out["better_fit"] in ("power", "exponential_temperature")
    assert out["reference"][0]["value"] == 3.6


def test_slowdown_is_the_lr_range_raised_to_the_exponent() -> None:
    fitter = NoiseStabilizationFitter(compare=False).fit(_small_study(2))
    a = fitter.params_["lr_exponent"]
    assert fitter.params_["slowdown"].value == pytest.approx(4.0**a.value)
    assert fitter.params_["slowdown"].ci_low == pytest.approx(4.0**a.ci_low)
    assert fitter.params_["slowdown_7x"].value == pytest.approx(7.0**a.value)


@pytest.mark.parametrize(
    ("law", "better"),
    [("power", "power"), ("exponential", "exponential_temperature")],
)
def test_aic_prefers_the_law_the_data_came_from(law: str, better: str) -> None:
    design = (
        pd.MultiIndex.from_product(
            [[2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3], [32, 128, 512]], names=["lr", "batch_size"]
        )
        .to_frame(index=False)
        .assign(K=10, D=10000)
    )
    temperature = design["lr"] / design["batch_size"]
    if law == "power":
        log_median = math.log(2000) + 0.7 * np.log(temperature / temperature.median())
    else:
        log_median = math.log(500) + 1.1e4 * temperature
    trials = simulate_escape_trials(
        design, log_median.to_numpy(), scale=0.15, budget=10**6, seeds=4, rng=5
    )
    out = NoiseStabilizationFitter().fit(trials).to_dict()
    assert out["better_fit"] == better


def test_temperature_only_test_rejects_unequal_exponents() -> None:
    trials = simulate_noise_study(seeds=8, lr_exponent=0.9, batch_exponent=-0.1, rng=4)
    out = NoiseStabilizationFitter().fit(trials).to_dict()
    assert not out["temperature_only"]["exponent_sum_covers_0"]
    assert out["temperature_only"]["likelihood_ratio_p"] < 0.01


def test_weibull_distribution_recovers_the_exponent() -> None:
    trials = simulate_noise_study(seeds=10, distribution="weibull", scale=0.25, rng=6, **TRUTH)
    fitter = NoiseStabilizationFitter(distribution="weibull", compare=False).fit(trials)
    assert fitter.params_["lr_exponent"].covers(0.66)
    assert fitter.params_["median_escape_at_ref"].covers(2000.0)


def test_single_batch_size_fits_lr_alone_and_skips_the_temperature_test() -> None:
    trials = simulate_noise_study(batch_sizes=(128,), seeds=5, rng=7)
    out = NoiseStabilizationFitter().fit(trials).to_dict()
    assert "batch_exponent" not in out["params"]
    assert "batch sizes" in out["temperature_only"]["skipped"]


def test_other_axes_are_held_fixed_at_the_richest_slice() -> None:
    main = simulate_noise_study(seeds=3, rng=8)
    other = simulate_noise_study(lrs=(1e-3,), batch_sizes=(128,), seeds=3, K=5, rng=9)
    out = NoiseStabilizationFitter(compare=False).fit(pd.concat([main, other])).to_dict()
    assert out["held_fixed"] == {"K": 10}
    assert out["n"] == len(main)


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda t: t[t["lr"] == 1e-3], "at least 2 distinct lr values"),
        (lambda t: t.drop(columns="batch_size"), "no column batch_size"),
        (lambda t: t.assign(task="mapping"), "no trial of the disambiguation task"),
        (
            lambda t: t.assign(status="censored", escape_step=np.nan),
            "needs more escapes than the 3 coefficients",
        ),
        (
            lambda t: t[t["lr"] * 128 == t["batch_size"] * 1e-3],
            "lr and batch_size change together",
        ),
    ],
    ids=["one-lr", "no-batch-column", "wrong-task", "no-escape", "confounded"],
)
def test_table_without_the_axes_is_skipped_with_the_reason(edit, reason: str) -> None:
    fitter = NoiseStabilizationFitter().fit(edit(_small_study(0)))
    assert fitter.skipped_ is not None and reason in fitter.skipped_
    assert fitter.to_dict() == {"skipped": fitter.skipped_}
    assert fitter.summary.empty


def test_cell_without_any_escape_raises_a_fit_error_listing_remedies() -> None:
    trials = simulate_noise_study(
        lrs=(1e-3, 2e-3), batch_sizes=(128,), seeds=4, rng=0, budget=10**6
    )
    slow = trials["lr"] == 2e-3
    trials.loc[slow, ["status", "escape_step", "steps"]] = ["censored", np.nan, 500]
    with pytest.raises(FitError) as err:
        NoiseStabilizationFitter().fit(trials)
    assert "likelihood is flat" in str(err.value)
    assert any("lr=0.002, batch_size=128" in r for r in err.value.remedies)
    assert "distribution='weibull'" in err.value.remedies


def test_diverged_rows_are_censored_with_a_warning() -> None:
    trials = _small_study(0)
    trials.loc[trials.index[:2], ["status", "escape_step"]] = ["diverged", np.nan]
    with pytest.warns(FitWarning, match="diverged"):
        out = NoiseStabilizationFitter(compare=False).fit(trials).to_dict()
    assert out["n"] == len(trials)
    assert out["n_by_status"]["diverged"] == 2


def test_unknown_distribution_is_refused() -> None:
    with pytest.raises(ValueError, match="distribution='gamma' is not allowed"):
        NoiseStabilizationFitter(distribution="gamma")


def test_the_fit_records_how_many_trials_it_cost_and_their_wall_time() -> None:
    trials = simulate_noise_study(rng=0)
    # every seed row of a trial repeats the trial's wall time; it counts once
    wall = {t: 10.0 * (i + 1) for i, t in enumerate(sorted(trials["trial_id"].unique()))}
    trials["wall_s"] = trials["trial_id"].map(wall)
    out = NoiseStabilizationFitter().fit(trials).to_dict()
    assert out["trials"] == trials["trial_id"].nunique() == 9
    assert out["trial_wall_s"] == pytest.approx(sum(wall.values()))
    assert out["n"] == len(trials)


def test_cells_give_km_medians_and_a_turn_in_lr_is_a_caveat() -> None:
    trials = simulate_noise_study(rng=0)
    monotonic = NoiseStabilizationFitter().fit(trials)
    cells = monotonic.to_dict()["cells"]
    assert len(cells) == trials[["lr", "batch_size"]].drop_duplicates().shape[0]
    assert sum(c["n"] for c in cells) == len(trials)
    # make the middle lr escape first at every batch size: a U shape in lr
    middle = sorted(trials["lr"].unique())[1]
    turned = trials.copy()
    fast = turned["lr"] == middle
    turned.loc[fast, "escape_step"] = turned.loc[fast, "escape_step"] / 10
    turned.loc[fast, "status"] = "escaped"
    with pytest.warns(FitWarning, match="not monotonic in lr at batch_size="):
        NoiseStabilizationFitter().fit(turned)


def test_a_cell_whose_median_is_not_reached_counts_as_the_slowest() -> None:
    trials = simulate_noise_study(rng=0)
    lrs = sorted(trials["lr"].unique())
    turned = trials.copy()
    fast = turned["lr"] == lrs[1]
    turned.loc[fast, "escape_step"] = turned.loc[fast, "escape_step"] / 10
    turned.loc[fast, "status"] = "escaped"
    top = turned["lr"] == lrs[-1]  # no run of the highest lr escapes
    turned.loc[top, "status"] = "censored"
    turned.loc[top, "escape_step"] = np.nan
    with pytest.warns(FitWarning, match="not reached"):
        out = NoiseStabilizationFitter().fit(turned).to_dict()
    assert all(c["median_escape"] is None for c in out["cells"] if c["lr"] == lrs[-1])


@pytest.mark.parametrize(
    ("medians", "turn"),
    [
        ([471, 475, 471, 619, 622], False),  # sampling noise around a rise
        ([524, 463, 482, 443, 600], False),
        ([3000, 2400, 5300, math.inf], True),  # a valley: down 20%, then up
        ([1600, 1200, 1500, math.inf], True),
        ([450, 400, 350, 350, 2300], True),
        ([1000, 2000, 900], True),  # a peak
        ([1000, 1500, 2300, math.inf], False),  # monotonic
    ],
)
def test_a_turn_needs_an_inner_median_20_percent_off_on_both_sides(
    medians: list[float], turn: bool
) -> None:
    assert _turns([float(m) for m in medians]) is turn
