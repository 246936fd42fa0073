"""Directional gap: inverse minus forward excess, per architecture."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.laws import DirectionalGapFitter, FitWarning
from analysis.laws.gap import gap_difference, welch
from analysis.simulate import simulate_gap_study

GAPS = {"gpt2": 1.16, "mlp": 0.22}


def test_intervals_cover_the_true_gaps_in_90_of_100_studies(assert_coverage) -> None:
    assert_coverage(
        "directional_gap",
        lambda seed: simulate_gap_study(gaps=GAPS, seeds=4, rng=seed),
        lambda t: DirectionalGapFitter().fit(t).params_,
        {**GAPS, "gpt2 - mlp": GAPS["gpt2"] - GAPS["mlp"]},
    )


def test_each_architecture_gets_its_gap_and_group_means() -> None:
    trials = simulate_gap_study(gaps=GAPS, seeds=5, noise=0.05, rng=1)
    out = DirectionalGapFitter().fit(trials).to_dict()
    assert set(out["params"]) == {"gpt2", "mlp", "gpt2 - mlp"}
    difference = out["params"]["gpt2 - mlp"]["value"]
    assert difference == pytest.approx(
        out["params"]["gpt2"]["value"] - out["params"]["mlp"]["value"]
    )
    gpt2 = next(g for g in out["groups"] if g["label"] == "gpt2")
    assert gpt2["n_forward"] == gpt2["n_inverse"] == 5
    assert gpt2["inverse_excess"] - gpt2["forward_excess"] == pytest.approx(
        out["params"]["gpt2"]["value"]
    )
    assert out["n"] == len(trials)


def test_lora_and_varying_k_split_the_labels() -> None:
    k5 = simulate_gap_study(gaps={"gpt2": 1.0}, seeds=3, K=5, rng=2)
    k8 = simulate_gap_study(gaps={"gpt2": 2.0}, seeds=3, K=8, rng=3)
    lora = simulate_gap_study(gaps={"gpt2": 1.5}, seeds=3, K=5, rng=4).assign(lora_rank=8)
    out = DirectionalGapFitter().fit(pd.concat([k5, k8, lora])).to_dict()
    assert set(out["params"]) == {"gpt2 K=5", "gpt2 K=8", "gpt2-lora8 K=5"}


def test_welch_interval_matches_a_hand_computation() -> None:
    a, b = np.array([1.0, 1.2, 1.4]), np.array([0.1, 0.2, 0.3, 0.4])
    est = welch(a, b)
    se = np.sqrt(a.var(ddof=1) / 3 + b.var(ddof=1) / 4)
    assert est.value == pytest.approx(0.95)
    assert est.se == pytest.approx(se)
    assert est.ci_low < 0.95 - 1.96 * se  # t quantile, wider than normal


def test_diverged_rows_are_left_out_with_a_warning() -> None:
    trials = simulate_gap_study(seeds=4, rng=5)
    trials.loc[trials.index[0], ["status", "final_excess"]] = ["diverged", np.nan]
    with pytest.warns(FitWarning, match="1 mapping-task trials have no final excess"):
        out = DirectionalGapFitter().fit(trials).to_dict()
    assert out["n"] == len(trials) - 1


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda t: t[t["direction"] == "forward"], "needs forward and inverse trials"),
        (
            lambda t: t.groupby(["model", "direction"]).head(1),
            "needs at least 2 forward and 2 inverse trials",
        ),
        (lambda t: t.assign(task="disambiguation"), "no mapping-task trial"),
        (lambda t: t.drop(columns="direction"), "no column direction"),
    ],
    ids=["forward-only", "one-per-direction", "wrong-task", "no-direction-column"],
)
def test_table_without_both_directions_is_skipped_with_the_reason(edit, reason: str) -> None:
    fitter = DirectionalGapFitter().fit(edit(simulate_gap_study(seeds=3, rng=6)))
    assert fitter.skipped_ is not None and reason in fitter.skipped_


def test_the_gap_difference_interval_comes_from_the_four_samples() -> None:
    fa, ia = np.array([0.0, 0.1, 0.2]), np.array([1.0, 1.3, 1.1, 1.2])
    fb, ib = np.array([0.05, 0.1, 0.0]), np.array([0.3, 0.2, 0.25])
    est = gap_difference(fa, ia, fb, ib)
    variances = [x.var(ddof=1) / len(x) for x in (fa, ia, fb, ib)]
    assert est.value == pytest.approx((ia.mean() - fa.mean()) - (ib.mean() - fb.mean()))
    assert est.se == pytest.approx(np.sqrt(sum(variances)))
    assert est.ci_low < est.value < est.ci_high
