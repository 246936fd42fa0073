"""Study specs: one YAML file declares the trials of a study.

A spec groups the trial config (see :mod:`trainables.config`) into readable sections
and adds what a study needs on top: the sweep, the resources of one trial and the
concurrency. Example::

    name: temperature
    task: {task: disambiguation, K: 10, D: 10000}
    model: {model: gpt2, size: paper}
    recipe: {lr: 1.0e-3, batch_size: 128}
    budget: {max_steps: 20000, eval_every: 100}
    stop: {escape_fraction: 0.5, escape_confirm: 3}
    sweep:
      grid: {batch_size: [64, 128, 256], seed: [0, 1, 2]}
    resources: {cpu: 1, gpu: 0.25}

Sweep forms:

- ``grid``: every combination of the listed values.
- ``cases``: a union of sub-sweeps; each case ``set``s fixed values and has its own
  ``grid``; the top-level grid is crossed with every case.
- ``sample``: distributions drawn once per trial: ``{uniform: [lo, hi]}``,
  ``{loguniform: [lo, hi]}``, ``{int: [lo, hi], log: false}`` (inclusive),
  ``{choice: [a, b]}``.
- ``num_samples``: repeats of every grid point (or draws, or Optuna trials).
- ``search: optuna`` with an ``objective`` turns ``sample`` into a define-by-run
  Optuna search (adaptive refinement); ``objective.target`` minimizes
  ``|metric - target|`` to home in on a transition such as the capacity wall.

Every grid point and the bounds of every distribution are validated through
:func:`trainables.config.resolve` before anything starts, so a bad spec is refused
with a one-line :class:`~trainables.config.ConfigError`.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainables.config import FIELD_NAMES, ConfigError, TrialConfig, resolve

# First config field of each spec section; a section runs to the next one's start.
_SECTION_STARTS = (
    ("task", "task"),
    ("model", "model"),
    ("recipe", "optimizer"),
    ("budget", "max_steps"),
    ("stop", "stop_on_escape"),
    ("seeds", "seed"),
    ("compute", "device"),
)
SECTIONS = tuple(name for name, _ in _SECTION_STARTS)
SPEC_KEYS = (
    "name",
    "description",
    *SECTIONS,
    "sweep",
    "resources",
    "max_concurrent",
    "max_failures",
    "time_budget_s",
)
SWEEP_KEYS = ("grid", "cases", "sample", "num_samples", "search", "objective", "seed")
CASE_KEYS = ("name", "set", "grid")
SEARCHES = ("grid", "optuna")
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
# Scalar metrics of every report that an Optuna objective may use.
OBJECTIVE_METRICS = ("loss", "candidate_loss", "excess", "step", "n_escaped", "n_resolved")
VARIANT_KEY = "variant"  # the trial config key that carries one grid point
CASE_LABEL = "case"  # inside a variant: the case name, not a config key
OBJECTIVE_KEY = "objective"  # the reported metric an Optuna search optimizes
_MAX_CHECKS = 4096  # resolve() calls before validation falls back to one axis at a time
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _section_of_fields() -> dict[str, str]:
    starts = {start: name for name, start in _SECTION_STARTS}
    missing = [start for start in starts if start not in FIELD_NAMES]
    if missing:  # the trial config changed under the spec layout: a bug, not input
        raise RuntimeError(f"spec sections start at unknown config fields: {missing}")
    out: dict[str, str] = {}
    current = SECTIONS[0]
    for name in FIELD_NAMES:
        current = starts.get(name, current)
        out[name] = current
    return out


SECTION_OF = _section_of_fields()


@dataclass(frozen=True)
class Distribution:
    """A sampled axis: ``kind`` is one of :data:`DISTRIBUTIONS`."""

    kind: str
    low: float | int | None = None
    high: float | int | None = None
    values: tuple[Any, ...] = ()
    log: bool = False

    def bounds(self) -> tuple[Any, ...]:
        """Values that validation tries: both bounds, or every choice."""
        if self.kind == "choice":
            return self.values
        return (self.low, self.high)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "choice":
            return {"choice": list(self.values)}
        out: dict[str, Any] = {self.kind: [self.low, self.high]}
        if self.kind == "int":
            out["log"] = self.log
        return out


@dataclass(frozen=True)
class Case:
    """One sub-sweep: fixed overrides and a grid of its own."""

    name: str
    set: dict[str, Any]
    grid: dict[str, tuple[Any, ...]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "set": dict(self.set),
            "grid": {k: list(v) for k, v in self.grid.items()},
        }


@dataclass(frozen=True)
class Objective:
    """What an Optuna search optimizes: a reported metric, or its distance to a target."""

    metric: str
    mode: str = "min"
    target: float | None = None

    def value(self, metrics: Mapping[str, Any]) -> float:
        """The objective of one report (``|metric - target|`` when a target is set)."""
        raw = metrics.get(self.metric)
        value = float("nan") if raw is None else float(raw)
        return abs(value - self.target) if self.target is not None else value

    @property
    def search_mode(self) -> str:
        return "min" if self.target is not None else self.mode

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "mode": self.mode, "target": self.target}


@dataclass(frozen=True)
class Sweep:
    """The axes of a study and how they are searched."""

    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    cases: tuple[Case, ...] = ()
    sample: dict[str, Distribution] = field(default_factory=dict)
    num_samples: int = 1
    search: str = "grid"
    objective: Objective | None = None
    seed: int | None = None

    @property
    def axes(self) -> tuple[str, ...]:
        """Config keys that vary between trials, in declaration order."""
        names = list(self.grid)
        for case in self.cases:
            names += [k for k in (*case.set, *case.grid) if k not in names]
        names += [k for k in self.sample if k not in names]
        return tuple(names)

    def variants(self) -> list[dict[str, Any]]:
        """Every grid point: the top grid crossed with each case (one empty point if none)."""
        top = _product(self.grid)
        if not self.cases:
            return top
        out = []
        for case in self.cases:
            for point in _product(case.grid):
                for base in top:
                    out.append({CASE_LABEL: case.name, **case.set, **point, **base})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "grid": {k: list(v) for k, v in self.grid.items()},
            "cases": [c.to_dict() for c in self.cases],
            "sample": {k: d.to_dict() for k, d in self.sample.items()},
            "num_samples": self.num_samples,
            "search": self.search,
            "objective": self.objective.to_dict() if self.objective else None,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class Resources:
    """The resource shape of every trial of a study."""

    cpu: float = 1.0
    gpu: float = 0.0

    def to_ray(self) -> dict[str, float]:
        return {"cpu": self.cpu, "gpu": self.gpu}


@dataclass(frozen=True)
class StudySpec:
    """A validated study spec.

    ``config`` holds the fixed trial keys (flat, as :func:`trainables.config.resolve`
    takes them); ``sweep`` the varying ones.
    """

    name: str
    config: dict[str, Any]
    sweep: Sweep = field(default_factory=Sweep)
    resources: Resources = field(default_factory=Resources)
    description: str = ""
    max_concurrent: int | None = None
    max_failures: int = 2
    time_budget_s: float | None = None
    source: str = ""

    @property
    def axes(self) -> tuple[str, ...]:
        return self.sweep.axes

    @property
    def n_trials(self) -> int:
        """Trials the study will run."""
        if self.sweep.search == "optuna":
            return self.sweep.num_samples
        return len(self.sweep.variants()) * self.sweep.num_samples

    def base_config(self) -> dict[str, Any]:
        """Every config key with its study-wide value (defaults filled in).

        Recorded with every trial so that a trial's params hold its whole config.
        """
        defaults = TrialConfig().to_dict()
        return {**defaults, **self.config}

    def to_dict(self) -> dict[str, Any]:
        """The spec as YAML-shaped data; :func:`parse_spec` reads it back."""
        out: dict[str, Any] = {"name": self.name, "description": self.description}
        for section in SECTIONS:
            keys = {k: v for k, v in self.config.items() if SECTION_OF[k] == section}
            if keys:
                out[section] = keys
        out["sweep"] = self.sweep.to_dict()
        out["resources"] = {"cpu": self.resources.cpu, "gpu": self.resources.gpu}
        out["max_concurrent"] = self.max_concurrent
        out["max_failures"] = self.max_failures
        out["time_budget_s"] = self.time_budget_s
        return out


def trial_config(params: Mapping[str, Any]) -> dict[str, Any]:
    """The flat trial config of a trial's params (its grid point merged in).

    Args:
        params: a trial's config as Ray stores it (``params.json``).

    Returns:
        A mapping that :func:`trainables.config.resolve` accepts.
    """
    flat = {k: v for k, v in params.items() if k != VARIANT_KEY}
    variant = params.get(VARIANT_KEY) or {}
    flat.update({k: v for k, v in variant.items() if k != CASE_LABEL})
    return flat


def case_of(params: Mapping[str, Any]) -> str | None:
    """The case name recorded in a trial's params, if the study has cases."""
    variant = params.get(VARIANT_KEY) or {}
    return variant.get(CASE_LABEL)


