"""The phasetune command: exit codes, one-line errors, and a study killed and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from study.cli import _print_outcome, main
from study.results import CURVE_COLUMNS, TRIAL_COLUMNS, StudyStatus
from study.runner import StudyOutcome

ROOT = Path(__file__).resolve().parents[2]
PHASETUNE = [sys.executable, "-m", "study.cli"]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("preset", ["smoke", "quick", "lora_wall"])
def test_validate_accepts_a_preset(capsys: pytest.CaptureFixture[str], preset: str) -> None:
    code, out, _ = run_cli(capsys, "validate", preset)
    assert code == 0 and out.startswith(f"ok: study '{preset}': ")


def test_validate_accepts_the_shipped_cluster_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "validate", str(ROOT / "cluster.yaml"))
    assert code == 0 and out.startswith("ok: cluster 'phasetune' on aws")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("recipe: {lr: -1e-3}\n", "error: recipe.lr=-0.001 is not allowed: must be > 0"),
        ("task: {K: 0}\n", "error: task.K=0 is not allowed: must be an integer >= 1"),
        ("task: {K: 4, D: 400\n", "is not allowed: malformed YAML at line 2"),
        ("sweep: {grid: {lr: [0.001, 0]}}\n", "error: sweep.grid.lr=0.0 is not allowed"),
        ("model: {model: transformer}\n", "error: model.model='transformer' is not allowed"),
        (
            "cluster_name: x\nprovider: {}\n",
            "error: provider={} is not allowed: 'type' is a required property",
        ),
    ],
)
def test_validate_refuses_a_bad_file_in_one_line_with_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    code, out, err = run_cli(capsys, "validate", str(path))
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("spec", ["no_such_preset", "missing/spec.yaml"])
def test_an_unknown_spec_is_bad_input(capsys: pytest.CaptureFixture[str], spec: str) -> None:
    code, _, err = run_cli(capsys, "validate", spec)
    assert code == 2 and err.startswith(f"error: spec={spec!r} is not allowed")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-concurrent", "0"], "error: max_concurrent=0 is not allowed"),
        (["--name", "a b"], "error: name='a b' is not allowed"),
    ],
)
def test_run_refuses_bad_input_before_creating_anything(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], message: str
) -> None:
    import ray

    storage = tmp_path / "study"
    code, _, err = run_cli(capsys, "run", "smoke", "--storage", str(storage), *args)
    assert code == 2 and err.startswith(message)
    assert not storage.exists() and not ray.is_initialized()


def test_run_refuses_a_bad_spec_before_creating_anything(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("task: {K: 4, D: 400}\nrecipe: {batch_size: 800}\n")
    storage = tmp_path / "study"
    code, _, err = run_cli(capsys, "run", str(spec), "--storage", str(storage))
    assert code == 2
    assert (
        err == "error: recipe.batch_size=800 is not allowed: must be <= D=400 (the training "
        "examples)\n"
    )
    assert not storage.exists()


@pytest.mark.parametrize("command", ["status", "query", "analyze", "resume"])
def test_commands_on_a_directory_that_is_no_study_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    code, _, err = run_cli(capsys, command, str(tmp_path))
    assert code == 2 and "is not allowed: must be a study directory" in err


def test_argument_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["query", "x", "--format", "xml"])
    assert info.value.code == 2


# a study killed mid-run, resumed, then queried ---------------------------------------------


def _finished_trials(study: Path) -> dict[str, str]:
    """Trials whose loop has reported its last evaluation, with their result.json text."""
    done = {}
    for path in study.glob("*/result.json"):
        text = path.read_text()
        lines = [line for line in text.splitlines() if line.strip()]
        if lines and json.loads(lines[-1]).get("done"):
            done[path.parent.name] = text
    return done


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    study = tmp_path_factory.mktemp("cli") / "smoke"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # a new session, so that the driver and the Ray processes it started die together
    driver = subprocess.Popen(
        [*PHASETUNE, "run", "smoke", "--storage", str(study), "--no-dashboard"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not _finished_trials(study) and driver.poll() is None:
            time.sleep(0.5)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    before = _finished_trials(study)
    assert before, "no trial finished before the driver was killed"
    resume = subprocess.run(
        [*PHASETUNE, "resume", str(study), "--no-dashboard"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    yield {"study": study, "before": before, "resume": resume}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PHASETUNE, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_resume_finishes_a_killed_study_without_duplicating_trials(
    resumed: dict[str, Any],
) -> None:
    assert resumed["resume"].returncode == 0, resumed["resume"].stderr
    assert "study smoke done" in resumed["resume"].stdout
    study: Path = resumed["study"]
    assert len(list(study.glob("*/params.json"))) == 4
    trials = _table(_cli("query", str(study), "--format", "json").stdout)
    assert len(trials) == 4 and {t["status"] for t in trials} == {
        "escaped",
        "censored",
        "diverged",
    }
    for trial_id, text in resumed["before"].items():
        after = (study / trial_id / "result.json").read_text()
        assert after.startswith(text)  # not trained again ...
        extra = [json.loads(line) for line in after[len(text) :].splitlines() if line.strip()]
        last = json.loads(text.splitlines()[-1])["step"]
        assert all(r["step"] == last for r in extra)  # ... at most its final report repeated


def _table(text: str) -> list[dict[str, Any]]:
    return json.loads(text)


@pytest.mark.slow
def test_query_writes_the_documented_columns_as_csv(resumed: dict[str, Any]) -> None:
    result = _cli("query", str(resumed["study"]), "--format", "csv")
    assert result.returncode == 0
    header = result.stdout.splitlines()[0].split(",")
    assert header[: len(TRIAL_COLUMNS)] == list(TRIAL_COLUMNS)
    rows = [line.split(",") for line in result.stdout.splitlines()[1:]]
    status, escape = header.index("status"), header.index("escape_step")
    assert all((r[escape] == "") == (r[status] != "escaped") for r in rows)


@pytest.mark.slow
def test_query_filters_selects_columns_and_shows_curves(resumed: dict[str, Any]) -> None:
    study = str(resumed["study"])
    table = _cli(
        "query",
        study,
        "--where",
        "status == 'escaped' and seed == 1",
        "--columns",
        "trial_id,seed,escape_step",
    )
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["trial_id", "seed", "escape_step"] and len(lines) == 2
    curves = _cli(
        "query",
        study,
        "--curves",
        "--where",
        "case == 'escape' and step >= 100",
        "--format",
        "csv",
    )
    header = curves.stdout.splitlines()[0].split(",")
    assert header[: len(CURVE_COLUMNS)] == list(CURVE_COLUMNS)
    assert min(int(line.split(",")[2]) for line in curves.stdout.splitlines()[1:]) == 100


@pytest.mark.slow
@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("lr >", "expected a column"),
        ("colour == 'red'", "unknown column 'colour'"),
        ("__import__('os')", "expected a comparison"),
    ],
)
def test_a_bad_filter_is_one_line_and_exit_2(
    resumed: dict[str, Any], where: str, message: str
) -> None:
    result = _cli("query", str(resumed["study"]), "--where", where)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"error: where={where!r} is not allowed: ")
    assert message in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.slow
def test_status_reports_runs_and_the_steps_saved(resumed: dict[str, Any]) -> None:
    result = _cli("status", str(resumed["study"]))
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[1] == "trials: 4 of 4 started (4 finished); 0 pending"
    assert lines[2] == "runs (trial x seed): 1 censored, 1 diverged, 2 escaped"
    assert lines[3].startswith("steps: ") and "early stopping saved" in lines[3]


@pytest.mark.slow
def test_analyze_writes_the_report(resumed: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("analysis.report")
    result = _cli("analyze", str(resumed["study"]), "--out", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr
    laws = json.loads((tmp_path / "report" / "laws.json").read_text())
    assert set(laws) >= {
        "noise_stabilization",
        "plateau_duration",
        "capacity_wall",
        "directional_gap",
        "routing_lead",
    }
    assert (tmp_path / "report" / "report.md").exists()


def test_missing_values_are_null_in_json_and_blank_in_csv_and_tables() -> None:
    import pandas as pd

    from study.cli import _render

    frame = pd.DataFrame({"a": pd.array([1, None], dtype="Int64"), "b": ["x", None]})
    assert json.loads(_render(frame, "json")) == [{"a": 1, "b": "x"}, {"a": None, "b": None}]
    assert _render(frame, "csv") == "a,b\n1,x\n,\n"
    lines = _render(frame, "table").splitlines()
    assert [line.split() for line in lines] == [["a", "b"], ["1", "x"], []]


def test_pooling_several_studies_needs_an_out_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run_cli(capsys, "analyze", str(tmp_path / "a"), str(tmp_path / "b"))
    assert code == 2
    assert err.strip().splitlines() == [
        "error: --out=None is not allowed: must name the report directory when 2 studies "
        "are pooled"
    ]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("running", "pending", "first", "hint"),
    [(0, 0, "study s done in 1m05s: d", False), (2, 1, "study s stopped in 1m05s: d", True)],
)
def test_a_run_that_ends_with_unfinished_trials_says_stopped_and_how_to_resume(
    capsys: pytest.CaptureFixture[str], running: int, pending: int, first: str, hint: bool
) -> None:
    status = StudyStatus(
        name="s", path="d", planned=4, started=4 - pending, pending=pending,
        trials={"finished": 4 - pending - running, "running": running}, runs={},
        steps_trained=10, budget_steps=20, train_s=1.0,
    )  # fmt: skip
    assert _print_outcome(StudyOutcome(path="d", status=status, wall_s=65.0)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == first
    assert (
        any(line == "3 trials unfinished: phasetune resume d continues them" for line in lines)
        is hint
    )


def test_base_writes_a_local_checkpoint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "bases" / "tiny"
    code, text, err = run_cli(capsys, "base", str(out), "--size", "tiny", "--steps", "2")
    assert code == 0 and err == ""
    assert text.startswith(f"base: {out} (tiny GPT-2, 2 steps")
    assert {"config.json", "model.safetensors", "phasetune.json"} <= set(os.listdir(out))
    assert [p.name for p in out.parent.iterdir()] == ["tiny"]  # no staging folder left


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "huge"], "error: size='huge' is not allowed: must be one of tiny, paper"),
        (["--steps", "0"], "error: steps=0 is not allowed: must be an integer >= 1"),
    ],
)
def test_base_refuses_bad_input_in_one_line_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "base"
    code, _, err = run_cli(capsys, "base", str(out), *args)
    assert code == 2 and err.startswith(message) and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_base_refuses_a_directory_that_holds_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "kept.txt").write_text("mine")
    code, _, err = run_cli(capsys, "base", str(tmp_path), "--size", "tiny", "--steps", "2")
    assert code == 2
    assert err == f"error: out_dir='{tmp_path}' is not allowed: must be a new or empty directory\n"
    assert [p.name for p in tmp_path.iterdir()] == ["kept.txt"]
