"""Running studies on Ray Tune: stopping, retries, Optuna, progress, metrics, end to end.

One local Ray session serves the module. The mechanics tests drive a stand-in
training function (tests/study/toy_loop.py) so that stopping and retries are exact;
the end-to-end tests run the smoke preset with the real training loop.
"""

from __future__ import annotations

import json
import logging
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import ray
import ray.cloudpickle

from study.bench import trial_overhead
from study.results import CURVE_COLUMNS, STUDY_FILE, TRIAL_COLUMNS, Study
from study.runner import StudyOutcome, run_study
from study.spec import load_spec, parse_spec
from study.trainable import FINAL_REPORT
from tests.study import toy_loop
from trainables.config import ConfigError

TOY = {
    "name": "toy",
    "task": {"task": "disambiguation", "K": 4, "D": 400},
    "model": {"model": "gpt2", "size": "tiny"},
    "recipe": {"batch_size": 32, "warmup_steps": 0},
    "budget": {"max_steps": 600, "eval_every": 50, "checkpoint_every": 2},
    "stop": {"escape_confirm": 2},
    "max_failures": 2,
    "max_concurrent": 2,
}


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    # the toy function travels by value: Ray workers need not import the tests package
    ray.cloudpickle.register_pickle_by_value(toy_loop)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.WARNING,
        _system_config={"metrics_report_interval_ms": 1000},
    )
    yield
    ray.shutdown()


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def toy_run(
    ray_session: None, tmp_path_factory: pytest.TempPathFactory
) -> tuple[StudyOutcome, list[str]]:
    spec = parse_spec(
        {
            **TOY,
            "sweep": {
                "cases": [
                    {"name": "escape", "set": {"lr": 3e-3}},  # drops at step 333: escape at 350
                    {"name": "never", "set": {"lr": 1e-5}},
                    {"name": "flaky", "set": {"lr": 3e-3, "warmup_steps": toy_loop.FLAKY_WARMUP}},
                ]
            },
        }
    )
    progress = _Collect()
    logging.getLogger("study.progress").addHandler(progress)
    logging.getLogger("study.progress").setLevel(logging.INFO)
    try:
        outcome = run_study(
            spec,
            str(tmp_path_factory.mktemp("toy") / "study"),
            train_fn=toy_loop.train,
            progress_interval_s=0.5,
        )
    finally:
        logging.getLogger("study.progress").removeHandler(progress)
    return outcome, progress.messages


def _trials(outcome: StudyOutcome) -> Any:
    return Study.open(outcome.path).trials().set_index("case")


def test_the_stopper_ends_escaped_trials_after_the_confirmation_window(
    toy_run: tuple[StudyOutcome, list[str]],
) -> None:
    trials = _trials(toy_run[0])
    assert trials.loc["escape", "status"] == "escaped"
    assert trials.loc["escape", "escape_step"] == 350
    # confirmed by the second evaluation below the threshold; the toy would run to 600
    assert trials.loc["escape", "steps"] == 400


def test_trials_that_reach_the_budget_are_censored(
    toy_run: tuple[StudyOutcome, list[str]],
) -> None:
    trials = _trials(toy_run[0])
    assert trials.loc["never", "status"] == "censored"
    assert trials.loc["never", "steps"] == 600
    assert pd.isna(trials.loc["never", "escape_step"])


def test_a_failed_trial_is_retried_from_its_last_checkpoint(
    toy_run: tuple[StudyOutcome, list[str]],
) -> None:
    outcome = toy_run[0]
    trials = _trials(outcome)
    assert trials.loc["flaky", "status"] == "escaped"
    trial_dir = Path(outcome.path) / str(trials.loc["flaky", "trial_id"])
    reports = [json.loads(line) for line in (trial_dir / "result.json").open()]
    # Ray records every failure; on a loaded machine a worker may also die on its own
    # (an extra failure not caused by the toy), so the toy's one failure is counted apart
    failures = re.split(r"^Failure # \d+ ", (trial_dir / "error.txt").read_text(), flags=re.M)
    failures = [f for f in failures if f.strip()]
    assert trials.loc["flaky", "retries"] == len(failures) >= 1
    assert sum("toy failure, once" in f for f in failures) == 1
    # it failed at step 200 and went on from its checkpoint at step 100, not from 0
    assert [r["step"] for r in reports].count(0) == 1
    after = [r for r in reports if r["step"] >= 200]
    assert after[0]["resumed_from"] == 100 and None not in {r["resumed_from"] for r in after}
    trial_id = trials.loc["flaky", "trial_id"]
    curve = Study.open(outcome.path).curves(where=f"trial_id == '{trial_id}'")
    assert list(curve["step"]) == list(range(0, 401, 50))


