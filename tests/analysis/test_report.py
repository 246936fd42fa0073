"""write_report: laws.json, the figures and report.md in one directory."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytest

from analysis.laws import FitWarning
from analysis.report import write_report
from analysis.simulate import simulate_noise_study, simulate_study


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("report")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        laws = write_report(*simulate_study(0), out)
    return out, laws


def test_laws_json_is_the_returned_dict(report_dir) -> None:
    out, laws = report_dir
    assert json.loads((out / "laws.json").read_text()) == laws
    assert set(laws) == {
        "noise_stabilization",
        "plateau_duration",
        "capacity_wall",
        "directional_gap",
        "routing_lead",
    }


def test_report_embeds_only_figures_that_exist(report_dir) -> None:
    out, _ = report_dir
    text = (out / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(images) >= 8
    for name in images:
        assert (out / name).is_file()


def test_report_shows_fits_beside_the_papers_numbers(report_dir) -> None:
    out, laws = report_dir
    text = (out / "report.md").read_text()
    for title in (
        "Noise stabilization",
        "Plateau duration",
        "Capacity wall",
        "Directional gap",
        "Routing lead",
    ):
        assert f"## {title}" in text
    assert re.search(r"\| slowdown_7x \| [\d.]+ \| \[[\d.]+, [\d.]+\] \| 3\.60 \|", text)
    assert re.search(r"\| gpt2 \| [\d.]+ \| .* \| 1\.16 \|", text)
    assert re.search(r"\| routing_lead \| [\d.]+ \| .* \| 0\.500 \|", text)
    cells = laws["noise_stabilization"]["cells"]
    assert "Median escape step per cell" in text
    assert len(re.findall(r"^\| [\d.e-]+ \| .*\(\d+/\d+\)", text, re.M)) == len(
        {c["lr"] for c in cells}
    )


def test_escape_times_are_written_per_trial_and_seed(report_dir) -> None:
    out, _ = report_dir
    table = pd.read_csv(out / "escape_times.csv")
    assert {"trial_id", "seed", "status", "escape_step", "waiting_time", "routing_lead"} <= set(
        table.columns
    )


def test_study_without_curves_reports_skipped_laws_with_reasons(tmp_path: Path) -> None:
    laws = write_report(simulate_noise_study(seeds=3, rng=0), None, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "Skipped: needs the curves table" in text
    assert "skipped" in laws["routing_lead"]
    assert not (tmp_path / "escape_times.csv").exists()
    assert not (tmp_path / "loss_curves.png").exists()


def test_trials_without_status_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing status"):
        write_report(pd.DataFrame({"trial_id": ["a"]}), None, tmp_path)


def test_rewriting_a_report_removes_the_figures_it_no_longer_has(
    report_dir, tmp_path: Path
) -> None:
    out, _ = report_dir
    again = tmp_path / "again"
    shutil.copytree(out, again)
    assert (again / "routing_lead.png").exists() and (again / "loss_curves.png").exists()
    (again / "notes.txt").write_text("mine")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        write_report(simulate_noise_study(seeds=3, rng=0), None, again)
    assert not (again / "routing_lead.png").exists()
    assert not (again / "loss_curves.png").exists()
    assert not (again / "escape_times.csv").exists()
    assert (again / "noise_law.png").exists()
    assert (again / "notes.txt").read_text() == "mine"  # not the report's: left alone
