"""Study results: the trials and curves tables of a study directory.

A study directory is the Ray Tune experiment directory: one folder per trial with
Ray's ``params.json`` (the trial config) and ``result.json`` (one JSON object per
evaluation), the experiment state, and ``study.json`` (the resolved spec). Reading
never needs Ray and works while the study runs: a trial still going is ``running``,
a truncated line is skipped with a :class:`StudyDataWarning`.

Example::

    study = Study.open("studies/quick")
    trials = study.trials(where="status == 'escaped'")
    curves = study.curves()
"""

from __future__ import annotations

import json
import logging
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.escape import CENSORED, DIVERGED, FAILED, RUNNING
from analysis.escape_times import escape_table
from study.query import filter_frame, select_columns
from study.spec import StudySpec, case_of, parse_spec, trial_config
from trainables.config import FIELD_NAMES, ConfigError, TrialConfig, resolve

logger = logging.getLogger(__name__)

STUDY_FILE = "study.json"
TRIAL_COLUMNS = (
    "trial_id", "status", "task", "direction", "model", "K", "D", "bases", "lr",
    "batch_size", "lora_rank", "seed", "steps", "plateau_onset_step", "escape_step",
    "plateau_loss", "floor", "final_loss", "final_excess", "wall_s",
)  # fmt: skip
EXTRA_TRIAL_COLUMNS = (
    "case", "temperature", "converged_step", "diverged_step", "waiting_time",
    "transition_width", "plateau_height", "routing_lead", "z_shuffle_lead",
    "final_candidate_loss", "final_accuracy", "budget_steps", "seed_index", "init_seed",
    "trial_seed", "retries", "node_id",
)  # fmt: skip
CURVE_COLUMNS = (
    "trial_id", "seed", "step", "loss", "candidate_loss", "first_token_loss", "excess",
    "z_shuffle_gap", "routing_score", "lr_now",
)  # fmt: skip
EXTRA_CURVE_COLUMNS = ("accuracy", "floor", "train_s")
_SEED_CURVE_KEYS = ("loss", "candidate_loss", "first_token_loss", "excess", "z_shuffle_gap",
                    "routing_score", "accuracy", "floor")  # fmt: skip
_STEP_COLUMNS = ("steps", "plateau_onset_step", "escape_step", "converged_step",
                 "diverged_step", "waiting_time", "transition_width", "budget_steps")  # fmt: skip
_RAY_RUNNING = ("RUNNING", "PENDING", "PAUSED")


class StudyDataWarning(UserWarning):
    """A file of the study directory could not be read in full; the rest still is."""


@dataclass
class TrialRun:
    """What one trial directory holds."""

    trial_id: str
    path: Path
    params: dict[str, Any]
    reports: list[dict[str, Any]] = field(default_factory=list)  # one per step, by step
    state: str | None = None  # the table status forced by Ray's state: running, failed
    retries: int = 0

    @property
    def last(self) -> dict[str, Any]:
        return self.reports[-1] if self.reports else {}


@dataclass(frozen=True)
class StudyStatus:
    """Where a study stands.

    ``steps_trained`` counts optimizer updates summed over every model of every
    started trial; ``budget_steps`` what the same trials would train at a fixed budget
    (``max_steps`` each), so ``saved_fraction`` is the compute early stopping saved.
    """

    name: str
    path: str
    planned: int | None
    started: int
    pending: int
    trials: dict[str, int]  # trial states: running, finished, failed
    runs: dict[str, int]  # per-seed statuses of the trials table
    steps_trained: int
    budget_steps: int
    train_s: float

    @property
    def saved_fraction(self) -> float | None:
        if not self.budget_steps:
            return None
        return 1.0 - self.steps_trained / self.budget_steps