def test_the_outcome_counts_the_steps_early_stopping_saved(
    toy_run: tuple[StudyOutcome, list[str]],
) -> None:
    status = toy_run[0].status
    assert status.runs == {"escaped": 2, "censored": 1}
    assert (status.steps_trained, status.budget_steps) == (400 + 600 + 400, 1800)
    assert status.saved_fraction == pytest.approx(1 - 1400 / 1800)


def test_the_study_records_its_resolved_spec(toy_run: tuple[StudyOutcome, list[str]]) -> None:
    meta = json.loads((Path(toy_run[0].path) / STUDY_FILE).read_text())
    assert meta["n_trials"] == 3 and meta["spec"]["name"] == "toy"
    assert parse_spec(meta["spec"]).sweep.cases[2].name == "flaky"


def test_progress_is_a_compact_table_of_the_studys_columns(
    toy_run: tuple[StudyOutcome, list[str]],
) -> None:
    messages = toy_run[1]
    assert messages and all(m.startswith("[toy] ") for m in messages)
    final = messages[-1].splitlines()
    assert final[0].endswith("3 trials: 1 censored, 2 escaped")
    assert final[1].split() == [
        "trial",
        "state",
        "case",
        "lr",
        "warmup_steps",
        "step",
        "loss",
        "cand_loss",
        "escaped",
        "steps/s",
    ]


def test_rerunning_a_finished_study_trains_nothing_again(
    toy_run: tuple[StudyOutcome, list[str]],
) -> None:
    outcome = toy_run[0]
    spec = parse_spec(json.loads((Path(outcome.path) / STUDY_FILE).read_text())["spec"])
    before = {p.parent.name: p.read_text() for p in Path(outcome.path).glob("*/result.json")}
    again = run_study(spec, outcome.path, train_fn=toy_loop.train)
    after = {p.parent.name: p.read_text() for p in Path(outcome.path).glob("*/result.json")}
    assert after == before
    assert again.status.runs == outcome.status.runs


def test_the_study_exports_its_ray_metrics(toy_run: tuple[StudyOutcome, list[str]]) -> None:
    port = ray.nodes()[0]["MetricsExportPort"]
    # Ray prefixes custom metrics with ray_; the exporter lags the driver by a flush
    escaped = 'ray_phasetune_trials{.*state="escaped",study="toy"} (\\S+)'
    deadline, value, text = time.time() + 60, None, ""
    while time.time() < deadline and value != 2.0:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
            text = page.read().decode()
        found = re.search(escaped, text)
        value = float(found.group(1)) if found else None
        time.sleep(0.5)
    assert value == 2.0
    assert re.search(r'ray_phasetune_trial_steps_per_second\{.*study="toy",trial="', text)


def test_an_optuna_study_searches_within_the_bounds_and_reports_its_objective(
    ray_session: None,
    tmp_path: Path,
) -> None:
    spec = parse_spec(
        {
            **TOY,
            "name": "toy_optuna",
            "sweep": {
                "search": "optuna",
                "num_samples": 3,
                "seed": 0,
                "sample": {"lr": {"loguniform": [1e-3, 1e-2]}},
                "objective": {"metric": "step", "target": 300},
            },
        }
    )
    outcome = run_study(spec, str(tmp_path / "study"), train_fn=toy_loop.train)
    trials = Study.open(outcome.path).trials()
    assert len(trials) == 3 and trials["lr"].between(1e-3, 1e-2).all()
    assert set(trials["status"]) == {"escaped"}
    for trial_id in trials["trial_id"]:
        last = (Path(outcome.path) / trial_id / "result.json").read_text().splitlines()[-1]
        report = json.loads(last)
        assert report["objective"] == pytest.approx(abs(report["step"] - 300))


