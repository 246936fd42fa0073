"""The command-line tools: base checkpoint and benchmark."""

from __future__ import annotations

import json
import os

import pytest

from trainables import base_model, bench, loop


def test_base_model_command_writes_a_base_that_trains_with_lora(tmp_path, capsys):
    out = tmp_path / "base"
    assert base_model.main([str(out), "--size", "tiny", "--steps", "2"]) == 0
    assert "written to" in capsys.readouterr().out
    assert {"model.safetensors", "config.json", "phasetune.json"} <= set(os.listdir(out))
    cfg = {
        "base": str(out),
        "lora_rank": 2,
        "K": 4,
        "D": 40,
        "batch_size": 8,
        "eval_size": 16,
        "max_steps": 2,
        "eval_every": 1,
    }
    result = loop.train(cfg)
    assert result.steps == 2 and result.seeds[0].final_loss is not None


def test_bench_measures_stacked_and_sequential_seeds_side_by_side(capsys):
    argv = ["--size", "tiny", "--batch", "16", "--seeds", "1,2", "--precision", "fp32"]
    assert bench.main([*argv, "--steps", "1", "--rounds", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {(r["seeds"], r["mode"]): r for r in out["rows"]}
    assert set(rows) == {(1, "single"), (2, "stacked"), (2, "sequential")}
    one, two = rows[1, "single"], rows[2, "stacked"]
    assert one["steps_per_s"] > 0 and one["tokens_per_s"] == one["steps_per_s"] * 16 * 15
    assert two["seed_steps_per_s"] == 2 * two["steps_per_s"]
    assert two["vs_sequential"] == pytest.approx(
        two["seed_steps_per_s"] / rows[2, "sequential"]["seed_steps_per_s"]
    )
    assert 0 < one["mfu"] < 1.5 and out["matmul_gflop_per_s"]["fp32"] > 0


def test_bench_prints_a_table_with_the_ratio_at_eight_seeds(capsys):
    argv = ["--size", "tiny", "--batch", "4", "--seeds", "8", "--precision", "fp32"]
    assert bench.main([*argv, "--steps", "1", "--rounds", "1"]) == 0
    text = capsys.readouterr().out
    assert "fp32 matmul" in text and "MFU" in text
    assert "stacked S=8 per-seed throughput =" in text
