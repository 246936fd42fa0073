"""Trial config validation: every refusal names the field, the value and what is allowed."""

import math

import pytest

from trainables.config import FIELD_NAMES, ConfigError, TrialConfig, escape_rule, resolve


def test_defaults_resolve_with_both_sizes_derived() -> None:
    cfg = resolve({})
    assert cfg.D == cfg.bases * cfg.K
    assert cfg.log_k == pytest.approx(math.log(cfg.K))


@pytest.mark.parametrize(
    ("raw", "D", "bases"),
    [
        ({"K": 5, "D": 500}, 500, 100),
        ({"K": 5, "bases": 40}, 200, 40),
        ({"K": 4, "D": 800, "bases": 200}, 800, 200),
    ],
)
def test_d_and_bases_derive_each_other(raw: dict, D: int, bases: int) -> None:
    cfg = resolve(raw)
    assert (cfg.D, cfg.bases) == (D, bases)


@pytest.mark.parametrize(
    ("raw", "field", "fragment"),
    [
        ({"colour": 1}, "colour", "unknown key"),
        ({"lr": 0}, "lr", "must be > 0"),
        ({"lr": -1e-3}, "lr", "must be > 0"),
        ({"lr": "fast"}, "lr", "must be a number"),
        ({"lr": float("nan")}, "lr", "finite"),
        ({"K": 0}, "K", ">= 1"),
        ({"K": 2.5}, "K", "must be an integer"),
        ({"K": True}, "K", "must be an integer"),
        ({"K": 37}, "K", "alphabet_size=36"),
        ({"K": 10, "D": 1005}, "D", "multiple of K"),
        ({"K": 10, "D": 100, "bases": 20}, "D", "bases * K"),
        ({"D": 1000, "batch_size": 1001}, "batch_size", "D=1000"),
        ({"lora_rank": 129}, "lora_rank", "model width 128"),
        ({"lora_rank": -1}, "lora_rank", ">= 0"),
        ({"model": "mlp", "lora_rank": 4}, "lora_rank", "mlp"),
        ({"model": "lstm"}, "model", "'gpt2' | 'mlp'"),
        ({"size": "huge"}, "size", "tiny"),
        ({"task": "sorting"}, "task", "'disambiguation' | 'mapping'"),
        ({"direction": "sideways"}, "direction", "'forward' | 'inverse'"),
        ({"optimizer": "lion"}, "optimizer", "'adamw' | 'sgd'"),
        ({"beta2": 1.0}, "beta2", "[0, 1)"),
        ({"escape_fraction": 1.5}, "escape_fraction", "(0, 1)"),
        ({"alphabet_size": 40}, "alphabet_size", "[2, 36]"),
        ({"device": "tpu"}, "device", "'auto'"),
        ({"lora_targets": "c_attn"}, "lora_targets", "list of strings"),
        (
            {"len_z": 1, "K": 20, "alphabet_size": 10, "distinct_first": False},
            "K",
            "selector strings",
        ),
        (
            {"task": "mapping", "string_len": 2, "alphabet_size": 4, "K": 2, "D": 20},
            "D",
            "unique preimage strings",
        ),
        ({"len_a": 2, "alphabet_size": 4, "K": 4, "bases": 5}, "bases", "distinct first"),
        ({"stop_on_escape": "yes"}, "stop_on_escape", "true or false"),
        ({"seed_mode": "vmap"}, "seed_mode", "'auto' | 'stacked' | 'sequential'"),
        ({"seed_mode": "stacked", "lora_rank": 4}, "seed_mode", "with LoRA"),
        ({"plateau_onset": "first"}, "plateau_onset", "'marginal' | 'watched'"),
    ],
)
def test_refused_configs_name_field_value_and_rule(raw: dict, field: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(raw)
    message = str(info.value)
    assert info.value.field == field
    assert message.startswith(f"{field}=")
    assert fragment in message
    assert "\n" not in message


def test_unknown_keys_are_kept_aside_when_allowed() -> None:
    cfg = resolve({"K": 5, "note": "pilot"}, allow_extra=True)
    assert cfg.extra == {"note": "pilot"}


def test_to_dict_round_trips_through_resolve() -> None:
    cfg = resolve({"K": 5, "D": 500, "lr": 2e-3, "lora_rank": 8, "model": "gpt2"})
    again = resolve(cfg.to_dict())
    assert again == cfg
    assert set(cfg.to_dict()) == set(FIELD_NAMES)


def test_temperature_is_lr_over_batch() -> None:
    cfg = resolve({"lr": 1e-3, "batch_size": 128})
    assert cfg.temperature == pytest.approx(1e-3 / 128)
    assert isinstance(cfg, TrialConfig)


@pytest.mark.parametrize(
    ("raw", "stacked"),
    [
        ({}, False),
        ({"num_seeds": 4}, True),
        ({"num_seeds": 4, "model": "mlp"}, True),
        ({"num_seeds": 4, "lora_rank": 8}, False),
        ({"num_seeds": 4, "seed_mode": "sequential"}, False),
        ({"num_seeds": 1, "seed_mode": "stacked"}, True),
    ],
)
def test_seeds_stack_by_default_when_there_are_several_and_no_lora(
    raw: dict, stacked: bool
) -> None:
    assert resolve(raw).stacked is stacked


@pytest.mark.parametrize(
    ("raw", "onset"),
    [
        ({}, "marginal"),
        ({"plateau_onset": "watched"}, "watched"),
        # without distinct first symbols the marginal's first-token loss is not log K
        ({"distinct_first": False}, "watched"),
    ],
)
def test_the_plateau_onset_of_the_escape_rule(raw: dict, onset: str) -> None:
    assert escape_rule(resolve(raw)).onset == onset