@pytest.mark.parametrize(
    ("existing", "message"),
    [
        ({"notes.txt": "x"}, r"^storage='.*' is not allowed: must be a new or empty directory"),
        (
            {STUDY_FILE: json.dumps({"name": "other", "spec": {"name": "other"}})},
            r"^storage='.*' is not allowed: already holds study 'other' with another spec",
        ),
    ],
)
def test_a_storage_holding_something_else_is_refused_before_ray_starts(
    tmp_path: Path, existing: dict[str, str], message: str
) -> None:
    for name, text in existing.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        run_study(load_spec("smoke"), str(tmp_path))
    with pytest.raises(ConfigError, match=r"^max_concurrent=0 is not allowed"):
        run_study(load_spec("smoke"), str(tmp_path / "new"), max_concurrent=0)
    assert not (tmp_path / "new").exists()


# end to end, real training loop -----------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_run(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> StudyOutcome:
    return run_study(load_spec("smoke"), str(tmp_path_factory.mktemp("smoke") / "study"))


@pytest.mark.slow
def test_smoke_trials_escape_and_stop_early(smoke_run: StudyOutcome) -> None:
    trials = Study.open(smoke_run.path).trials()
    escaped = trials[trials["case"] == "escape"]
    assert len(escaped) == 2 and set(escaped["status"]) == {"escaped"}
    assert (escaped["escape_step"] < escaped["steps"]).all()
    assert (escaped["steps"] < escaped["max_steps"]).all()
    assert smoke_run.status.saved_fraction is not None and smoke_run.status.saved_fraction > 0


@pytest.mark.slow
def test_smoke_records_censored_and_diverged_trials_as_such(smoke_run: StudyOutcome) -> None:
    trials = Study.open(smoke_run.path).trials().set_index("case")
    assert trials.loc["censored", "status"] == "censored"
    assert trials.loc["censored", "steps"] == trials.loc["censored", "max_steps"]
    assert trials.loc["diverged", "status"] == "diverged"
    assert trials.loc["diverged", "diverged_step"] <= trials.loc["diverged", "steps"]


@pytest.mark.slow
def test_smoke_tables_have_the_documented_columns(smoke_run: StudyOutcome) -> None:
    study = Study.open(smoke_run.path)
    trials, curves = study.trials(), study.curves()
    assert list(trials.columns[: len(TRIAL_COLUMNS)]) == list(TRIAL_COLUMNS)
    assert list(curves.columns[: len(CURVE_COLUMNS)]) == list(CURVE_COLUMNS)
    assert set(curves["trial_id"]) == set(trials["trial_id"])
    assert curves["routing_score"].notna().any() and curves["z_shuffle_gap"].notna().any()


@pytest.mark.slow
def test_smoke_trials_keep_their_final_report_in_the_last_checkpoint(
    smoke_run: StudyOutcome,
) -> None:
    for trial in Study.open(smoke_run.path).trial_runs():
        checkpoints = sorted(trial.path.glob("checkpoint_*"))
        final = json.loads((checkpoints[-1] / FINAL_REPORT).read_text())
        assert final["step"] == trial.last["step"] and final["done"] is True


@pytest.mark.slow
def test_smoke_trials_account_for_their_time_outside_the_loop(smoke_run: StudyOutcome) -> None:
    table = trial_overhead(Study.open(smoke_run.path))
    assert len(table) == smoke_run.status.started
    assert (table["setup_s"] > 0).all() and (table["report_s"] > 0).all()
    assert (table["train_s"] > 0).all()
    # the parts add up to Ray's time of the trial, and none is negative beyond jitter
    parts = table["train_s"] + table["setup_s"] + table["report_s"] + table["other_s"]
    assert np.allclose(parts, table["wall_s"])
    assert (table["other_s"] > -0.05).all()
    assert (table["end"] - table["start"] == table["wall_s"]).all()
    assert (table["start"] > time.time() - 3600).all()


@pytest.mark.slow
def test_a_lora_trial_finds_a_base_given_relative_to_the_launch_directory(
    ray_session: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainables.base_model import make_base

    monkeypatch.chdir(tmp_path)
    make_base("bases/tiny", size="tiny", steps=2, batch_size=8)
    spec = parse_spec(
        {
            **TOY,
            "model": {"model": "gpt2", "base": "bases/tiny", "lora_rank": 2},
            "budget": {"max_steps": 4, "eval_every": 2, "eval_size": 16},
        }
    )
    assert spec.config["base"] == str(tmp_path / "bases" / "tiny")
    outcome = run_study(spec, str(tmp_path / "study"))
    trials = Study.open(outcome.path).trials()
    assert list(trials["status"]) == ["censored"] and list(trials["steps"]) == [4]
