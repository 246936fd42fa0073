"""Reading a study directory: the tables, robust to retries, truncation and running trials.

The trial directories here are written by the real training loop through a report
callback that appends to ``result.json`` as Ray Tune's JSON logger does; the
end-to-end tests in test_runner.py read directories that Ray itself wrote.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from study.results import (
    CURVE_COLUMNS,
    STUDY_FILE,
    TRIAL_COLUMNS,
    Study,
    StudyDataWarning,
    pooled_tables,
)
from study.spec import VARIANT_KEY, parse_spec
from trainables.config import ConfigError
from trainables.loop import TrainResult, train

SPEC = {
    "name": "reader",
    "task": {"task": "disambiguation", "K": 4, "D": 400},
    "model": {"model": "gpt2", "size": "tiny"},
    "recipe": {"lr": 3e-3, "batch_size": 32, "warmup_steps": 50},
    "budget": {"max_steps": 600, "eval_every": 50, "eval_size": 128, "checkpoint_every": 100},
    "stop": {"escape_confirm": 2},
    "seeds": {"num_seeds": 2},
    "sweep": {
        "cases": [{"name": "fast"}, {"name": "slow", "set": {"lr": 3e-5, "max_steps": 200}}]
    },
}


def write_trial(root: Path, trial_id: str, params: dict[str, Any]) -> TrainResult:
    """Trains one trial with the loop and lays it out as Ray Tune does."""
    trial_dir = root / trial_id
    trial_dir.mkdir(parents=True)
    (trial_dir / "params.json").write_text(json.dumps(params))
    lines = []

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        lines.append(json.dumps({**metrics, "trial_id": trial_id}))

    from study.spec import trial_config

    result = train(trial_config(params), report=report)
    (trial_dir / "result.json").write_text("\n".join(lines) + "\n")
    return result


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, TrainResult]]:
    root = tmp_path_factory.mktemp("study")
    spec = parse_spec(SPEC, source="test")
    (root / STUDY_FILE).write_text(
        json.dumps(
            {
                "name": spec.name,
                "n_trials": spec.n_trials,
                "axes": list(spec.axes),
                "spec": spec.to_dict(),
            }
        )
    )
    results = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a one-CPU Ray trial; more threads only contend here
    try:
        for i, variant in enumerate(spec.sweep.variants()):
            trial_id = f"abc_{i:05d}"
            params = {**spec.base_config(), VARIANT_KEY: variant}
            results[trial_id] = write_trial(root, trial_id, params)
    finally:
        torch.set_num_threads(threads)
    return root, results


@pytest.fixture
def study_dir(written: tuple[Path, dict[str, TrainResult]], tmp_path: Path) -> Path:
    return Path(shutil.copytree(written[0], tmp_path / "study"))


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_the_trials_table_has_one_row_per_seed_and_the_documented_columns(
    study_dir: Path,
) -> None:
    trials = Study.open(study_dir).trials()
    assert list(trials.columns[: len(TRIAL_COLUMNS)]) == list(TRIAL_COLUMNS)
    assert len(trials) == 4
    assert {"case", "optimizer", "eps", "num_seeds", "trial_seed", "temperature"} <= set(
        trials.columns
    )
    assert list(trials["seed"]) == [0, 1, 0, 1]


def test_the_table_agrees_with_the_loop_on_every_seed(
    study_dir: Path, written: tuple[Path, dict[str, TrainResult]]
) -> None:
    trials = Study.open(study_dir).trials().set_index(["trial_id", "seed"])
    for trial_id, result in written[1].items():
        for summary in result.seeds:
            row = trials.loc[(trial_id, summary.seed)]
            assert row["status"] == summary.status
            assert _maybe(row["escape_step"]) == summary.escape_step
            assert _maybe(row["plateau_onset_step"]) == summary.onset_step
            assert row["steps"] == result.steps
            assert row["final_excess"] == pytest.approx(summary.final_excess)


def _maybe(value: Any) -> Any:
    return None if pd.isna(value) else int(value)


def test_escaped_trials_stop_early_and_censored_ones_run_their_budget(study_dir: Path) -> None:
    trials = Study.open(study_dir).trials()
    fast, slow = trials[trials["case"] == "fast"], trials[trials["case"] == "slow"]
    assert set(fast["status"]) == {"escaped"}
    assert (fast["steps"] < fast["max_steps"]).all()
    assert (fast["escape_step"] < fast["steps"]).all()
    assert set(slow["status"]) == {"censored"}
    assert (slow["steps"] == 200).all() and slow["escape_step"].isna().all()


def test_the_curves_table_has_one_row_per_trial_seed_and_evaluation(study_dir: Path) -> None:
    study = Study.open(study_dir)
    curves = study.curves()
    assert list(curves.columns[: len(CURVE_COLUMNS)]) == list(CURVE_COLUMNS)
    assert not curves.duplicated(["trial_id", "seed", "step"]).any()
    assert (curves[curves["trial_id"] == "abc_00001"]["step"].max()) == 200
    late = study.curves(where="case == 'fast' and step >= 300", columns=["trial_id", "step"])
    assert set(late["trial_id"]) == {"abc_00000"} and late["step"].min() == 300


def test_a_retry_reporting_steps_again_keeps_the_last_report_of_each_step(
    study_dir: Path,
) -> None:
    path = study_dir / "abc_00000" / "result.json"
    lines = lines_of(path)
    before = Study.open(study_dir).curves()
    again = [json.loads(line) for line in lines[2:4]]  # a retry from the step-50 checkpoint
    for report in again:
        for seed in report["seeds"]:
            seed["loss"] = 99.0
    path.write_text("\n".join(lines + [json.dumps(r) for r in again]) + "\n")
    after = Study.open(study_dir).curves()
    assert len(after) == len(before)
    retried = after[(after["trial_id"] == "abc_00000") & after["step"].isin([100, 150])]
    assert set(retried["loss"]) == {99.0}


def test_a_truncated_line_is_named_in_a_warning_and_skipped(study_dir: Path) -> None:
    path = study_dir / "abc_00001" / "result.json"
    lines = lines_of(path)
    path.write_text("\n".join(lines[:-1] + [lines[-1][:40]]))
    with pytest.warns(StudyDataWarning, match=rf"{path} line {len(lines)} is not valid JSON"):
        trials = Study.open(study_dir).trials()
    slow = trials[trials["trial_id"] == "abc_00001"]
    # the final report is lost: the trial reads as still running at its last good step
    assert set(slow["status"]) == {"running"}
    assert (slow["steps"] == 150).all()


def test_an_unreadable_result_file_is_named_and_its_trial_has_no_curve(study_dir: Path) -> None:
    path = study_dir / "abc_00001" / "result.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.warns(StudyDataWarning, match=rf"{path} line 1 is not valid JSON"):
        study = Study.open(study_dir)
        trials = study.trials()
    assert set(trials.loc[trials["trial_id"] == "abc_00001", "status"]) == {"running"}
    assert set(study.curves()["trial_id"]) == {"abc_00000"}


def test_a_trial_with_an_error_file_and_no_final_report_is_failed(study_dir: Path) -> None:
    trial = study_dir / "abc_00001"
    lines = lines_of(trial / "result.json")
    (trial / "result.json").write_text("\n".join(lines[:2]) + "\n")
    (trial / "error.txt").write_text("Traceback: out of memory")
    trials = Study.open(study_dir).trials()
    assert set(trials.loc[trials["trial_id"] == "abc_00001", "status"]) == {"failed"}
    assert Study.open(study_dir).status().trials == {"finished": 1, "failed": 1}


def test_ray_state_decides_between_running_and_failed(study_dir: Path) -> None:
    for trial in ("abc_00000", "abc_00001"):
        path = study_dir / trial / "result.json"
        path.write_text("\n".join(lines_of(path)[:3]) + "\n")
    _write_state(study_dir, {"abc_00000": ("RUNNING", 0), "abc_00001": ("ERROR", 2)})
    trials = Study.open(study_dir).trials().drop_duplicates("trial_id").set_index("trial_id")
    assert trials.loc["abc_00000", "status"] == "running"
    assert trials.loc["abc_00001", "status"] == "failed"
    assert trials.loc["abc_00001", "retries"] == 2


def test_a_trial_whose_loop_finished_is_final_even_if_the_state_is_stale(
    study_dir: Path,
) -> None:
    _write_state(study_dir, {"abc_00000": ("RUNNING", 0), "abc_00001": ("RUNNING", 0)})
    trials = Study.open(study_dir).trials()
    assert set(trials["status"]) == {"escaped", "censored"}


def test_status_counts_runs_and_the_steps_early_stopping_saved(
    study_dir: Path, written: tuple[Path, dict[str, TrainResult]]
) -> None:
    status = Study.open(study_dir).status()
    assert status.planned == 2 and status.started == 2 and status.pending == 0
    assert status.runs == {"escaped": 2, "censored": 2}
    steps = sum(r.steps * len(r.seeds) for r in written[1].values())
    assert status.steps_trained == steps
    assert status.budget_steps == (600 + 200) * 2
    assert status.saved_fraction == pytest.approx(1 - steps / 1600)


def test_filters_and_columns_apply_to_the_trials_table(study_dir: Path) -> None:
    table = Study.open(study_dir).trials(
        where="status == 'escaped' and seed == 1", columns=["trial_id", "escape_step"]
    )
    assert list(table.columns) == ["trial_id", "escape_step"]
    assert list(table["trial_id"]) == ["abc_00000"]


@pytest.mark.parametrize("content", [None, "not json"])
def test_a_directory_without_a_study_is_refused(tmp_path: Path, content: str | None) -> None:
    if content is not None:
        (tmp_path / "notes.txt").write_text(content)
    with pytest.raises(ConfigError, match=r"^DIR='.*' is not allowed: must be a study directory"):
        Study.open(tmp_path)
    with pytest.raises(ConfigError, match=r"must be a study directory"):
        Study.open(tmp_path / "missing")


def _write_state(root: Path, states: dict[str, tuple[str, int]]) -> None:
    """An experiment state file shaped as Ray Tune writes it (the fields read here)."""
    data = {
        "trial_data": [
            [json.dumps({"trial_id": t, "status": s}), json.dumps({"num_failures": n})]
            for t, (s, n) in states.items()
        ]
    }
    (root / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(data))


def test_a_study_without_trials_yet_reads_as_empty_tables(tmp_path: Path) -> None:
    spec = parse_spec(SPEC, source="test")
    (tmp_path / STUDY_FILE).write_text(
        json.dumps({"name": "reader", "n_trials": 2, "source": "test", "spec": spec.to_dict()})
    )
    study = Study.open(tmp_path)
    assert study.trials().empty and list(study.trials().columns[:3]) == [
        "trial_id",
        "status",
        "task",
    ]
    assert study.curves().empty
    status = study.status()
    assert (status.started, status.pending, status.runs) == (0, 2, {})
    assert study.spec == spec


def test_pooled_studies_keep_their_rows_apart(study_dir: Path, tmp_path: Path) -> None:
    # a follow-up study whose Ray trial ids happen to repeat the first study's
    follow_up = Path(shutil.copytree(study_dir, tmp_path / "follow_up"))
    meta = json.loads((follow_up / STUDY_FILE).read_text())
    (follow_up / STUDY_FILE).write_text(json.dumps({**meta, "name": "follow_up"}))
    shutil.rmtree(follow_up / "abc_00001")
    first = Study.open(study_dir)
    trials, curves = pooled_tables([study_dir, follow_up])
    assert len(trials) == len(first.trials()) + 2  # the follow-up kept one 2-seed trial
    assert set(trials["study"]) == {"reader", "follow_up"}
    # only the shared id is prefixed
    assert set(trials["trial_id"]) == {"reader/abc_00000", "abc_00001", "follow_up/abc_00000"}
    assert set(curves["trial_id"]) == set(trials["trial_id"])
    assert len(curves) == len(first.curves()) + len(
        first.curves().query("trial_id == 'abc_00000'")
    )


def test_pooling_one_study_twice_is_refused(study_dir: Path) -> None:
    with pytest.raises(ConfigError, match="must be given once"):
        pooled_tables([study_dir, study_dir / ".." / study_dir.name])
