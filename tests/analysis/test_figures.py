"""Figures: each draws a PNG when the study has what it shows, and nothing otherwise."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

from analysis import figures
from analysis.laws import CapacityWallFitter, FitWarning, fit_all
from analysis.simulate import (
    simulate_capacity_study,
    simulate_gap_study,
    simulate_noise_study,
    simulate_study,
)

PNG = b"\x89PNG"


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The matplotlib figures saved while the test runs, in order."""
    figures_seen: list = []
    real_save = figures._save

    def keep(fig, path):
        figures_seen.append(fig)
        return real_save(fig, path)

    monkeypatch.setattr(figures, "_save", keep)
    return figures_seen


@pytest.fixture(scope="module")
def study() -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    trials, curves = simulate_study(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        return trials, curves, fit_all(trials, curves)


def test_draw_all_writes_every_figure_of_a_full_study(study, tmp_path: Path) -> None:
    trials, curves, laws = study
    written = figures.draw_all(trials, curves, laws, tmp_path)
    assert set(written) == {
        "loss_curves",
        "phase_lr_batch",
        "phase_K_D",
        "phase_rank_K",
        "km_temperature",
        "noise_law",
        "plateau_duration",
        "capacity_wall",
        "directional_gap",
        "routing_lead",
    }
    for name in written.values():
        assert (tmp_path / name).read_bytes().startswith(PNG)


def test_censored_cell_is_labelled_with_its_budget(tmp_path: Path) -> None:
    trials = simulate_noise_study(
        lrs=(1e-3, 2e-3), batch_sizes=(64, 128), seeds=3, budget=2500, rng=0
    )
    slow = trials["lr"] == 2e-3
    trials.loc[slow & (trials["batch_size"] == 64), ["status", "escape_step", "steps"]] = [
        "censored",
        float("nan"),
        2500,
    ]
    cell = trials[slow & (trials["batch_size"] == 64)]
    median, n_escaped, last = figures.km_median(cell)
    assert median == float("inf") and n_escaped == 0 and last == 2500
    assert figures.phase_lr_batch(trials, tmp_path / "p.png") is not None


def test_km_median_matches_the_plain_median_without_censoring() -> None:
    cell = pd.DataFrame(
        {"status": ["escaped"] * 3, "escape_step": [100.0, 200.0, 300.0], "steps": [100, 200, 300]}
    )
    assert figures.km_median(cell) == (200.0, 3, 300.0)


@pytest.mark.parametrize(
    "draw",
    [
        lambda t, p: figures.phase_lr_batch(t, p),
        lambda t, p: figures.phase_k_d(t, p),
        lambda t, p: figures.km_by_temperature(t, p),
        lambda t, p: figures.loss_curves(t, None, p),
        lambda t, p: figures.routing_lead(t, None, p),
        lambda t, p: figures.capacity_wall(t, {"skipped": "no"}, p),
        lambda t, p: figures.noise_law(t, {"skipped": "no"}, p),
        lambda t, p: figures.directional_gap({"skipped": "no"}, p),
    ],
    ids=["lr-batch", "K-D", "km", "curves", "routing", "wall", "noise", "gap"],
)
def test_figures_without_their_data_draw_nothing(draw, tmp_path: Path) -> None:
    mapping_only = simulate_gap_study(seeds=2, rng=0)
    assert draw(mapping_only, tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()


def test_drawing_does_not_touch_pyplot_or_its_global_backend(tmp_path: Path) -> None:
    code = (
        "import sys; from analysis import figures; from analysis.simulate import "
        "simulate_noise_study; "
        f"figures.phase_lr_batch(simulate_noise_study(rng=0), {str(tmp_path / 'p.png')!r}); "
        "sys.exit(1 if 'matplotlib.pyplot' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
    assert (tmp_path / "p.png").is_file()


def test_a_rank_sweep_over_d_at_one_k_draws_rank_by_d_and_every_wall(tmp_path: Path) -> None:
    trials = simulate_capacity_study(
        groups=((8, 20000), (8, 40000), (8, 80000)), info_exponent=1.0, seeds=2, rng=3
    )
    law = CapacityWallFitter().fit(trials).to_dict()
    assert len(law["walls"]) == 3
    written = figures.draw_all(trials, None, {"capacity_wall": law}, tmp_path)
    # K has one value: the rank diagram's second axis is D, and the K version is not drawn
    assert "phase_rank_D" in written and "phase_rank_K" not in written
    assert written["capacity_wall"] == "capacity_wall.png"
    assert (tmp_path / "capacity_wall.png").read_bytes().startswith(PNG)
    assert (tmp_path / "phase_rank_D.png").read_bytes().startswith(PNG)


def test_the_wall_figure_draws_one_line_per_fitted_wall(tmp_path: Path, drawn) -> None:
    trials = simulate_capacity_study(
        groups=((8, 20000), (8, 80000)), info_exponent=1.0, seeds=2, rng=4
    )
    law = CapacityWallFitter().fit(trials).to_dict()
    figures.capacity_wall(trials, law, tmp_path / "w.png")
    ax = drawn[0].axes[0]
    r_star_lines = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert sorted(line.get_xdata()[0] for line in r_star_lines) == pytest.approx(
        sorted(w["r_star"]["value"] for w in law["walls"])
    )
    assert "r* ~ (D log K)^" in ax.get_title()


def test_the_gap_figure_labels_every_group_with_its_gap(tmp_path: Path, drawn) -> None:
    from analysis.laws import DirectionalGapFitter

    trials = simulate_gap_study(seeds=3, rng=5)
    law = DirectionalGapFitter().fit(trials).to_dict()
    assert figures.directional_gap(law, tmp_path / "g.png") is not None
    ax = drawn[0].axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == [g["label"].replace(" ", "\n") for g in law["groups"]]
    gaps = [t.get_text() for t in ax.texts]
    assert len(gaps) == len(law["groups"])
    first = law["params"][law["groups"][0]["label"]]
    assert gaps[0].startswith(f"gap {first['value']:.3g}")
