"""Trial configuration: every key a study may sweep, with its validation.

A trial config is a flat mapping (so that any key can be a Ray Tune axis). It is
turned into a frozen :class:`TrialConfig` by :func:`resolve`, which refuses unknown
keys, wrong types and impossible requests with a :class:`ConfigError` naming the
field, the value and what is allowed. This module imports neither torch nor Ray, so
specs are checked before anything heavy starts.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args, get_origin, get_type_hints

from analysis.escape import EscapeRule


class ConfigError(ValueError):
    """A config value that is not allowed. ``str(err)`` is a one-line message."""

    def __init__(self, field_name: str, value: Any, allowed: str) -> None:
        self.field = field_name
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field_name}={value!r} is not allowed: {allowed}")


# GPT-2 size presets: layers, heads, model width, MLP width.
GPT2_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 64, "n_inner": 256},
    "paper": {"n_layer": 4, "n_head": 4, "n_embd": 128, "n_inner": 512},
    "small": {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_inner": 3072},
}
MAX_ALPHABET = 36  # a-z0-9

Task = Literal["disambiguation", "mapping"]
Direction = Literal["forward", "inverse"]
Model = Literal["gpt2", "mlp"]
Optimizer = Literal["adamw", "sgd"]
Schedule = Literal["constant", "cosine"]
Precision = Literal["fp32", "bf16"]
LoraLrScaling = Literal["none", "inverse_rank"]
SeedMode = Literal["auto", "stacked", "sequential"]
PlateauOnset = Literal["marginal", "watched"]


@dataclass(frozen=True)
class TrialConfig:
    """One trial. Glossary: D = training examples, bases = D / K."""

    # task
    task: Task = "disambiguation"
    direction: Direction = "forward"  # mapping task only
    K: int = 10
    D: int | None = None
    bases: int | None = None
    alphabet_size: int = 36
    len_b: int = 6  # disambiguation: base string length
    len_a: int = 4  # disambiguation: target string length
    len_z: int = 2  # disambiguation: selector length
    distinct_first: bool = True  # the K targets of a base start with distinct symbols
    string_len: int = 8  # mapping: length of both strings

    # model
    model: Model = "gpt2"
    size: str = "paper"
    base: str | None = None  # local checkpoint directory or hub id (GPT-2 only)
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    n_inner: int | None = None
    lora_rank: int | None = None  # None or 0: train every weight
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("c_attn", "c_proj")
    lora_lr_scaling: LoraLrScaling = "none"  # inverse_rank: lr * 8 / rank
    mlp_width: int = 512
    mlp_depth: int = 2

    # recipe
    optimizer: Optimizer = "adamw"
    lr: float = 1e-3
    batch_size: int = 128
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.9  # SGD only
    warmup_steps: int = 500
    schedule: Schedule = "constant"
    min_lr_ratio: float = 0.0  # cosine only
    grad_clip: float | None = 1.0

    # budget, evaluation, stopping
    max_steps: int = 20000
    eval_every: int = 100
    eval_size: int = 512
    checkpoint_every: int = 10  # evaluations between checkpoints
    stop_on_escape: bool = True
    escape_fraction: float = 0.5
    escape_confirm: int = 3
    escape_tail: int = 0
    plateau_tolerance: float = 0.05
    # marginal: the plateau starts once the first-target-token loss is at log K too
    # (the marginal is learned); watched: once the watched loss is (see analysis.escape)
    plateau_onset: PlateauOnset = "marginal"
    converge_tol: float = 0.05

    # seeds and device
    seed: int = 0  # initialization
    data_seed: int | None = None  # None: same as seed
    order_seed: int | None = None  # None: same as seed
    num_seeds: int = 1  # S models trained at once: seeds seed .. seed + S - 1
    # stacked: the S seeds as one model with stacked weights; sequential: one after the
    # other; auto: stacked when S > 1 and the model allows it (not LoRA)
    seed_mode: SeedMode = "auto"
    device: str = "auto"
    precision: Precision = "fp32"

    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    # derived ---------------------------------------------------------------
    @property
    def n_examples(self) -> int:
        """D, the number of training examples."""
        assert self.D is not None  # set by resolve()
        return self.D

    @property
    def n_bases(self) -> int:
        assert self.bases is not None
        return self.bases

    @property
    def width(self) -> int:
        if self.model == "mlp":
            return self.mlp_width
        return self.n_embd or GPT2_SIZES[self.size]["n_embd"]

    @property
    def log_k(self) -> float:
        return math.log(self.K)

    @property
    def temperature(self) -> float:
        return self.lr / self.batch_size

    @property
    def resolved_data_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed

    @property
    def resolved_order_seed(self) -> int:
        return self.seed if self.order_seed is None else self.order_seed

    @property
    def stacked(self) -> bool:
        """Whether the seeds train as one stacked model (see ``seed_mode``)."""
        if self.seed_mode == "auto":
            return self.num_seeds > 1 and not self.lora_rank
        return self.seed_mode == "stacked"

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out["lora_targets"] = list(self.lora_targets)
        return out


FIELD_NAMES = tuple(f.name for f in fields(TrialConfig) if f.name != "extra")
_HINTS = get_type_hints(TrialConfig)


def resolve(raw: Mapping[str, Any], *, allow_extra: bool = False) -> TrialConfig:
    """Validates a flat config mapping and fills in derived values.

    Args:
        raw: config keys; missing keys take their defaults.
        allow_extra: keep unknown keys in ``extra`` instead of refusing them.

    Returns:
        The validated config, with both ``D`` and ``bases`` set.

    Raises:
        ConfigError: an unknown key, a wrong type, or an impossible request.
    """
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in FIELD_NAMES:
            if allow_extra:
                extra[key] = value
                continue
            raise ConfigError(key, value, f"unknown key; known keys: {', '.join(FIELD_NAMES)}")
        values[key] = _coerce(key, value, _HINTS[key])
    cfg = TrialConfig(**values, extra=extra)
    cfg = _derive_sizes(cfg)
    _check(cfg)
    return cfg


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Checks ``value`` against a type hint; ints are accepted where floats are."""
    origin = get_origin(hint)
    args = get_args(hint)
    if origin is Literal:
        if value not in args:
            allowed = " | ".join(repr(a) for a in args)
            raise ConfigError(name, value, f"must be one of {allowed}")
        return value
    if hint is type(None):
        if value is not None:
            raise ConfigError(name, value, "must be null")
        return None
    if args and type(None) in args:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0])
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(name, value, "must be a list of strings")
        if not all(isinstance(v, str) and v for v in value) or not value:
            raise ConfigError(name, value, "must be a non-empty list of strings")
        return tuple(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(name, value, "must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(name, value, "must be an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(name, value, "must be a number")
        if not math.isfinite(value):
            raise ConfigError(name, value, "must be a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(name, value, "must be a non-empty string")
        return value
    raise TypeError(f"no coercion for {name}: {hint}")  # a bug in TrialConfig, not input


def _derive_sizes(cfg: TrialConfig) -> TrialConfig:
    """Fills whichever of D and bases is missing (bases = D / K)."""
    if cfg.K < 1:
        raise ConfigError("K", cfg.K, "must be an integer >= 1")
    D, bases = cfg.D, cfg.bases
    if D is None and bases is None:
        bases = 100
    if D is not None and D < 1:
        raise ConfigError("D", D, "must be an integer >= 1")
    if bases is not None and bases < 1:
        raise ConfigError("bases", bases, "must be an integer >= 1")
    if D is None:
        assert bases is not None
        D = bases * cfg.K
    elif bases is None:
        if D % cfg.K:
            raise ConfigError("D", D, f"must be a multiple of K={cfg.K} (bases = D / K)")
        bases = D // cfg.K
    elif D != bases * cfg.K:
        raise ConfigError("D", D, f"must equal bases * K = {bases * cfg.K} when both are given")
    return dataclasses.replace(cfg, D=D, bases=bases)


def _positive(cfg: TrialConfig, name: str, strict: bool = True) -> None:
    value = getattr(cfg, name)
    if value is None:
        return
    if (strict and value <= 0) or (not strict and value < 0):
        raise ConfigError(name, value, "must be > 0" if strict else "must be >= 0")


def _check(cfg: TrialConfig) -> None:
    for name in (
        "lr",
        "batch_size",
        "eps",
        "max_steps",
        "eval_every",
        "eval_size",
        "checkpoint_every",
        "escape_confirm",
        "plateau_tolerance",
        "converge_tol",
        "num_seeds",
        "mlp_width",
        "mlp_depth",
        "lora_alpha",
        "len_b",
        "len_a",
        "len_z",
        "string_len",
        "grad_clip",
    ):
        _positive(cfg, name)
    for name in (
        "weight_decay",
        "momentum",
        "warmup_steps",
        "escape_tail",
        "lora_dropout",
        "min_lr_ratio",
        "seed",
        "data_seed",
        "order_seed",
    ):
        _positive(cfg, name, strict=False)
    for name in ("beta1", "beta2"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            raise ConfigError(name, getattr(cfg, name), "must be in [0, 1)")
    if not 0.0 < cfg.escape_fraction < 1.0:
        raise ConfigError("escape_fraction", cfg.escape_fraction, "must be in (0, 1)")
    if cfg.lora_dropout >= 1.0:
        raise ConfigError("lora_dropout", cfg.lora_dropout, "must be in [0, 1)")
    if cfg.min_lr_ratio > 1.0:
        raise ConfigError("min_lr_ratio", cfg.min_lr_ratio, "must be in [0, 1]")
    if not 2 <= cfg.alphabet_size <= MAX_ALPHABET:
        raise ConfigError("alphabet_size", cfg.alphabet_size, f"must be in [2, {MAX_ALPHABET}]")
    if cfg.device not in ("auto", "cpu", "cuda") and not cfg.device.startswith("cuda:"):
        raise ConfigError("device", cfg.device, "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
    _check_model(cfg)
    _check_task(cfg)
    if cfg.batch_size > cfg.n_examples:
        raise ConfigError(
            "batch_size", cfg.batch_size, f"must be <= D={cfg.n_examples} (the training examples)"
        )


def _looks_local(base: str) -> bool:
    """A base written as a filesystem path rather than a hub id."""
    return base.startswith(("/", ".", "~"))


def _check_model(cfg: TrialConfig) -> None:
    if cfg.model == "gpt2" and cfg.base is None and cfg.size not in GPT2_SIZES:
        raise ConfigError("size", cfg.size, f"must be one of {', '.join(GPT2_SIZES)}")
    if cfg.model == "mlp":
        if cfg.lora_rank:
            raise ConfigError("lora_rank", cfg.lora_rank, "must be null for model 'mlp'")
        if cfg.base is not None:
            raise ConfigError("base", cfg.base, "must be null for model 'mlp'")
    if (
        cfg.base is not None
        and _looks_local(cfg.base)
        and not os.path.isdir(os.path.expanduser(cfg.base))
    ):
        raise ConfigError(
            "base",
            cfg.base,
            "no such directory; must be a local checkpoint directory "
            "(`phasetune base DIR` makes one) or a hub id such as 'gpt2'",
        )
    if cfg.lora_rank is not None:
        if cfg.lora_rank < 0:
            raise ConfigError("lora_rank", cfg.lora_rank, "must be >= 0 (0 or null: no LoRA)")
        if cfg.lora_rank > cfg.width:
            raise ConfigError(
                "lora_rank", cfg.lora_rank, f"must be <= the model width {cfg.width}"
            )
    if cfg.seed_mode == "stacked" and cfg.lora_rank:
        raise ConfigError(
            "seed_mode",
            cfg.seed_mode,
            "must be 'auto' or 'sequential' with LoRA (lora_rank > 0): LoRA seeds train "
            "one after the other",
        )
    for name in ("n_layer", "n_head", "n_embd", "n_inner"):
        _positive(cfg, name)
    n_head = cfg.n_head or GPT2_SIZES.get(cfg.size, {}).get("n_head")
    if cfg.model == "gpt2" and cfg.base is None and n_head and cfg.width % n_head:
        raise ConfigError("n_embd", cfg.width, f"must be a multiple of n_head={n_head}")


def _check_task(cfg: TrialConfig) -> None:
    a = cfg.alphabet_size
    if cfg.task == "disambiguation":
        if cfg.distinct_first and cfg.K > a:
            raise ConfigError(
                "K", cfg.K, f"must be <= alphabet_size={a} when distinct_first is true"
            )
        _room("K", cfg.K, a, cfg.len_z, "selector strings")
        _room("bases", cfg.n_bases, a, cfg.len_b, "unique base strings")
        if cfg.distinct_first:
            # each first symbol can start at most a ** (len_a - 1) targets
            per_symbol = a ** (cfg.len_a - 1)
            if cfg.n_bases > per_symbol:
                raise ConfigError(
                    "bases",
                    cfg.n_bases,
                    f"must be <= {per_symbol} so that every base gets K targets with "
                    f"distinct first symbols (alphabet {a}, len_a {cfg.len_a})",
                )
        _room("D", cfg.n_examples, a, cfg.len_a, "unique target strings")
    else:
        _room("D", cfg.n_examples, a, cfg.string_len, "unique preimage strings")
        _room("bases", cfg.n_bases, a, cfg.string_len, "unique image strings")


def _room(name: str, count: int, alphabet: int, length: int, what: str) -> None:
    if count > alphabet**length:
        raise ConfigError(
            name,
            count,
            f"must be <= {alphabet}**{length} = {alphabet**length} {what}",
        )


def escape_rule(cfg: TrialConfig) -> EscapeRule:
    """The escape rule a trial config asks for, as the loop and the stopper apply it.

    Args:
        cfg: a resolved trial config.

    Returns:
        The rule: ``escape`` mode for the disambiguation task, ``converge`` otherwise.
    """
    return EscapeRule(
        fraction=cfg.escape_fraction,
        confirm=cfg.escape_confirm,
        plateau_tolerance=cfg.plateau_tolerance,
        tail=cfg.escape_tail,
        mode="escape" if cfg.task == "disambiguation" else "converge",
        converge_tol=cfg.converge_tol,
        onset=cfg.plateau_onset if cfg.distinct_first else "watched",
    )


# the per-seed metric the ``marginal`` plateau onset reads (see analysis.escape)
MARGINAL_METRIC = "first_token_loss"


def watched_metric(cfg: TrialConfig) -> str:
    """The per-seed metric the escape rule watches: the candidate-set loss or the loss."""
    return "candidate_loss" if cfg.task == "disambiguation" else "loss"
