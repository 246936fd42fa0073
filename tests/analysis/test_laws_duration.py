"""Plateau duration: escape step against D at fixed K, and K at fixed D."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.laws import FitError, PlateauDurationFitter
from analysis.simulate import simulate_duration_study


def _study(seed: int) -> pd.DataFrame:
    # 3 D x 2 K x 3 seeds; the largest D cells are partly censored
    return simulate_duration_study(
        Ds=(1000, 3000, 10000), Ks=(5, 20), seeds=3, budget=6000, rng=seed
    )


def test_intervals_cover_the_true_exponents_in_90_of_100_studies(assert_coverage) -> None:
    assert_coverage(
        "plateau_duration",
        _study,
        lambda t: PlateauDurationFitter().fit(t).params_,
        {
            "D_exponent": 1.1,
            "K_exponent": 0.0,
            "median_escape_at_ref": 2000.0,
            "plateau_height": 1.0,
        },
    )


def test_study_has_censored_trials_and_counts_them() -> None:
    trials = _study(0)
    out = PlateauDurationFitter().fit(trials).to_dict()
    assert out["n_censored"] == int((trials["status"] == "censored").sum()) > 0
    assert out["n"] == len(trials)


@pytest.mark.parametrize(("k_exponent", "independent"), [(0.0, True), (0.8, False)])
def test_k_independence_is_an_interval_covering_zero(k_exponent: float, independent: bool) -> None:
    trials = simulate_duration_study(
        Ds=(1000, 3000), Ks=(5, 20), seeds=8, budget=10**6, K_exponent=k_exponent, rng=11
    )
    out = PlateauDurationFitter().fit(trials).to_dict()
    assert out["K_independent"] is independent
    lo, hi = out["params"]["K_exponent"]["ci_low"], out["params"]["K_exponent"]["ci_high"]
    assert lo <= k_exponent <= hi


def test_duration_set_by_the_number_of_bases_is_k_independent_only_at_fixed_bases() -> None:
    # t ~ bases^1.1 = (D / K)^1.1: gamma = -alpha at fixed D, 0 at fixed bases
    trials = simulate_duration_study(
        Ds=(1000, 3000), Ks=(5, 20), seeds=8, budget=10**6, K_exponent=-1.1, rng=15
    )
    out = PlateauDurationFitter().fit(trials).to_dict()
    assert out["K_independent"] is False
    assert out["K_independent_fixed_bases"] is True
    fixed = out["params"]["K_exponent_fixed_bases"]
    d, k = out["params"]["D_exponent"]["value"], out["params"]["K_exponent"]["value"]
    assert fixed["value"] == pytest.approx(d + k)
    assert fixed["ci_low"] < 0.0 < fixed["ci_high"]


def test_plateau_height_is_reported_relative_to_log_k() -> None:
    trials = simulate_duration_study(plateau_height=1.2, seeds=3, rng=12)
    height = PlateauDurationFitter().fit(trials).params_["plateau_height"]
    assert height.covers(1.2)
    assert not height.covers(1.0)


def test_single_k_fits_the_d_exponent_alone() -> None:
    out = PlateauDurationFitter().fit(simulate_duration_study(Ks=(10,), rng=13)).to_dict()
    assert "K_exponent" not in out["params"]
    assert "K_independent" not in out
    assert out["params"]["D_exponent"]["ci_low"] < 1.1 < out["params"]["D_exponent"]["ci_high"]


def test_other_axes_are_held_fixed() -> None:
    main = _study(1)
    side = simulate_duration_study(Ds=(1000,), Ks=(5,), seeds=2, lr=3e-3, rng=14)
    out = PlateauDurationFitter().fit(pd.concat([main, side])).to_dict()
    assert out["held_fixed"] == {"lr": 0.001}
    assert out["n"] == len(main)


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda t: t[t["D"] == 1000], "at least 2 distinct D values"),
        (lambda t: t.drop(columns="D"), "no column D"),
        (lambda t: t.assign(status="censored", escape_step=np.nan), "needs more escapes"),
        (
            lambda t: t[((t["D"] == 1000) & (t["K"] == 5)) | ((t["D"] == 3000) & (t["K"] == 20))],
            "D and K change together",
        ),
    ],
    ids=["one-D", "no-D-column", "no-escape", "confounded"],
)
def test_table_without_the_axes_is_skipped_with_the_reason(edit, reason: str) -> None:
    fitter = PlateauDurationFitter().fit(edit(_study(0)))
    assert fitter.skipped_ is not None and reason in fitter.skipped_


def test_d_cell_without_escape_raises_a_fit_error() -> None:
    trials = simulate_duration_study(Ds=(1000, 30000), Ks=(10,), seeds=4, budget=10**6, rng=15)
    big = trials["D"] == 30000
    trials.loc[big, ["status", "escape_step", "steps"]] = ["censored", np.nan, 300]
    with pytest.raises(FitError, match="likelihood is flat") as err:
        PlateauDurationFitter().fit(trials)
    assert any("D=30000" in r for r in err.value.remedies)


def test_plateau_height_is_also_given_per_k() -> None:
    trials = simulate_duration_study(Ks=(5, 20), plateau_height=1.2, seeds=3, rng=16)
    out = PlateauDurationFitter().fit(trials).to_dict()
    by_k = out["plateau_height_by_K"]
    assert set(by_k) == {"5", "20"}
    for k, entry in by_k.items():
        assert entry["n"] == int((trials["K"] == int(k)).sum())
        assert entry["ci_low"] <= 1.2 <= entry["ci_high"]
