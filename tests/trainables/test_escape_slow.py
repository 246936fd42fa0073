"""End to end: the tiny preset on one CPU core sits at log K, then escapes.

Settings (recorded for the ``smoke`` study preset): size ``tiny`` (2 layers, 2 heads,
width 64, MLP 256), K = 10, D = 2000 (200 bases), batch 128, AdamW lr 1e-3 with 100
warm-up steps, evaluation every 50 steps on 512 examples. On one core the escape
(candidate loss < 0.5 log K, confirmed over 3 evaluations) came at about step 850,
in about 70 seconds.
"""

from __future__ import annotations

import math

import pytest
import torch

from trainables.loop import train

SMOKE = {
    "task": "disambiguation",
    "size": "tiny",
    "K": 10,
    "D": 2000,
    "batch_size": 128,
    "lr": 1e-3,
    "warmup_steps": 100,
    "eval_every": 50,
    "eval_size": 512,
    "max_steps": 4000,
    "stop_on_escape": True,
    "escape_tail": 5,
    "device": "cpu",
    "seed": 0,
}


@pytest.mark.slow
def test_tiny_preset_plateaus_at_log_k_then_escapes():
    assert torch.get_num_threads() == 1  # conftest: one core
    reports: list[dict] = []
    result = train(SMOKE, lambda metrics, _: reports.append(metrics["seeds"][0]))
    log_k = math.log(10)
    cand = [r["candidate_loss"] for r in reports]
    first = [r["first_token_loss"] for r in reports]
    for r in reports:
        print(
            r["status"],
            f"cand={r['candidate_loss']:.3f} first={r['first_token_loss']:.3f} "
            f"loss={r['loss']:.3f} gap={r['z_shuffle_gap']:.3f}",
        )

    below = [i for i, c in enumerate(cand) if c < 0.5 * log_k]
    assert below, "no escape within the budget"
    escape = below[0]
    on_plateau = [abs(c - log_k) <= 0.05 * log_k for c in cand[:escape]]
    assert sum(on_plateau) >= 3  # several evaluations within 5% of log K
    assert all(c < 0.5 * log_k for c in cand[escape:])  # and it stays below
    assert len(cand) - escape >= 5
    assert result.status == "escaped" and result.seeds[0].escape_step is not None
    # the full-vocabulary first-target loss is recorded at every evaluation
    assert all(math.isfinite(f) for f in first)
    assert first[0] > math.log(36) - 0.2 and first[-1] < log_k
