"""Faults injected into studies: damaged result files, storage that refuses writes, and a
trial worker killed mid-trial.

The driver killed mid-study and resumed is in test_cli.py
(``test_resume_finishes_a_killed_study_without_duplicating_trials``); a diverging trial
among others in test_runner.py (``test_smoke_records_censored_and_diverged_trials_as_such``).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import ray
import ray.cloudpickle

from study.cli import main
from study.results import Study, StudyDataWarning
from study.runner import run_study
from study.spec import parse_spec
from tests.study import toy_loop
from trainables.loop import train

TINY = {
    "task": "disambiguation",
    "K": 4,
    "D": 400,
    "model": "gpt2",
    "size": "tiny",
    "lr": 3e-3,
    "batch_size": 32,
    "warmup_steps": 50,
    "max_steps": 600,
    "eval_every": 50,
    "escape_confirm": 2,
}


def _cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


# damaged files ------------------------------------------------------------------------------


def _toy_trial(root: Path, trial_id: str, lr: float) -> None:
    """A trial directory as Ray leaves it, with the toy's reports (no Ray needed)."""
    reports: list[dict[str, Any]] = []
    config = {**TINY, "lr": lr}
    toy_loop.train(config, report=lambda metrics, _: reports.append(metrics))
    trial = root / trial_id
    trial.mkdir(parents=True)
    (trial / "params.json").write_text(json.dumps(config))
    lines = [json.dumps({**r, "trial_id": trial_id, "time_total_s": 1.0}) for r in reports]
    (trial / "result.json").write_text("\n".join(lines) + "\n")


@pytest.fixture
def damaged(tmp_path: Path) -> dict[str, Any]:
    root = tmp_path / "study"
    for trial_id, lr in (("good", 3e-3), ("cut", 3e-3), ("garbled", 1e-5), ("noparams", 3e-3)):
        _toy_trial(root, trial_id, lr)
    (root / "study.json").write_text(json.dumps({"name": "damaged", "n_trials": 4}))
    cut = root / "cut" / "result.json"
    text = cut.read_text()
    cut.write_text(text[: text.index("\n", len(text) // 2) + 40])  # ends mid-line
    garbled = root / "garbled" / "result.json"
    garbled.write_bytes(garbled.read_bytes().replace(b'"step": 300', b"\xff\xfe\x00", 1))
    (root / "noparams" / "params.json").write_text('{"K": 4, "D"')
    files = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    return {"root": root, "files": files}


def test_queries_name_the_damaged_files_and_go_on_with_the_other_trials(
    damaged: dict[str, Any],
) -> None:
    root: Path = damaged["root"]
    with pytest.warns(StudyDataWarning) as caught:
        trials = Study.open(root).trials()
    messages = [str(w.message) for w in caught]
    assert any(m.startswith(f"{root / 'cut' / 'result.json'} line ") for m in messages)
    assert any(m.startswith(f"{root / 'garbled' / 'result.json'} line ") for m in messages)
    unreadable = f"{root / 'noparams' / 'params.json'} is not readable"
    assert any(m.startswith(unreadable) for m in messages)
    assert sorted(trials["trial_id"]) == ["cut", "garbled", "good"]
    status = trials.set_index("trial_id")["status"]
    assert status["good"] == "escaped" and status["garbled"] == "censored"
    # the cut trial keeps what it had reported: no escape invented, none lost
    assert status["cut"] == "running"
    with pytest.warns(StudyDataWarning, match=f"^{root / 'cut' / 'result.json'} line "):
        code, out, err = _cli("query", str(root), "--format", "json")
    assert code == 0 and len(json.loads(out)) == 3 and err == ""
    # nothing was rewritten
    assert {p: p.read_bytes() for p in damaged["files"]} == damaged["files"]


def test_the_analysis_names_the_damaged_files_and_writes_its_report(
    damaged: dict[str, Any], tmp_path: Path
) -> None:
    root: Path = damaged["root"]
    with pytest.warns(StudyDataWarning) as caught:
        code, out, err = _cli("analyze", str(root), "--out", str(tmp_path / "report"))
    assert code == 0, err
    assert (tmp_path / "report" / "report.md").exists()
    messages = " ".join(str(w.message) for w in caught)
    assert f"{root / 'garbled' / 'result.json'} line " in messages
    assert f"{root / 'noparams' / 'params.json'} is not readable" in messages
    assert {p: p.read_bytes() for p in damaged["files"]} == damaged["files"]


# storage --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _tmpfs(path: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.strip()}")
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, timeout=30)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, timeout=30)


SPEC_YAML = """\
name: storage
task: {task: disambiguation, K: 4, D: 400}
model: {model: gpt2, size: tiny}
recipe: {lr: 3.0e-3, batch_size: 32, warmup_steps: 50}
budget: {max_steps: 100, eval_every: 25, eval_size: 64, checkpoint_every: 1}
resources: {cpu: 1}
max_failures: 0
"""


def test_read_only_storage_is_refused_in_one_line_before_ray_starts(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC_YAML)
    with _tmpfs(tmp_path / "ro", "1M", read_only=True) as mount:
        code, out, err = _cli("run", str(spec), "--storage", str(mount / "study"))
        assert not (mount / "study").exists()
    assert code == 2 and not ray.is_initialized()
    assert err == (
        f"error: storage={str(mount / 'study')!r} is not allowed: must be writable: "
        "Read-only file system\n"
    )


@pytest.mark.slow
def test_storage_that_runs_out_fails_the_study_and_presents_no_results(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC_YAML)
    # room for the record of the study, not for a checkpoint (about 1.3 MB)
    with _tmpfs(tmp_path / "full", "1M") as mount:
        study = mount / "study"
        code, out, err = _cli("run", str(spec), "--storage", str(study), "--no-dashboard")
        with pytest.warns(StudyDataWarning, match="is not readable"):
            trials = Study.open(study).trials()
    assert code == 1 and not ray.is_initialized()
    assert err == (
        f"error: RuntimeError: storage {study} cannot be written (No space left on device): "
        f"the study is incomplete and its files may be cut short; make room, then "
        f"phasetune resume {study}\n"
    )
    # the cut files are named and skipped: no partial row passes for a result
    assert trials.empty or set(trials["status"]) == {"failed"}


# a worker killed mid-trial ---------------------------------------------------------------


def _pid_train(
    config: Mapping[str, Any],
    report: Callable[..., None] | None = None,
    resume_from: str | None = None,
    *,
    pid_file: str = "",
) -> Any:
    """The real loop, leaving the worker's pid (and where it resumes from) for the test."""
    Path(pid_file).write_text(str(os.getpid()))
    if resume_from is not None:
        with open(f"{pid_file}.resumed", "a") as log:
            log.write(f"{resume_from}\n")
    return train(config, report=report, resume_from=resume_from)


def _kill_after_first_checkpoints(study: Path, pid_file: Path, killed: list[int]) -> None:
    deadline = time.time() + 600
    while time.time() < deadline:
        if len(list(study.glob("*/checkpoint_*"))) >= 2 and pid_file.exists():
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.2)


