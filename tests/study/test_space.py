"""Translation of specs into Ray Tune: the param space and the Optuna define-by-run space."""

from __future__ import annotations

import optuna

from study.space import OptunaSpace, param_space, search_alg
from study.spec import OBJECTIVE_KEY, VARIANT_KEY, parse_spec
from tests.study.test_spec import spec_with
from trainables.config import FIELD_NAMES, resolve


def test_param_space_records_every_config_key_and_grids_the_variants() -> None:
    from ray.tune.search.sample import Domain

    spec = parse_spec(
        spec_with(sweep={"grid": {"lr": [1e-3, 2e-3]}, "sample": {"seed": {"int": [0, 9]}}})
    )
    space = param_space(spec)
    assert space is not None
    assert set(FIELD_NAMES) <= set(space)
    assert space[VARIANT_KEY] == {"grid_search": [{"lr": 1e-3}, {"lr": 2e-3}]}
    assert isinstance(space["seed"], Domain)
    assert search_alg(spec) is None


def test_optuna_space_suggests_each_axis_within_bounds_and_returns_the_fixed_keys() -> None:
    spec = parse_spec(
        spec_with(
            sweep={
                "search": "optuna",
                "num_samples": 4,
                "seed": 3,
                "sample": {
                    "lora_rank": {"int": [1, 64], "log": True},
                    "lr": {"loguniform": [1e-4, 1e-2]},
                    "optimizer": {"choice": ["adamw", "sgd"]},
                },
                "objective": {"metric": "excess", "target": 0.5},
            }
        )
    )
    space = OptunaSpace(spec.sweep.sample, spec.base_config())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        fixed = space(trial)
        assert 1 <= trial.params["lora_rank"] <= 64
        assert 1e-4 <= trial.params["lr"] <= 1e-2
        assert trial.params["optimizer"] in ("adamw", "sgd")
        assert "lr" not in fixed and fixed["K"] == 4
        resolve({**fixed, **trial.params})
    assert param_space(spec) is None
    searcher = search_alg(spec)
    assert searcher.metric == OBJECTIVE_KEY and searcher.mode == "min"
