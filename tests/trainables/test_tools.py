"""The command-line tools: base checkpoint and benchmark."""

from __future__ import annotations

import json
import os

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


def test_bench_prints_throughput_and_mfu(capsys):
    assert bench.main(["--size", "tiny", "--batch", "16", "--steps", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps_per_s"] > 0 and out["tokens_per_s"] == out["steps_per_s"] * 16 * 15
    assert 0 < out["mfu"] < 1.5 and out["matmul_gflop_per_s"] > 0