class Study:
    """A study directory, readable while the study runs and after.

    Args:
        path: the study directory.
        meta: the contents of its ``study.json`` (empty when missing).
    """

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta
        self._cache: tuple[Any, list[TrialRun]] | None = None

    @classmethod
    def open(cls, path: str | Path) -> Study:
        """Opens a study directory.

        Args:
            path: a directory made by ``phasetune run`` (or any Ray Tune experiment
                directory of this project's trainable).

        Returns:
            The study.

        Raises:
            ConfigError: the path is not a study directory.
        """
        root = Path(path)
        allowed = "must be a study directory made by phasetune run (it holds study.json)"
        if not root.is_dir():
            raise ConfigError("DIR", str(path), allowed)
        meta: dict[str, Any] = {}
        meta_file = root / STUDY_FILE
        if meta_file.exists():
            try:
                meta = json.loads(meta_file.read_text())
            except (OSError, json.JSONDecodeError) as err:
                warnings.warn(
                    f"{meta_file} is not readable ({err}); reading the trials only",
                    StudyDataWarning,
                    stacklevel=2,
                )
        elif not any(root.glob("*/params.json")):
            raise ConfigError("DIR", str(path), allowed)
        return cls(root, meta)

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.path.name)

    @property
    def spec(self) -> StudySpec | None:
        """The resolved spec recorded at the start, if any."""
        if "spec" not in self.meta:
            return None
        return parse_spec(self.meta["spec"], source=self.meta.get("source", ""))

    def trial_runs(self) -> list[TrialRun]:
        """Every started trial, with its reports (the last report of each step)."""
        signature = _signature(self.path)
        if self._cache is None or self._cache[0] != signature:
            self._cache = (signature, _read_runs(self.path))
        return self._cache[1]

    def trials(
        self, where: str | None = None, columns: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """The trials table: one row per trial and seed.

        Args:
            where: a filter expression (see :mod:`study.query`).
            columns: the columns to keep, in order; all when None.

        Returns:
            The columns of :data:`TRIAL_COLUMNS`, then :data:`EXTRA_TRIAL_COLUMNS`,
            then every other trial config key.

        Raises:
            ConfigError: a malformed filter or an unknown column.
        """
        table, _ = _tables(self.trial_runs())
        return select_columns(filter_frame(table, where), columns)

    def curves(
        self, where: str | None = None, columns: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """The curves table: one row per trial, seed and evaluation.

        Args:
            where: a filter expression over the curve columns and the trial columns
                (``lr >= 1e-3 and step > 100``).
            columns: the columns to keep; the curve columns when None.

        Returns:
            The columns of :data:`CURVE_COLUMNS` and :data:`EXTRA_CURVE_COLUMNS`.

        Raises:
            ConfigError: a malformed filter or an unknown column.
        """
        trials, curves = _tables(self.trial_runs())
        if where:
            extra = [c for c in trials.columns if c not in curves.columns]
            joined = curves.merge(
                trials[["trial_id", "seed", *extra]], on=["trial_id", "seed"], how="left"
            )
            curves = filter_frame(joined, where)
        keep = list(columns) if columns else list(CURVE_COLUMNS + EXTRA_CURVE_COLUMNS)
        return select_columns(curves, keep).reset_index(drop=True)

    def status(self) -> StudyStatus:
        """Counts of trials and runs, and the steps trained against the fixed budget."""
        runs = self.trial_runs()
        table, _ = _tables(runs)
        planned = self.meta.get("n_trials")
        trial_states = Counter(_trial_state(r) for r in runs)
        steps = budget = 0
        train_s = 0.0
        for run in runs:
            cfg = _config(run)
            if cfg is None:
                continue
            n_models = max(cfg.num_seeds, len(run.last.get("seeds") or []))
            steps += int(run.last.get("step") or 0) * n_models
            budget += cfg.max_steps * n_models
            train_s += float(run.last.get("time_total_s") or run.last.get("train_s") or 0.0)
        return StudyStatus(
            name=self.name,
            path=str(self.path),
            planned=planned,
            started=len(runs),
            pending=max(0, planned - len(runs)) if planned is not None else 0,
            trials=dict(trial_states),
            runs=dict(Counter(table["status"])) if len(table) else {},
            steps_trained=steps,
            budget_steps=budget,
            train_s=train_s,
        )


# reading the directory -----------------------------------------------------------------


def pooled_tables(paths: Sequence[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The trials and curves tables of several studies, pooled for one analysis.

    A column ``study`` names each row's study. Trial ids that two studies share are
    prefixed with the study's name so that rows stay apart.

    Args:
        paths: study directories, each at most once.

    Returns:
        (trials, curves).

    Raises:
        ConfigError: a path is not a study directory, or appears twice.
    """
    seen: set[Path] = set()
    studies = []
    for path in paths:
        resolved = Path(path).resolve()
        if resolved in seen:
            raise ConfigError("DIR", str(path), "must be given once (its rows would count twice)")
        seen.add(resolved)
        studies.append(Study.open(path))
    tables = [(study.name, study.trials(), study.curves()) for study in studies]
    if len(tables) == 1:
        return tables[0][1], tables[0][2]
    counts = pd.Series([t for _, trials, _ in tables for t in trials["trial_id"].unique()])
    shared = set(counts[counts.duplicated()])
    pooled_trials, pooled_curves = [], []
    for name, trials, curves in tables:
        for table, out in ((trials, pooled_trials), (curves, pooled_curves)):
            table = table.copy()
            table["trial_id"] = [f"{name}/{t}" if t in shared else t for t in table["trial_id"]]
            table["study"] = name
            out.append(table)
    return (
        pd.concat(pooled_trials, ignore_index=True),
        pd.concat(pooled_curves, ignore_index=True),
    )


def _signature(root: Path) -> tuple[Any, ...]:
    files = sorted(root.glob("*/params.json")) + sorted(root.glob("*/result.json"))
    files += sorted(root.glob("experiment_state-*.json")) + sorted(root.glob("*/error.txt"))
    out = []
    for f in files:
        try:
            stat = f.stat()
        except OSError:
            continue
        out.append((str(f), stat.st_size, stat.st_mtime_ns))
    return tuple(out)


def _read_runs(root: Path) -> list[TrialRun]:
    states = _ray_states(root)
    runs = []
    for params_file in sorted(root.glob("*/params.json")):
        trial_dir = params_file.parent
        try:
            params = json.loads(params_file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            warnings.warn(
                f"{params_file} is not readable ({err}); trial skipped",
                StudyDataWarning,
                stacklevel=3,
            )
            continue
        reports = _read_reports(trial_dir / "result.json")
        trial_id = str(reports[-1].get("trial_id") if reports else trial_dir.name)
        ray_status, failures = states.get(trial_id, (None, 0))
        run = TrialRun(trial_id, trial_dir, params, reports, retries=failures)
        run.state = _forced_status(run, ray_status, (trial_dir / "error.txt").exists())
        runs.append(run)
    return runs


def _read_reports(path: Path) -> list[dict[str, Any]]:
    """The last report of each step, by step; bad lines are named and skipped."""
    if not path.exists():
        return []
    try:
        # a damaged byte spoils its line only: that line fails to parse and is named
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as err:
        warnings.warn(
            f"{path} is not readable ({err}); its trial has no curve",
            StudyDataWarning,
            stacklevel=4,
        )
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            report = json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(
                f"{path} line {number} is not valid JSON (truncated?); skipped",
                StudyDataWarning,
                stacklevel=4,
            )
            continue
        if not isinstance(report, dict) or not isinstance(report.get("step"), int | float):
            continue
        by_step[int(report["step"])] = report  # a retry reports steps again: keep the last
    return [by_step[s] for s in sorted(by_step)]


def _ray_states(root: Path) -> dict[str, tuple[str, int]]:
    """Trial statuses and failure counts from Ray's latest experiment state."""
    files = sorted(root.glob("experiment_state-*.json"), key=lambda f: f.stat().st_mtime)
    if not files:
        return {}
    try:
        data = json.loads(files[-1].read_text())
        out = {}
        for trial_json, runtime_json in data["trial_data"]:
            trial, runtime = json.loads(trial_json), json.loads(runtime_json)
            out[str(trial["trial_id"])] = (
                str(trial["status"]),
                int(runtime.get("num_failures") or 0),
            )
        return out
    except (OSError, ValueError, KeyError, TypeError) as err:
        warnings.warn(
            f"{files[-1]} is not readable ({err}); trial states are inferred "
            "from the trial directories",
            StudyDataWarning,
            stacklevel=4,
        )
        return {}


def _forced_status(run: TrialRun, ray_status: str | None, error_file: bool) -> str | None:
    """running or failed when the trial's state says so; None lets the curve decide."""
    if run.last.get("done"):
        return None  # the loop finished, whatever a stale state says
    if ray_status == "ERROR" or (ray_status is None and error_file):
        return FAILED
    if ray_status in _RAY_RUNNING or ray_status is None:
        return RUNNING
    return None


def _trial_state(run: TrialRun) -> str:
    return {FAILED: "failed", RUNNING: "running"}.get(run.state or "", "finished")


def _config(run: TrialRun) -> TrialConfig | None:
    try:
        return resolve(trial_config(run.params))
    except ConfigError as err:
        warnings.warn(
            f"{run.path / 'params.json'}: {err}; trial skipped", StudyDataWarning, stacklevel=4
        )
        return None


# the tables -----------------------------------------------------------------------------


def _tables(runs: Sequence[TrialRun]) -> tuple[pd.DataFrame, pd.DataFrame]:
    base_rows: list[dict[str, Any]] = []
    curve_rows: list[dict[str, Any]] = []
    for run in runs:
        cfg = _config(run)
        if cfg is None:
            continue
        base_rows += _base_rows(run, cfg)
        curve_rows += _curve_rows(run)
    curves = pd.DataFrame(curve_rows, columns=list(CURVE_COLUMNS + EXTRA_CURVE_COLUMNS))
    curves["step"] = curves["step"].astype("int64")
    base = pd.DataFrame(base_rows)
    if base.empty:
        return pd.DataFrame(columns=list(TRIAL_COLUMNS + EXTRA_TRIAL_COLUMNS)), curves
    trials = _with_escapes(base, curves)
    return _ordered(trials), curves


def _base_rows(run: TrialRun, cfg: TrialConfig) -> list[dict[str, Any]]:
    config = cfg.to_dict()
    config["lora_targets"] = ",".join(cfg.lora_targets)
    trial_seed = config.pop("seed")
    last = run.last
    seeds = last.get("seeds") or []
    rows = []
    for i in range(max(cfg.num_seeds, len(seeds))):
        seed = seeds[i] if i < len(seeds) else {}
        rows.append(
            {
                **config,
                "trial_id": run.trial_id,
                "status": run.state,
                "seed": int(seed.get("seed", trial_seed + i)),
                "seed_index": i,
                "init_seed": seed.get("init_seed", trial_seed + i),
                "trial_seed": trial_seed,
                "order_seed": seed.get("order_seed", cfg.resolved_order_seed + i),
                "data_seed": seed.get("data_seed", cfg.resolved_data_seed),
                "case": case_of(run.params),
                "temperature": cfg.temperature,
                "floor": seed.get("floor"),
                "final_loss": seed.get("loss"),
                "final_excess": seed.get("excess"),
                "final_candidate_loss": seed.get("candidate_loss"),
                "final_accuracy": seed.get("accuracy"),
                "budget_steps": cfg.max_steps,
                "wall_s": last.get("time_total_s", last.get("train_s")),
                "retries": run.retries,
                "node_id": last.get("node_id"),
                "_loop_status": seed.get("status"),
                "_loop_diverged_step": seed.get("diverged_step"),
                "_last_step": last.get("step", 0),
            }
        )
    return rows


def _curve_rows(run: TrialRun) -> list[dict[str, Any]]:
    rows = []
    for report in run.reports:
        for i, seed in enumerate(report.get("seeds") or []):
            row = {
                "trial_id": run.trial_id,
                "seed": int(seed.get("seed", i)),
                "step": int(report["step"]),
                "lr_now": report.get("lr_now"),
                "train_s": report.get("train_s"),
            }
            row.update({k: seed.get(k) for k in _SEED_CURVE_KEYS})
            rows.append(row)
    return rows


def _with_escapes(base: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """Adds status and escape columns by the one escape rule (analysis.escape_times)."""
    for name in _SEED_CURVE_KEYS:
        curves[name] = pd.to_numeric(curves[name], errors="coerce")
    have_curve = base.set_index(["trial_id", "seed"]).index.isin(
        curves.set_index(["trial_id", "seed"]).index
    )
    escapes = escape_table(curves, base[have_curve]) if have_curve.any() else None
    merged = base.rename(columns={"status": "_forced"})
    if escapes is not None:
        merged = merged.merge(escapes, on=["trial_id", "seed"], how="left")
    for name in (
        "status",
        *_STEP_COLUMNS[:-1],
        "plateau_loss",
        "plateau_height",
        "routing_lead",
        "z_shuffle_lead",
    ):
        if name not in merged.columns:
            merged[name] = None
    merged["status"] = merged["status"].where(merged["status"].notna(), merged["_forced"])
    merged["status"] = merged["status"].fillna(RUNNING)
    merged["steps"] = merged["steps"].where(merged["steps"].notna(), merged["_last_step"])
    # the loop sees a non-finite training loss that an evaluation may not show
    loop_diverged = (merged["_loop_status"] == DIVERGED) & (merged["status"] == CENSORED)
    merged.loc[loop_diverged, "status"] = DIVERGED
    merged.loc[loop_diverged, "diverged_step"] = merged.loc[loop_diverged, "_loop_diverged_step"]
    return merged.drop(columns=["_forced", "_loop_status", "_loop_diverged_step", "_last_step"])


def _ordered(trials: pd.DataFrame) -> pd.DataFrame:
    for name in _STEP_COLUMNS:
        values = pd.to_numeric(trials[name], errors="coerce")
        trials[name] = pd.array(values.round(), dtype="Int64")
    # only escaped rows carry an escape step
    trials.loc[trials["status"] != "escaped", "escape_step"] = pd.NA
    config_columns = [c for c in FIELD_NAMES if c in trials.columns]
    order = list(TRIAL_COLUMNS + EXTRA_TRIAL_COLUMNS)
    order += [c for c in ("order_seed", "data_seed", *config_columns) if c not in order]
    order += [c for c in trials.columns if c not in order]
    order = list(dict.fromkeys(order))
    trials = trials[order].sort_values(["trial_id", "seed"], kind="stable")
    return trials.reset_index(drop=True)