@pytest.mark.slow
def test_a_killed_worker_is_retried_from_its_checkpoint_with_the_same_curve(
    tmp_path: Path,
) -> None:
    import tests.study.test_faults as this

    ray.cloudpickle.register_pickle_by_value(this)
    config = {**TINY, "max_steps": 150, "eval_every": 25, "eval_size": 64}
    config.update(checkpoint_every=1, stop_on_escape=False)
    spec = parse_spec(
        {
            "name": "killed",
            "task": {k: config[k] for k in ("task", "K", "D")},
            "model": {"model": "gpt2", "size": "tiny"},
            "recipe": {k: config[k] for k in ("lr", "batch_size", "warmup_steps")},
            "budget": {k: config[k] for k in ("max_steps", "eval_every", "eval_size")}
            | {"checkpoint_every": 1},
            "stop": {"escape_confirm": 2, "stop_on_escape": False},
            "resources": {"cpu": 1},
            "max_failures": 2,
        }
    )
    study, pid_file, killed = tmp_path / "study", tmp_path / "pid", []
    killer = threading.Thread(
        target=_kill_after_first_checkpoints, args=(study, pid_file, killed), daemon=True
    )
    killer.start()
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        outcome = run_study(
            spec, str(study), train_fn=functools.partial(_pid_train, pid_file=str(pid_file))
        )
    finally:
        ray.shutdown()
    killer.join(timeout=5)
    assert killed, "the worker was not killed"
    trials = Study.open(outcome.path).trials()
    assert len(trials) == 1 and trials.loc[0, "retries"] == 1
    reports = [
        json.loads(line)
        for line in (study / trials.loc[0, "trial_id"] / "result.json").read_text().splitlines()
    ]
    assert [r["step"] for r in reports].count(0) == 1  # not restarted from scratch
    # the retry read its checkpoint from the study's own storage, nowhere else
    resumed = Path(f"{pid_file}.resumed").read_text().split()
    assert len(resumed) == 1 and Path(resumed[0]).resolve().parent.parent == study.resolve()
    assert Path(resumed[0]).name.startswith("checkpoint_")
    curve = Study.open(outcome.path).curves()
    expected: list[dict[str, Any]] = []
    train(config, report=lambda metrics, _: expected.append(metrics))
    assert list(curve["step"]) == [m["step"] for m in expected]
    assert list(curve["loss"]) == pytest.approx([m["loss"] for m in expected], rel=1e-5)
    assert list(curve["candidate_loss"]) == pytest.approx(
        [m["candidate_loss"] for m in expected], rel=1e-5
    )
