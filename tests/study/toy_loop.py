"""A stand-in training function for exercising the runner's Ray mechanics only.

It speaks the training loop's contract (``train(config, report, resume_from)``, one
report per evaluation with per-seed metrics, checkpoint directories, resumption) but
trains nothing: the watched loss sits at log K and drops at a step set by the learning
rate. Unlike the real loop it never stops by itself before ``max_steps``, so a trial
that ends early was stopped by the study's stopper. The end-to-end tests use the real
training loop.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from analysis.escape import EscapeRule, EscapeTracker
from trainables.config import resolve

FLAKY_WARMUP = 7  # a trial with this many warm-up steps fails once, at FAIL_AT
FAIL_AT = 200


def escape_at(lr: float) -> float:
    """The step where the toy's loss drops: 1 / lr (lr 3e-3: step 333), never below 1e-4."""
    return math.inf if lr < 1e-4 else 1.0 / lr


def _value(step: int, lr: float, log_k: float) -> float:
    return log_k if step < escape_at(lr) else 0.1 * log_k


def train(
    config: Mapping[str, Any],
    report: Callable[..., None] | None = None,
    resume_from: str | None = None,
) -> dict[str, Any]:
    cfg = resolve(config)
    start = 0
    if resume_from is not None:
        with open(os.path.join(resume_from, "toy.json")) as f:
            start = json.load(f)["step"] + cfg.eval_every
    log_k = math.log(cfg.K)
    rule = EscapeRule(fraction=cfg.escape_fraction, confirm=cfg.escape_confirm)
    trackers = [EscapeTracker(rule, log_k) for _ in range(cfg.num_seeds)]
    for step in range(0, start, cfg.eval_every):  # the trackers' state at the checkpoint
        for tracker in trackers:
            tracker.update(step, _value(step, cfg.lr, log_k))
    for n, step in enumerate(range(start, cfg.max_steps + 1, cfg.eval_every)):
        if cfg.warmup_steps == FLAKY_WARMUP and resume_from is None and step == FAIL_AT:
            raise RuntimeError("toy failure, once")
        value = _value(step, cfg.lr, log_k)
        for tracker in trackers:
            tracker.update(step, value)
        seeds = [
            {
                "seed": cfg.seed + i,
                "floor": 0.0,
                "loss": 4 * value,
                "excess": 4 * value,
                "candidate_loss": value,
                "status": t.status,
                "onset_step": t.onset_step,
                "escape_step": t.escape_step,
            }
            for i, t in enumerate(trackers)
        ]
        metrics = {
            "step": step,
            "lr_now": cfg.lr,
            "steps_per_s": 100.0,
            "train_s": step / 100,
            "loss": 4 * value,
            "candidate_loss": value,
            "excess": 4 * value,
            "n_seeds": cfg.num_seeds,
            "n_escaped": sum(t.status == "escaped" for t in trackers),
            "n_resolved": sum(t.resolved for t in trackers),
            "done": step == cfg.max_steps,
            "seeds": seeds,
            "resumed_from": None if resume_from is None else start - cfg.eval_every,
        }
        checkpoint = None
        if n % cfg.checkpoint_every == 0:
            checkpoint = tempfile.mkdtemp(prefix="toy-")
            with open(os.path.join(checkpoint, "toy.json"), "w") as f:
                json.dump({"step": step}, f)
        try:
            if report is not None:
                report(metrics, checkpoint)
        finally:
            if checkpoint is not None:
                shutil.rmtree(checkpoint, ignore_errors=True)
    return {"steps": cfg.max_steps}
