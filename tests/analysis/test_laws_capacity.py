"""Capacity wall: LoRA's final excess on the inverse task against rank."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest

from analysis.laws import CapacityWallFitter, FitError, FitWarning
from analysis.laws.capacity import wall_curve
from analysis.simulate import simulate_capacity_study, simulate_gap_study

WALL: dict[str, Any] = {
    "r_star": 16.0,
    "sharpness": 1.5,
    "excess_low_rank": 2.0,
    "excess_high_rank": 0.05,
}


def test_intervals_cover_the_true_wall_in_90_of_100_studies(assert_coverage) -> None:
    assert_coverage(
        "capacity_wall",
        lambda seed: simulate_capacity_study(seeds=3, noise=0.15, rng=seed, **WALL),
        lambda t: CapacityWallFitter().fit(t).params_,
        WALL,
    )


def test_information_exponent_covers_the_truth_in_90_of_100_studies(assert_coverage) -> None:
    groups = ((4, 20000), (8, 20000), (8, 80000))
    assert_coverage(
        "capacity_wall info_exponent",
        lambda seed: simulate_capacity_study(
            groups=groups, info_exponent=0.7, seeds=2, noise=0.15, rng=seed
        ),
        lambda t: CapacityWallFitter().fit(t).params_,
        {"info_exponent": 0.7},
    )


def test_information_law_lists_every_group_wall() -> None:
    groups = ((4, 20000), (8, 20000), (8, 80000))
    trials = simulate_capacity_study(groups=groups, info_exponent=0.7, seeds=2, rng=1)
    out = CapacityWallFitter().fit(trials).to_dict()
    assert [(w["K"], w["D"]) for w in out["walls"]] == [(4, 20000), (8, 20000), (8, 80000)]
    for wall in out["walls"]:
        assert wall["information"] == pytest.approx(wall["D"] * math.log(wall["K"]))
        # each wall carries its whole curve, so that a figure can draw it
        assert wall["sharpness"] > 0
        assert wall["excess_low_rank"] > wall["excess_high_rank"]


def test_wall_curve_is_half_way_at_r_star() -> None:
    assert wall_curve(16.0, 16.0, 1.5, 2.0, 0.0) == pytest.approx(1.0)
    assert wall_curve(1.0, 16.0, 5.0, 2.0, 0.0) == pytest.approx(2.0, abs=1e-4)


def test_only_lora_rows_of_the_inverse_task_are_used() -> None:
    wall = simulate_capacity_study(seeds=2, rng=2)
    others = simulate_gap_study(seeds=3, rng=3)  # full fine-tuning, both directions
    out = CapacityWallFitter().fit(pd.concat([wall, others])).to_dict()
    assert out["n"] == len(wall)
    assert out["model"] == "sigmoid in log rank"


def test_three_ranks_fix_the_high_rank_excess_with_a_warning() -> None:
    trials = simulate_capacity_study(
        ranks=(4, 16, 64),
        r_star=16,
        sharpness=2.0,
        excess_high_rank=0.0,
        seeds=3,
        noise=0.05,
        rng=4,
    )
    with pytest.warns(FitWarning, match="only 3 ranks"):
        fitter = CapacityWallFitter().fit(trials)
    assert fitter.params_["excess_high_rank"].value == 0.0
    assert fitter.params_["r_star"].covers(16.0)


def test_wall_sharper_than_the_grid_is_bracketed_between_ranks() -> None:
    trials = simulate_capacity_study(
        ranks=(1, 4, 16, 64, 256), r_star=8, sharpness=100, seeds=2, rng=0
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitter = CapacityWallFitter().fit(trials)
    assert [str(w.message) for w in caught] == [
        "capacity_wall: the wall is sharper than the rank grid resolves; r* is only bracketed "
        "between ranks 4 and 16"
    ]
    out = fitter.to_dict()
    assert out["model"] == "step between ranks"
    assert "sharpness" not in out["params"]
    assert out["params"]["r_star"]["ci_low"] == pytest.approx(4.0)
    assert out["params"]["r_star"]["ci_high"] == pytest.approx(16.0)


@pytest.mark.parametrize(
    ("kwargs", "problem", "remedy"),
    [
        (
            {"ranks": (1, 4, 16, 64), "excess_low_rank": 0.5, "excess_high_rank": 0.5},
            "does not change with rank",
            "add ranks below 1 or above 64",
        ),
        (
            {"ranks": (16, 32, 64, 128, 256), "r_star": 1024, "sharpness": 1.0, "rng": 1},
            "wall lies above rank 256",
            "add ranks above 256",
        ),
        ({"ranks": (8, 64, 256), "r_star": 16}, "wall lies below rank 8", "add ranks below 8"),
        (
            {"ranks": (4, 8, 16, 32, 64), "r_star": 1024, "sharpness": 1.0},
            "do not pin the wall down",
            "add ranks on both sides",
        ),
    ],
    ids=["no-wall", "wall-above-grid", "wall-below-grid", "not-pinned"],
)
def test_unplaceable_wall_raises_a_fit_error_listing_remedies(
    kwargs, problem: str, remedy: str
) -> None:
    trials = simulate_capacity_study(**{"seeds": 3, "rng": 0, **kwargs})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)  # some cases warn before they fail
        with pytest.raises(FitError, match=problem) as err:
            CapacityWallFitter().fit(trials)
    assert remedy in err.value.remedies[0]


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda t: t[t["lora_rank"] <= 2], "at least 3 distinct LoRA ranks"),
        (lambda t: t.assign(direction="forward"), "no LoRA trial"),
        (lambda t: t.drop(columns="final_excess"), "no column final_excess"),
    ],
    ids=["two-ranks", "forward-only", "no-excess-column"],
)
def test_table_without_ranks_is_skipped_with_the_reason(edit, reason: str) -> None:
    fitter = CapacityWallFitter().fit(edit(simulate_capacity_study(seeds=2, rng=6)))
    assert fitter.skipped_ is not None and reason in fitter.skipped_


def test_shallow_wall_inside_the_grid_warns_that_larger_ranks_may_be_missing() -> None:
    # the wall sits above the grid; the fit finds the start of the fall only
    trials = simulate_capacity_study(
        ranks=(16, 32, 64, 128, 256), r_star=512, sharpness=1.0, seeds=4, rng=0
    )
    with pytest.warns(FitWarning, match="lowers the excess only from 1.99 to 1.33"):
        CapacityWallFitter().fit(trials)


def test_runs_without_final_excess_are_left_out_with_a_warning() -> None:
    trials = simulate_capacity_study(seeds=3, rng=7)
    trials.loc[trials.index[:2], ["status", "final_excess"]] = ["diverged", np.nan]
    with pytest.warns(FitWarning, match="2 LoRA trials have no final excess"):
        out = CapacityWallFitter().fit(trials).to_dict()
    assert out["n"] == len(trials) - 2
