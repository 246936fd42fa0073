"""Routing lead: the routing score's rise ahead of the loss escape."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.laws import RoutingLeadFitter
from analysis.simulate import simulate_routing_study


def test_interval_covers_the_true_lead_in_90_of_100_studies(assert_coverage) -> None:
    assert_coverage(
        "routing_lead",
        lambda seed: simulate_routing_study(trials=4, seeds=3, lead=0.5, z_gap_lead=0.3, rng=seed),
        lambda tables: RoutingLeadFitter().fit(*tables).params_,
        {"routing_lead": 0.5, "z_shuffle_lead": 0.3},
    )


def test_censored_seeds_are_counted_but_have_no_lead() -> None:
    trials, curves = simulate_routing_study(trials=4, seeds=3, waiting=2000, budget=2400, rng=1)
    n_escaped = int((trials["status"] == "escaped").sum())
    assert 2 <= n_escaped < len(trials)
    out = RoutingLeadFitter().fit(trials, curves).to_dict()
    assert out["n"] == n_escaped
    assert out["n_censored"] == len(trials) - n_escaped


def test_without_curves_the_trials_routing_lead_column_is_used() -> None:
    trials, curves = simulate_routing_study(rng=2)
    from_curves = RoutingLeadFitter().fit(trials, curves).params_["routing_lead"]
    from_column = RoutingLeadFitter().fit(trials).params_["routing_lead"]
    assert from_column.value == pytest.approx(from_curves.value)


def test_flat_routing_score_has_no_rise() -> None:
    trials, curves = simulate_routing_study(rng=3)
    curves["routing_score"] = 0.3
    fitter = RoutingLeadFitter().fit(trials, curves)
    assert fitter.skipped_ is not None and "found 0" in fitter.skipped_


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda t, c: (t, c.assign(routing_score=np.nan)), "no routing_score"),
        (lambda t, c: (t.drop(columns="routing_lead"), None), "needs the curves table"),
        (
            lambda t, c: (t.assign(task="mapping", floor=0.0), c),
            "no curve of a disambiguation-task trial",
        ),
    ],
    ids=["nan-score", "no-curves", "wrong-task"],
)
def test_missing_routing_data_is_skipped_with_the_reason(edit, reason: str) -> None:
    fitter = RoutingLeadFitter().fit(*edit(*simulate_routing_study(rng=4)))
    assert fitter.skipped_ is not None and reason in fitter.skipped_


def test_seeds_that_never_learned_the_marginal_have_no_waiting_time_and_say_so() -> None:
    trials, curves = simulate_routing_study(trials=2, seeds=2, rng=4)
    # the first-token loss stays at log 36: the loss escaped without a learned plateau
    curves["first_token_loss"] = np.log(36.0)
    fitter = RoutingLeadFitter().fit(trials, curves)
    assert fitter.params_ == {}
    assert "4 of them escaped without a plateau onset" in fitter.skipped_
    watched = trials.assign(plateau_onset="watched")
    assert RoutingLeadFitter().fit(watched, curves).to_dict()["n_no_plateau"] == 0
