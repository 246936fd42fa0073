"""Shared checks for the analysis tests: interval coverage over simulated studies."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

import pytest

from analysis.laws import Estimate, FitWarning

STUDIES = 100
REQUIRED = 90  # of 100 nominal 95% intervals must cover the truth


def coverage(
    name: str,
    simulate: Callable[[int], object],
    fit: Callable[[object], Mapping[str, Estimate]],
    truth: Mapping[str, float],
    studies: int = STUDIES,
) -> dict[str, int]:
    """Fits ``studies`` simulated studies (seeds 0 .. studies - 1) and counts, per
    parameter, the 95% intervals that cover the truth. Prints the tally."""
    hits = dict.fromkeys(truth, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        for seed in range(studies):
            params = fit(simulate(seed))
            for key, value in truth.items():
                hits[key] += params[key].covers(value)
    print(
        f"{name}: seeds 0..{studies - 1}, intervals covering the truth: {hits} "
        f"of {studies}, required {REQUIRED}"
    )
    return hits


@pytest.fixture
def assert_coverage() -> Callable[..., None]:
    def check(*args: object, **kwargs: object) -> None:
        hits = coverage(*args, **kwargs)  # type: ignore[arg-type]
        low = {k: v for k, v in hits.items() if v < REQUIRED}
        assert not low, f"coverage below {REQUIRED}/{STUDIES}: {low}"

    return check
