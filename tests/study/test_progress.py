"""The progress table: the study's own columns and states, not Ray's dump."""

from __future__ import annotations

import math
from typing import Any

import pytest

from study.progress import render, trial_row
from study.spec import VARIANT_KEY

PARAMS = {"task": "disambiguation", "K": 4, "lr": 3e-3, VARIANT_KEY: {"case": "a", "lr": 1e-3}}


def result(statuses: list[str], onsets: list[int | None], step: int = 300) -> dict[str, Any]:
    seeds = [{"status": s, "onset_step": o} for s, o in zip(statuses, onsets, strict=True)]
    return {
        "step": step,
        "loss": 2.5,
        "candidate_loss": 1.2,
        "steps_per_s": 80.0,
        "n_seeds": len(seeds),
        "n_escaped": statuses.count("escaped"),
        "seeds": seeds,
    }


@pytest.mark.parametrize(
    ("ray_status", "last", "state"),
    [
        ("PENDING", None, "pending"),
        ("RUNNING", None, "running"),
        ("RUNNING", result(["censored"], [None]), "running"),
        ("RUNNING", result(["censored", "censored"], [0, None]), "plateau"),
        ("RUNNING", result(["escaped", "censored"], [0, 0]), "escaping"),
        ("TERMINATED", result(["escaped", "escaped"], [0, 0]), "escaped"),
        ("TERMINATED", result(["censored"], [0]), "censored"),
        ("TERMINATED", result(["diverged"], [0]), "diverged"),
        ("TERMINATED", result(["escaped", "censored"], [0, 0]), "mixed"),
        ("ERROR", result(["censored"], [0]), "failed"),
    ],
)
def test_each_trial_gets_a_state_in_the_study_vocabulary(
    ray_status: str, last: dict[str, Any] | None, state: str
) -> None:
    assert trial_row("t1", ray_status, PARAMS, last)["state"] == state


def test_the_row_shows_the_grid_point_and_the_escaped_seeds() -> None:
    row = trial_row("t1", "RUNNING", PARAMS, result(["escaped", "censored"], [0, 0]))
    assert row["_lr"] == 1e-3 and row["_case"] == "a" and row["_K"] == 4
    assert row["escaped"] == "1/2" and row["step"] == 300


def test_the_table_counts_states_and_lists_running_trials_first() -> None:
    rows = [
        trial_row("t3", "TERMINATED", PARAMS, result(["escaped"], [0])),
        trial_row("t2", "PENDING", PARAMS, None),
        trial_row("t1", "RUNNING", PARAMS, {**result(["censored"], [0]), "loss": math.nan}),
    ]
    text = render("demo", rows, ["case", "lr"], elapsed_s=75.0)
    lines = text.splitlines()
    assert lines[0] == "[demo] 0:01:15 | 3 trials: 1 escaped, 1 pending, 1 plateau"
    assert lines[1].split() == [
        "trial",
        "state",
        "case",
        "lr",
        "step",
        "loss",
        "cand_loss",
        "escaped",
        "steps/s",
    ]
    assert [line.split()[0] for line in lines[2:]] == ["t1", "t3", "t2"]
    assert lines[2].split()[5] == "-"  # a non-finite loss shows as missing
    assert lines[4].split()[4:] == ["-", "-", "-", "-", "-"]


def test_a_long_table_is_cut_with_a_count_of_the_rest() -> None:
    rows = [trial_row(f"t{i:02d}", "PENDING", PARAMS, None) for i in range(30)]
    text = render("demo", rows, [], elapsed_s=0.0, max_rows=5)
    assert text.splitlines()[-1] == "... 25 more trials"
    assert len(text.splitlines()) == 1 + 1 + 5 + 1


def test_an_empty_study_is_one_line() -> None:
    assert render("demo", [], [], 0.0) == "[demo] 0:00:00 | 0 trials: none yet"
