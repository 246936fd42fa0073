"""Study specs: presets load, every refusal names the field, the value and what is allowed."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from study import presets
from study.spec import (
    VARIANT_KEY,
    case_of,
    check_trials,
    load_spec,
    load_yaml,
    parse_spec,
    trial_config,
)
from trainables.config import ConfigError

BASE: dict[str, Any] = {
    "name": "t",
    "task": {"task": "disambiguation", "K": 4, "D": 400},
    "model": {"model": "gpt2", "size": "tiny"},
    "recipe": {"batch_size": 32},
    "budget": {"max_steps": 100, "eval_every": 50},
}


def spec_with(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


@pytest.mark.parametrize("name", presets.names())
def test_every_preset_loads_and_resolves_each_trial(name: str) -> None:
    spec = load_spec(name)
    assert spec.name == name
    assert spec.n_trials >= 1
    assert check_trials(spec) >= 1


def test_presets_include_the_documented_ones() -> None:
    assert {"smoke", "quick", "temperature", "plateau_k_d", "lora_wall", "directional"} <= set(
        presets.names()
    )


def test_smoke_has_an_escaping_a_censored_and_a_diverging_case() -> None:
    spec = load_spec("smoke")
    assert [c.name for c in spec.sweep.cases] == ["escape", "censored", "diverged"]


def test_a_spec_file_loads_by_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        "task: {K: 4, D: 400}\nrecipe: {batch_size: 32}\nsweep: {grid: {lr: [1e-3, 2e-3]}}\n"
    )
    spec = load_spec(path)
    assert spec.name == "mine"  # the file name when the spec has none
    assert spec.sweep.grid["lr"] == (1e-3, 2e-3)  # 1e-3 is a number, as in YAML 1.2
    assert spec.n_trials == 2


def test_the_spec_round_trips_through_its_dict() -> None:
    spec = load_spec("quick")
    again = parse_spec(spec.to_dict(), source=spec.source)
    assert again == spec


def test_cases_cross_the_top_grid_and_label_their_trials() -> None:
    spec = parse_spec(
        spec_with(
            sweep={
                "grid": {"seed": [0, 1]},
                "cases": [
                    {"name": "a", "grid": {"lr": [1e-3, 2e-3]}},
                    {"name": "b", "set": {"batch_size": 16}},
                ],
                "num_samples": 3,
            }
        )
    )
    variants = spec.sweep.variants()
    assert len(variants) == 6
    assert spec.n_trials == 18
    assert {v["case"] for v in variants} == {"a", "b"}
    params = {**spec.base_config(), VARIANT_KEY: variants[-1]}
    assert case_of(params) == "b"
    assert trial_config(params)["batch_size"] == 16
    assert "case" not in trial_config(params)


def test_an_objective_with_a_target_is_the_distance_to_it() -> None:
    spec = parse_spec(
        spec_with(
            sweep={
                "search": "optuna",
                "sample": {"lr": {"uniform": [1e-4, 1e-3]}},
                "objective": {"metric": "excess", "target": 2.0},
            }
        )
    )
    assert spec.sweep.objective is not None
    assert spec.sweep.objective.value({"excess": 1.5}) == pytest.approx(0.5)
    assert spec.sweep.objective.value({"excess": 3.0}) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("gpu", "shape"), [(0.25, {"cpu": 2.0, "gpu": 0.25}), (2, {"cpu": 2.0, "gpu": 2.0})]
)
def test_one_resource_shape_per_study_with_fractional_gpus(
    gpu: float, shape: dict[str, float]
) -> None:
    spec = parse_spec(spec_with(resources={"cpu": 2, "gpu": gpu}, compute={"device": "cuda"}))
    assert spec.resources.to_ray() == shape


def test_a_large_grid_is_checked_axis_by_axis_and_still_refused() -> None:
    grid = {"seed": list(range(70)), "order_seed": list(range(70)), "lr": [1e-3, -1.0]}
    with pytest.raises(ConfigError, match=r"^sweep\.grid\.lr=-1\.0 is not allowed: must be > 0"):
        parse_spec(spec_with(sweep={"grid": grid}))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"colour": "red"}, r"^colour='red' is not allowed: unknown key; spec keys: name, "),
        (
            {"model": {"colour": 1}},
            r"^model\.colour=1 is not allowed: unknown key; keys of "
            r"section 'model': model, size",
        ),
        (
            {"model": {"lr": 1e-3}},
            r"^model\.lr=0\.001 is not allowed: belongs in section "
            r"'recipe'",
        ),
        ({"task": [1, 2]}, r"^task=\[1, 2\] is not allowed: must be a mapping of config keys"),
        ({"recipe": {"lr": "fast"}}, r"^recipe\.lr='fast' is not allowed: must be a number"),
        ({"recipe": {"lr": 0}}, r"^recipe\.lr=0\.0 is not allowed: must be > 0"),
        ({"task": {"K": 0}}, r"^task\.K=0 is not allowed: must be an integer >= 1"),
        (
            {"recipe": {"batch_size": 500}},
            r"^recipe\.batch_size=500 is not allowed: must be "
            r"<= D=400",
        ),
        (
            {"model": {"lora_rank": 65, "size": "tiny"}},
            r"^model\.lora_rank=65 is not allowed: "
            r"must be <= the model width 64",
        ),
        (
            {"model": {"model": "lstm"}},
            r"^model\.model='lstm' is not allowed: must be one of "
            r"'gpt2' \| 'mlp'",
        ),
        (
            {"task": {"K": 4, "bases": 40000, "len_b": 2}},
            r"^task\.bases=40000 is not allowed: must be <= 36\*\*2 = 1296 unique base strings",
        ),
        ({"name": "my study"}, r"^name='my study' is not allowed: must be letters, digits"),
        ({"resources": {"cpu": 0}}, r"^resources\.cpu=0 is not allowed: must be > 0"),
        ({"resources": {"gpu": 1.5}}, r"^resources\.gpu=1\.5 is not allowed: must be a fraction"),
        ({"resources": {"gpu": "one"}}, r"^resources\.gpu='one' is not allowed: must be a number"),
        ({"resources": {"tpu": 1}}, r"^resources\.tpu=1 is not allowed: unknown key"),
        (
            {"compute": {"device": "cuda"}},
            r"^resources\.gpu=0 is not allowed: must be > 0 when "
            r"compute\.device is 'cuda'",
        ),
        ({"max_concurrent": 0}, r"^max_concurrent=0 is not allowed: must be an integer >= 1"),
        ({"max_failures": -1}, r"^max_failures=-1 is not allowed: must be an integer >= 0"),
        ({"time_budget_s": 0}, r"^time_budget_s=0 is not allowed: must be a number > 0"),
        ({"description": 3}, r"^description=3 is not allowed: must be a string"),
        ({"sweep": [1]}, r"^sweep=\[1\] is not allowed: must be a mapping"),
        ({"sweep": {"grids": {}}}, r"^sweep\.grids=\{\} is not allowed: unknown key"),
        (
            {"sweep": {"search": "bayes"}},
            r"^sweep\.search='bayes' is not allowed: must be one "
            r"of grid, optuna",
        ),
        (
            {"sweep": {"grid": {"lr": [1e-3, -1e-3]}}},
            r"^sweep\.grid\.lr=-0\.001 is not allowed: "
            r"must be > 0",
        ),
        (
            {"task": {"D": 400}, "sweep": {"grid": {"K": [4, 0]}}},
            r"^sweep\.grid\.K=0 is not allowed: must be an integer >= 1",
        ),
        (
            {"task": {"K": 4}, "sweep": {"grid": {"D": [400, 20]}}},
            r"^recipe\.batch_size=32 is not allowed: must be <= D=20 .*\(at D=20\)",
        ),
        (
            {"sweep": {"grid": {"lr": []}}},
            r"^sweep\.grid\.lr=\[\] is not allowed: must be a "
            r"non-empty list",
        ),
        (
            {"sweep": {"grid": {"lr": 1e-3}}},
            r"^sweep\.grid\.lr=0\.001 is not allowed: must be a "
            r"non-empty list",
        ),
        (
            {"sweep": {"grid": {"lr": [1e-3, 1e-3]}}},
            r"^sweep\.grid\.lr=\[0\.001, 0\.001\] is not "
            r"allowed: values must be distinct",
        ),
        (
            {"sweep": {"grid": {"speed": [1]}}},
            r"^sweep\.grid\.speed=\[1\] is not allowed: unknown "
            r"key; any trial config key can be an axis",
        ),
        (
            {"sweep": {"grid": {"batch_size": [16, 32]}}},
            r"^sweep\.grid\.batch_size=\[16, 32\] is not allowed: is also fixed in "
            r"recipe\.batch_size",
        ),
        (
            {"sweep": {"num_samples": 0}},
            r"^sweep\.num_samples=0 is not allowed: must be an "
            r"integer >= 1",
        ),
        (
            {"sweep": {"cases": {"a": 1}}},
            r"^sweep\.cases=\{'a': 1\} is not allowed: must be a "
            r"list of cases",
        ),
        (
            {"sweep": {"cases": [{"name": "a"}, {"name": "a"}]}},
            r"^sweep\.cases\[1\]\.name='a' is not allowed: must differ from the other case names",
        ),
        (
            {"sweep": {"cases": [{"sets": {}}]}},
            r"^sweep\.cases\[0\]\.sets=\{\} is not allowed: "
            r"unknown key; case keys: name, set, grid",
        ),
        (
            {"sweep": {"grid": {"lr": [1e-3]}, "cases": [{"set": {"lr": 2e-3}}]}},
            r"^sweep\.cases\[0\]\.lr=0\.002 is not allowed: is also in sweep\.grid",
        ),
        (
            {"sweep": {"cases": [{"set": {"lr": 1e-3}, "grid": {"lr": [2e-3]}}]}},
            r"^sweep\.cases\[0\]\.grid\.lr=\[0\.002\] is not allowed: is also in "
            r"sweep\.cases\[0\]\.set",
        ),
        (
            {"sweep": {"cases": [{"set": {"lr": -1.0}}]}},
            r"^sweep\.cases\[0\]\.set\.lr=-1\.0 is not allowed: must be > 0",
        ),
        (
            {"sweep": {"cases": [{"grid": {"K": [4, 40]}}]}},
            r"^sweep\.cases\[0\]\.grid\.K=40 is not allowed: must be <= alphabet_size=36",
        ),
        (
            {"sweep": {"sample": {"lr": [1e-3]}}},
            r"^sweep\.sample\.lr=\[0\.001\] is not allowed: "
            r"must be a mapping with one of uniform",
        ),
        (
            {"sweep": {"sample": {"lr": {"normal": [0, 1]}}}},
            r"^sweep\.sample\.lr=\{'normal': "
            r"\[0, 1\]\} is not allowed",
        ),
        (
            {"sweep": {"sample": {"lr": {"uniform": [1e-3]}}}},
            r"^sweep\.sample\.lr\.uniform="
            r"\[0\.001\] is not allowed: must be "
            r"a list \[low, high\]",
        ),
        (
            {"sweep": {"sample": {"lr": {"uniform": [1e-2, 1e-3]}}}},
            r"^sweep\.sample\.lr\.uniform=\[0\.01, 0\.001\] is not allowed: must have low < high",
        ),
        (
            {"sweep": {"sample": {"lr": {"loguniform": [0, 1e-3]}}}},
            r"^sweep\.sample\.lr\.loguniform=\[0, 0\.001\] is not allowed: bounds of a log scale",
        ),
        (
            {"sweep": {"sample": {"lr": {"uniform": ["a", "b"]}}}},
            r"^sweep\.sample\.lr\.uniform=\['a', 'b'\] is not allowed: bounds must be finite",
        ),
        (
            {"sweep": {"sample": {"lr": {"uniform": [-1e-3, 1e-3]}}}},
            r"^sweep\.sample\.lr=-0\.001 is not allowed: must be > 0",
        ),
        (
            {"sweep": {"sample": {"seed": {"int": [0, 2.5]}}}},
            r"^sweep\.sample\.seed\.int=\[0, 2\.5\] is not allowed: bounds must be integers",
        ),
        (
            {"sweep": {"sample": {"lr": {"uniform": [1e-4, 1e-3], "log": True}}}},
            r"^sweep\.sample\.lr\.log=True is not allowed: must be true or false, and only with "
            r"int",
        ),
        (
            {"model": {"size": "tiny"}, "sweep": {"sample": {"model": {"choice": []}}}},
            r"^sweep\.sample\.model\.choice=\[\] is not allowed: must be a non-empty list",
        ),
        (
            {
                "model": {"size": "tiny"},
                "sweep": {"sample": {"model": {"choice": ["gpt2", "rnn"]}}},
            },
            r"^sweep\.sample\.model='rnn' is not allowed: must be one of 'gpt2' \| 'mlp'",
        ),
        (
            {
                "recipe": {"batch_size": 32, "lr": 1e-3},
                "sweep": {"sample": {"lr": {"uniform": [1e-4, 1e-3]}}},
            },
            r"^sweep\.sample\.lr=.* is not allowed: is also fixed in recipe\.lr",
        ),
        (
            {"sweep": {"grid": {"lr": [1e-3]}, "sample": {"lr": {"uniform": [1e-4, 1e-3]}}}},
            r"^sweep\.sample\.lr=.* is not allowed: is also a grid axis",
        ),
        (
            {"sweep": {"search": "optuna", "grid": {"lr": [1e-3]}}},
            r"^sweep\.grid=\{'lr': \[0\.001\]\} is not allowed: not allowed with search 'optuna'",
        ),
        (
            {"sweep": {"search": "optuna", "objective": {"metric": "loss"}}},
            r"^sweep\.sample=\{\} is not allowed: must name at least one axis",
        ),
        (
            {"sweep": {"search": "optuna", "sample": {"lr": {"uniform": [1e-4, 1e-3]}}}},
            r"^sweep\.objective=None is not allowed: required with search 'optuna'",
        ),
        (
            {
                "sweep": {
                    "search": "optuna",
                    "sample": {"lora_targets": {"choice": [["c_attn"]]}},
                    "objective": {"metric": "loss"},
                }
            },
            r"^sweep\.sample\.lora_targets\.choice=\[\['c_attn'\]\] is not allowed: values must "
            r"be numbers, strings",
        ),
        (
            {"sweep": {"objective": {"metric": "accuracy"}}},
            r"^sweep\.objective\.metric='accuracy' is not allowed: must be one of loss, ",
        ),
        (
            {"sweep": {"objective": {"metric": "loss", "mode": "best"}}},
            r"^sweep\.objective\.mode='best' is not allowed: must be 'min' or 'max'",
        ),
        (
            {"sweep": {"objective": {"metric": "loss", "mode": "max", "target": 1}}},
            r"^sweep\.objective\.mode='max' is not allowed: must be 'min' with a target",
        ),
        (
            {"sweep": {"objective": {"metric": "loss", "target": "low"}}},
            r"^sweep\.objective\.target='low' is not allowed: must be a number or null",
        ),
        (
            {"sweep": {"objective": {"metric": "loss", "goal": 1}}},
            r"^sweep\.objective\.goal=1 is not allowed: unknown key; objective keys",
        ),
        ({"sweep": {"objective": 3}}, r"^sweep\.objective=3 is not allowed: must be a mapping"),
        ({"sweep": {"seed": -1}}, r"^sweep\.seed=-1 is not allowed: must be an integer >= 0"),
        ({"sweep": {"sample": 3}}, r"^sweep\.sample=3 is not allowed: must be a mapping"),
        ({"sweep": {"grid": 3}}, r"^sweep\.grid=3 is not allowed: must be a mapping"),
        ({"sweep": {"cases": [3]}}, r"^sweep\.cases\[0\]=3 is not allowed: must be a mapping"),
        (
            {"sweep": {"cases": [{"set": 3}]}},
            r"^sweep\.cases\[0\]\.set=3 is not allowed: must be "
            r"a mapping",
        ),
        (
            {"sweep": {"cases": [{"name": 3}]}},
            r"^sweep\.cases\[0\]\.name=3 is not allowed: must "
            r"be a string",
        ),
        (
            {"sweep": {"cases": [{"set": {"speed": 3}}]}},
            r"^sweep\.cases\[0\]\.set\.speed=3 is not allowed: unknown key",
        ),
        ({"resources": 2}, r"^resources=2 is not allowed: must be a mapping with cpu and gpu"),
    ],
)
def test_a_bad_spec_is_refused_with_one_line_naming_field_value_and_allowed(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_spec(spec_with(**changes))
    assert "\n" not in str(info.value)


def test_a_spec_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^spec=\[1, 2\] is not allowed: must be a mapping"):
        parse_spec([1, 2])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("task: {K: 4\n", r"^spec='f\.yaml' is not allowed: malformed YAML at line 2"),
        (
            "task: {K: 4}\ntask: {K: 5}\n",
            r"malformed YAML at line 2, column 1: duplicate key "
            r"'task'",
        ),
        ("a: b: c\n", r"malformed YAML at line 1, column 5: mapping values are not allowed"),
    ],
)
def test_malformed_yaml_is_one_line_with_its_position(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_yaml(text, "f.yaml")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("smok", r"^spec='smok' is not allowed: must be a YAML file or a preset: .*smoke"),
        ("missing.yaml", r"^spec='missing\.yaml' is not allowed: no such file; presets: "),
        ("dir/missing", r"^spec='dir/missing' is not allowed: no such file"),
    ],
)
def test_an_unknown_preset_or_missing_file_is_refused(source: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_spec(source)


def test_a_base_that_names_a_local_directory_is_made_absolute_wherever_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bases" / "a").mkdir(parents=True)
    (tmp_path / "bases" / "b").mkdir()
    where = str(tmp_path / "bases")
    fixed = parse_spec(spec_with(model={"model": "gpt2", "base": "bases/a"}))
    assert fixed.config["base"] == f"{where}/a"
    grid = parse_spec(spec_with(sweep={"grid": {"base": ["bases/a", "./bases/b", "gpt2"]}}))
    assert grid.sweep.grid["base"] == (f"{where}/a", f"{where}/b", "gpt2")
    cases = parse_spec(spec_with(sweep={"cases": [{"name": "c", "set": {"base": "bases/b"}}]}))
    assert cases.sweep.cases[0].set["base"] == f"{where}/b"


@pytest.mark.parametrize("base", ["./missing", "/no/such/dir", "~/no-such-base-here"])
def test_a_base_written_as_a_path_that_does_not_exist_is_refused(base: str) -> None:
    with pytest.raises(ConfigError, match="no such directory") as info:
        parse_spec(spec_with(model={"model": "gpt2", "base": base}))
    assert base in str(info.value) and "\n" not in str(info.value)