# loading ---------------------------------------------------------------------


def load_spec(source: str | Path) -> StudySpec:
    """Loads and validates a spec from a preset name or a YAML file.

    Args:
        source: a preset name (see :func:`study.presets.names`) or a path.

    Returns:
        The validated spec.

    Raises:
        ConfigError: unknown preset, missing file, malformed YAML or a bad spec.
    """
    from study import presets

    path = Path(source)
    if path.is_file():
        return parse_spec(load_yaml(path.read_text(), str(path)), source=str(path))
    if str(source) in presets.names():
        text = presets.read_text(str(source))
        return parse_spec(load_yaml(text, str(source)), source=str(source))
    known = ", ".join(presets.names())
    if path.suffix in (".yaml", ".yml") or path.parent != Path("."):
        raise ConfigError("spec", str(source), f"no such file; presets: {known}")
    raise ConfigError("spec", str(source), f"must be a YAML file or a preset: {known}")


class _Loader(yaml.SafeLoader):
    """Safe YAML with ``1e-3`` read as a number and duplicate keys refused."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    # YAML 1.2 reads 1e-3 as a float; PyYAML's 1.1 rules want a dot in the mantissa
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str, where: str) -> Any:
    """Parses YAML text; errors become one-line :class:`ConfigError`.

    Args:
        text: the YAML document.
        where: the file or preset name, for the message.

    Returns:
        The parsed document.

    Raises:
        ConfigError: malformed YAML.
    """
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("spec", where, f"malformed YAML{at}: {problem}") from None


# parsing ---------------------------------------------------------------------


def parse_spec(data: Any, source: str = "") -> StudySpec:
    """Validates parsed YAML data into a :class:`StudySpec`.

    Args:
        data: the parsed spec document.
        source: where it came from (preset name or path), recorded in the spec.

    Returns:
        The validated spec; every trial config it can produce resolves.

    Raises:
        ConfigError: a one-line message naming the field, the value and what is allowed.
    """
    if not isinstance(data, Mapping):
        raise ConfigError("spec", _short(data), "must be a mapping of spec keys")
    _refuse_unknown(data, SPEC_KEYS, "", "spec keys")
    config = _parse_sections(data)
    sweep = _parse_sweep(data.get("sweep") or {}, config)
    spec = StudySpec(
        name=check_name(data.get("name", Path(source).stem or "study")),
        config=config,
        sweep=sweep,
        resources=_parse_resources(data.get("resources") or {}),
        description=_parse_str("description", data.get("description", "")),
        max_concurrent=_parse_int("max_concurrent", data.get("max_concurrent"), 1, True),
        max_failures=_parse_int("max_failures", data.get("max_failures", 2), 0),
        time_budget_s=_parse_positive("time_budget_s", data.get("time_budget_s")),
        source=source,
    )
    _check_device(spec)
    check_trials(spec)
    return spec


def _check_device(spec: StudySpec) -> None:
    device = spec.config.get("device", "auto")
    if isinstance(device, str) and device.startswith("cuda") and spec.resources.gpu == 0:
        raise ConfigError("resources.gpu", 0, f"must be > 0 when compute.device is {device!r}")


def _refuse_unknown(data: Mapping[str, Any], known: Sequence[str], where: str, what: str) -> None:
    for key in data:
        if key not in known:
            raise ConfigError(
                f"{where}{_key_text(key)}",
                _short(data[key]),
                f"unknown key; {what}: {', '.join(known)}",
            )


def _key_text(key: Any) -> str:
    """A key as it can stand in a one-line message: quoted when not plain printable text."""
    text = str(key)
    plain = isinstance(key, str) and text.isprintable() and text.strip() == text and text
    return text if plain else repr(key)


def _parse_sections(data: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for section in SECTIONS:
        block = data.get(section)
        if block is None:
            continue
        if not isinstance(block, Mapping):
            raise ConfigError(section, _short(block), "must be a mapping of config keys")
        for key, value in block.items():
            if key not in SECTION_OF:
                keys = [k for k, s in SECTION_OF.items() if s == section]
                raise ConfigError(
                    f"{section}.{key}",
                    value,
                    f"unknown key; keys of section '{section}': {', '.join(keys)}",
                )
            if SECTION_OF[key] != section:
                raise ConfigError(
                    f"{section}.{key}", value, f"belongs in section '{SECTION_OF[key]}'"
                )
            config[key] = _anchor_path(key, value)
    return config


def _anchor_path(key: str, value: Any) -> Any:
    """A ``base`` that names a local directory, made absolute.

    Trials run with the trial directory as their working directory, so a path relative
    to where the study was launched would not be found there; a hub id is kept as it is.
    """
    if key == "base" and isinstance(value, str) and value and Path(value).expanduser().is_dir():
        return str(Path(value).expanduser().resolve())
    return value


def _parse_sweep(raw: Any, config: Mapping[str, Any]) -> Sweep:
    if not isinstance(raw, Mapping):
        raise ConfigError("sweep", _short(raw), "must be a mapping")
    _refuse_unknown(raw, SWEEP_KEYS, "sweep.", "sweep keys")
    search = raw.get("search", "grid")
    if search not in SEARCHES:
        raise ConfigError("sweep.search", search, f"must be one of {', '.join(SEARCHES)}")
    grid = _parse_grid(raw.get("grid") or {}, "sweep.grid")
    for key in grid:
        if key in config:
            raise ConfigError(
                f"sweep.grid.{key}",
                list(grid[key]),
                f"is also fixed in {SECTION_OF[key]}.{key}; give it in one place",
            )
    cases = _parse_cases(raw.get("cases") or [], grid)
    if search == "optuna" and (grid or cases):
        where = "sweep.grid" if grid else "sweep.cases"
        raise ConfigError(
            where,
            _short(raw.get("grid") or raw.get("cases")),
            "not allowed with search 'optuna'; use sweep.sample (choice for a list of values)",
        )
    sample = _parse_sample(raw.get("sample") or {}, config, grid, cases, search)
    objective = _parse_objective(raw.get("objective"), search)
    if search == "optuna" and not sample:
        raise ConfigError("sweep.sample", {}, "must name at least one axis for search 'optuna'")
    seed = raw.get("seed")
    if seed is not None:
        seed = _parse_int("sweep.seed", seed, 0)
    return Sweep(
        grid=grid,
        cases=cases,
        sample=sample,
        num_samples=_parse_int("sweep.num_samples", raw.get("num_samples", 1), 1),
        search=search,
        objective=objective,
        seed=seed,
    )


def _parse_grid(raw: Any, where: str) -> dict[str, tuple[Any, ...]]:
    if not isinstance(raw, Mapping):
        raise ConfigError(where, _short(raw), "must be a mapping of config key to a list")
    grid: dict[str, tuple[Any, ...]] = {}
    for key, values in raw.items():
        _check_axis_key(f"{where}.{key}", key, values)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.{key}", values, "must be a non-empty list of values")
        seen = [json.dumps(v, sort_keys=True, default=str) for v in values]
        if len(set(seen)) != len(seen):
            raise ConfigError(f"{where}.{key}", values, "values must be distinct")
        grid[key] = tuple(_anchor_path(key, v) for v in values)
    return grid


def _parse_cases(raw: Any, grid: Mapping[str, Any]) -> tuple[Case, ...]:
    if not isinstance(raw, list):
        raise ConfigError("sweep.cases", _short(raw), "must be a list of cases")
    cases = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        where = f"sweep.cases[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(where, _short(item), "must be a mapping with name, set, grid")
        _refuse_unknown(item, CASE_KEYS, f"{where}.", "case keys")
        name = _parse_str(f"{where}.name", item.get("name", f"case{i}"))
        if name in names:
            raise ConfigError(f"{where}.name", name, "must differ from the other case names")
        names.add(name)
        fixed = item.get("set") or {}
        if not isinstance(fixed, Mapping):
            raise ConfigError(f"{where}.set", _short(fixed), "must be a mapping of config keys")
        for key, value in fixed.items():
            _check_axis_key(f"{where}.set.{key}", key, value)
        case_grid = _parse_grid(item.get("grid") or {}, f"{where}.grid")
        for key in (*fixed, *case_grid):
            if key in grid:
                raise ConfigError(
                    f"{where}.{key}",
                    _short(fixed.get(key, case_grid.get(key))),
                    "is also in sweep.grid; give it in one place",
                )
        for key in set(fixed) & set(case_grid):
            raise ConfigError(
                f"{where}.grid.{key}",
                list(case_grid[key]),
                f"is also in {where}.set; give it in one place",
            )
        fixed = {key: _anchor_path(key, value) for key, value in fixed.items()}
        cases.append(Case(name=name, set=fixed, grid=case_grid))
    return tuple(cases)


def _parse_sample(
    raw: Any,
    config: Mapping[str, Any],
    grid: Mapping[str, Any],
    cases: Sequence[Case],
    search: str,
) -> dict[str, Distribution]:
    if not isinstance(raw, Mapping):
        raise ConfigError(
            "sweep.sample", _short(raw), "must be a mapping of config key to a distribution"
        )
    case_keys = {k for c in cases for k in (*c.set, *c.grid)}
    out = {}
    for key, value in raw.items():
        where = f"sweep.sample.{key}"
        _check_axis_key(where, key, value)
        if key in config:
            raise ConfigError(
                where,
                _short(value),
                f"is also fixed in {SECTION_OF[key]}.{key}; give it in one place",
            )
        if key in grid or key in case_keys:
            raise ConfigError(where, _short(value), "is also a grid axis; give it in one place")
        out[key] = _parse_distribution(where, value, search)
    return out


def _parse_distribution(where: str, raw: Any, search: str) -> Distribution:
    allowed = (
        "a mapping with one of uniform: [lo, hi], loguniform: [lo, hi], "
        "int: [lo, hi] (with log: true|false), choice: [values]"
    )
    if not isinstance(raw, Mapping):
        raise ConfigError(where, _short(raw), f"must be {allowed}")
    kinds = [k for k in raw if k in DISTRIBUTIONS]
    extra = [k for k in raw if k not in DISTRIBUTIONS and k != "log"]
    if len(kinds) != 1 or extra:
        raise ConfigError(where, _short(raw), f"must be {allowed}")
    kind = kinds[0]
    args = raw[kind]
    log = raw.get("log", False)
    if not isinstance(log, bool) or (log and kind != "int"):
        raise ConfigError(f"{where}.log", log, "must be true or false, and only with int")
    if kind == "choice":
        return _parse_choice(f"{where}.choice", args, search)
    if not isinstance(args, list) or len(args) != 2:
        raise ConfigError(f"{where}.{kind}", args, "must be a list [low, high]")
    low, high = args
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in args)
    if kind == "int" and not all(isinstance(v, int) and not isinstance(v, bool) for v in args):
        raise ConfigError(f"{where}.int", args, "bounds must be integers")
    if not numbers or not all(math.isfinite(v) for v in args):
        raise ConfigError(f"{where}.{kind}", args, "bounds must be finite numbers")
    if not low < high:
        raise ConfigError(f"{where}.{kind}", args, "must have low < high")
    if (kind == "loguniform" or log) and low <= 0:
        raise ConfigError(f"{where}.{kind}", args, "bounds of a log scale must be > 0")
    return Distribution(kind=kind, low=low, high=high, log=log)


def _parse_choice(where: str, args: Any, search: str) -> Distribution:
    if not isinstance(args, list) or not args:
        raise ConfigError(where, args, "must be a non-empty list of values")
    if search == "optuna":
        for value in args:
            if value is not None and not isinstance(value, bool | int | float | str):
                raise ConfigError(
                    where,
                    args,
                    "values must be numbers, strings, booleans or null with search 'optuna'",
                )
    return Distribution(kind="choice", values=tuple(args))


def _parse_objective(raw: Any, search: str) -> Objective | None:
    if raw is None:
        if search == "optuna":
            raise ConfigError(
                "sweep.objective",
                None,
                "required with search 'optuna': "
                "{metric: ..., mode: min|max, target: optional number}",
            )
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError(
            "sweep.objective",
            _short(raw),
            "must be a mapping with metric, mode and an optional target",
        )
    _refuse_unknown(raw, ("metric", "mode", "target"), "sweep.objective.", "objective keys")
    metric = raw.get("metric")
    if metric not in OBJECTIVE_METRICS:
        raise ConfigError(
            "sweep.objective.metric", metric, f"must be one of {', '.join(OBJECTIVE_METRICS)}"
        )
    mode = raw.get("mode", "min")
    if mode not in ("min", "max"):
        raise ConfigError("sweep.objective.mode", mode, "must be 'min' or 'max'")
    target = raw.get("target")
    if target is not None:
        if isinstance(target, bool) or not isinstance(target, int | float):
            raise ConfigError("sweep.objective.target", target, "must be a number or null")
        if mode != "min":
            raise ConfigError(
                "sweep.objective.mode",
                mode,
                "must be 'min' with a target (the search minimizes |metric - target|)",
            )
        target = float(target)
    return Objective(metric=metric, mode=mode, target=target)


def _parse_resources(raw: Any) -> Resources:
    if not isinstance(raw, Mapping):
        raise ConfigError("resources", _short(raw), "must be a mapping with cpu and gpu")
    _refuse_unknown(raw, ("cpu", "gpu"), "resources.", "resource keys")
    cpu = raw.get("cpu", 1)
    gpu = raw.get("gpu", 0)
    for name, value in (("cpu", cpu), ("gpu", gpu)):
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"resources.{name}", value, "must be a number >= 0")
    if cpu <= 0:
        raise ConfigError(
            "resources.cpu",
            cpu,
            "must be > 0 (a trial without CPUs never gets scheduled a core of its own)",
        )
    if gpu > 1 and not float(gpu).is_integer():
        raise ConfigError("resources.gpu", gpu, "must be a fraction <= 1 or a whole number")
    return Resources(cpu=float(cpu), gpu=float(gpu))


def check_name(value: Any) -> str:
    """Checks a study name (it names the study directory).

    Raises:
        ConfigError: not letters, digits, '_', '.' or '-'.
    """
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ConfigError(
            "name",
            value,
            "must be letters, digits, '_', '.' or '-' (it names the study directory)",
        )
    return value


def _parse_str(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(where, value, "must be a string")
    return value


def _parse_int(where: str, value: Any, minimum: int, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(where, value, f"must be an integer >= {minimum}")
    return value


def _parse_positive(where: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(where, value, "must be a number > 0 or null")
    return float(value)


def _check_axis_key(where: str, key: Any, value: Any) -> None:
    if key not in FIELD_NAMES:
        raise ConfigError(
            where,
            _short(value),
            f"unknown key; any trial config key can be an axis: {', '.join(FIELD_NAMES)}",
        )


def _short(value: Any, limit: int = 80) -> Any:
    """Keeps error messages on one short line when the value is a big structure."""
    text = repr(value)
    return value if len(text) <= limit else text[: limit - 3] + "..."


# validation of every trial ---------------------------------------------------


def check_trials(spec: StudySpec) -> int:
    """Resolves every trial config the spec can produce.

    Grid points are tried exhaustively, distributions at both bounds (every value for
    a choice). Past a few thousand combinations, each axis value is tried with the
    other axes at their first value.

    Args:
        spec: the spec to check.

    Returns:
        The number of configs resolved.

    Raises:
        ConfigError: the first config that does not resolve, located in the spec.
    """
    cases = spec.sweep.cases or (None,)
    checked = 0
    for case in cases:
        axes = _axes_of(spec.sweep, case)
        for point in _points(axes):
            _resolve_point(spec, case, point)
            checked += 1
    return checked


def _axes_of(sweep: Sweep, case: Case | None) -> dict[str, tuple[Any, ...]]:
    axes: dict[str, tuple[Any, ...]] = dict(sweep.grid)
    if case is not None:
        axes.update({k: (v,) for k, v in case.set.items()})
        axes.update(case.grid)
    axes.update({k: d.bounds() for k, d in sweep.sample.items()})
    return axes


def _points(axes: Mapping[str, tuple[Any, ...]]) -> Iterator[dict[str, Any]]:
    total = math.prod(len(v) for v in axes.values())
    if total <= _MAX_CHECKS:
        yield from _product(axes)
        return
    base = {k: v[0] for k, v in axes.items()}
    yield base
    for key, values in axes.items():
        for value in values[1:]:
            yield {**base, key: value}


def _resolve_point(spec: StudySpec, case: Case | None, point: Mapping[str, Any]) -> None:
    try:
        resolve({**spec.config, **point})
    except ConfigError as err:
        where = _locate(spec, case, err.field)
        varying = {k: v for k, v in point.items() if k != err.field and _varies(spec, case, k)}
        at = ", ".join(f"{k}={v!r}" for k, v in varying.items())
        allowed = f"{err.allowed} (at {at})" if at else err.allowed
        raise ConfigError(where, err.value, allowed) from None


def _varies(spec: StudySpec, case: Case | None, key: str) -> bool:
    if key in spec.sweep.grid or key in spec.sweep.sample:
        return True
    return case is not None and key in case.grid


def _locate(spec: StudySpec, case: Case | None, key: str) -> str:
    """Where in the spec a config key is given (its section when defaulted)."""
    index = spec.sweep.cases.index(case) if case is not None else -1
    if key in spec.sweep.grid:
        return f"sweep.grid.{key}"
    if key in spec.sweep.sample:
        return f"sweep.sample.{key}"
    if case is not None and key in case.grid:
        return f"sweep.cases[{index}].grid.{key}"
    if case is not None and key in case.set:
        return f"sweep.cases[{index}].set.{key}"
    return f"{SECTION_OF.get(key, 'spec')}.{key}"


def _product(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    keys = list(axes)
    return [
        dict(zip(keys, combo, strict=True))
        for combo in itertools.product(*(axes[k] for k in keys))
    ]
