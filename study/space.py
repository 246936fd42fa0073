"""Translation of a study spec into Ray Tune's search space and search algorithm.

A grid study becomes a ``param_space`` holding every config key, with the grid points
as one grid axis of variants (cases may set different keys, and list-valued keys stay
intact); sampled axes become Tune distributions. An Optuna study becomes a
define-by-run :class:`OptunaSpace` inside ``OptunaSearch``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from study.spec import OBJECTIVE_KEY, VARIANT_KEY, Distribution, StudySpec


def param_space(spec: StudySpec) -> dict[str, Any] | None:
    """The Ray Tune ``param_space`` of a grid study (None for an Optuna search).

    Every config key is present, so that each trial's ``params.json`` records its
    whole config; grid points travel as one grid axis of variants (cases may set
    different keys, and list-valued keys stay intact).
    """
    from ray import tune

    if spec.sweep.search == "optuna":
        return None
    space: dict[str, Any] = spec.base_config()
    for key, dist in spec.sweep.sample.items():
        space[key] = _tune_domain(dist)
    variants = spec.sweep.variants()
    if any(variants):
        space[VARIANT_KEY] = tune.grid_search(variants)
    return space


def _tune_domain(dist: Distribution) -> Any:
    from ray import tune

    if dist.kind == "choice":
        return tune.choice(list(dist.values))
    low, high = dist.low, dist.high
    assert low is not None and high is not None  # set for every kind but choice
    if dist.kind == "uniform":
        return tune.uniform(low, high)
    if dist.kind == "loguniform":
        return tune.loguniform(low, high)
    assert isinstance(low, int) and isinstance(high, int)
    # Ray's integer upper bounds are exclusive; spec bounds are inclusive
    if dist.log:
        return tune.lograndint(low, high + 1)
    return tune.randint(low, high + 1)


class OptunaSpace:
    """Define-by-run search space: suggests each sampled axis, returns the fixed keys."""

    def __init__(self, sample: Mapping[str, Distribution], constants: Mapping[str, Any]):
        self.sample = dict(sample)
        # keys returned here override suggestions, so sampled keys must not appear
        self.constants = {k: v for k, v in constants.items() if k not in self.sample}

    def __call__(self, trial: Any) -> dict[str, Any]:
        for name, dist in self.sample.items():
            if dist.kind == "choice":
                trial.suggest_categorical(name, list(dist.values))
            elif dist.kind == "int":
                trial.suggest_int(name, dist.low, dist.high, log=dist.log)
            else:
                trial.suggest_float(name, dist.low, dist.high, log=dist.kind == "loguniform")
        return dict(self.constants)


def search_alg(spec: StudySpec) -> Any:
    """The Ray Tune search algorithm of an Optuna study (None for a grid study)."""
    if spec.sweep.search != "optuna":
        return None
    from ray.tune.search.optuna import OptunaSearch

    assert spec.sweep.objective is not None  # parse_spec requires one
    return OptunaSearch(
        space=OptunaSpace(spec.sweep.sample, spec.base_config()),
        metric=OBJECTIVE_KEY,
        mode=spec.sweep.objective.search_mode,
        seed=spec.sweep.seed,
    )
