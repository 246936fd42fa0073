"""fit_all: every law's laws.json entry from one call."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from analysis.laws import LAWS, CapacityWallFitter, FitWarning, fit_all, fit_law
from analysis.simulate import simulate_capacity_study, simulate_noise_study, simulate_study

KEYS = {
    "noise_stabilization",
    "plateau_duration",
    "capacity_wall",
    "directional_gap",
    "routing_lead",
}


@pytest.fixture(scope="module")
def study() -> tuple[pd.DataFrame, pd.DataFrame]:
    return simulate_study(0)


@pytest.mark.parametrize("seed", range(5))
def test_a_smoke_sized_study_with_every_axis_fits_every_law(seed: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        laws = fit_all(*simulate_study(seed))
    assert set(laws) == set(LAWS) == KEYS
    for name, entry in laws.items():
        assert "skipped" not in entry, (name, entry)
        assert entry["n"] > 0 and entry["n_censored"] >= 0
        for param in entry["params"].values():
            assert param["ci_low"] <= param["value"] <= param["ci_high"]
    json.dumps(laws, allow_nan=False)


def test_a_study_of_one_law_skips_the_others_with_reasons() -> None:
    laws = fit_all(simulate_noise_study(seeds=3, rng=0))
    assert "params" in laws["noise_stabilization"]
    assert laws["plateau_duration"]["skipped"].startswith("needs at least 2 distinct D")
    assert "no LoRA trial" in laws["capacity_wall"]["skipped"]
    assert "no mapping-task trial" in laws["directional_gap"]["skipped"]
    assert "routing_lead" in laws["routing_lead"]["skipped"]


def test_a_non_converging_fit_is_recorded_with_what_to_try() -> None:
    flat = simulate_capacity_study(excess_low_rank=0.5, excess_high_rank=0.5, rng=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        entry = fit_law(CapacityWallFitter(), flat)
    assert entry["skipped"].startswith("the fit did not converge")
    assert entry["try"] and all(isinstance(r, str) for r in entry["try"])
    assert "Try: (1)" in entry["error"]


def test_caveats_are_recorded_and_issued_again() -> None:
    trials = simulate_noise_study(seeds=3, rng=0)
    trials.loc[trials.index[0], ["status", "escape_step"]] = ["failed", np.nan]
    with pytest.warns(FitWarning, match="right-censored"):
        laws = fit_all(trials)
    assert any("'failed': 1" in w for w in laws["noise_stabilization"]["warnings"])


def test_routing_lead_comes_from_the_curves(study) -> None:
    trials, curves = study
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        with_curves = fit_all(trials, curves)["routing_lead"]
        without = fit_all(trials.drop(columns="routing_lead"))["routing_lead"]
    assert with_curves["params"]["routing_lead"]["value"] > 0
    assert "needs the curves table" in without["skipped"]
