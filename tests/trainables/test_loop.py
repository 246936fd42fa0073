"""The training loop: reports, determinism, resume, divergence, seeds, refused configs."""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch

from tests.trainables.oracles import DIVERGING
from trainables import checkpoint, loop
from trainables.config import ConfigError, resolve

FAST = {
    "size": "tiny",
    "K": 4,
    "D": 64,
    "batch_size": 16,
    "eval_size": 32,
    "max_steps": 12,
    "eval_every": 3,
    "warmup_steps": 4,
    "lr": 3e-3,
    "stop_on_escape": False,
}
TIMING = {"tokens_per_s", "steps_per_s", "train_s", "setup_s"}
TOP_KEYS = {
    "step",
    "lr_now",
    "tokens_per_s",
    "steps_per_s",
    "train_s",
    "setup_s",
    "loss",
    "candidate_loss",
    "excess",
    "n_seeds",
    "n_escaped",
    "n_resolved",
    "done",
    "seeds",
}
SEED_KEYS = {
    "seed",
    "init_seed",
    "order_seed",
    "data_seed",
    "loss",
    "floor",
    "excess",
    "candidate_loss",
    "first_token_loss",
    "accuracy",
    "z_shuffle_gap",
    "routing_score",
    "routing_heads",
    "status",
    "onset_step",
    "escape_step",
    "converged_step",
    "diverged_step",
}


class Recorder:
    """A report callback that keeps every report and copies every checkpoint."""

    def __init__(self, keep_dir=None) -> None:
        self.reports: list[dict] = []
        self.checkpoints: dict[int, str] = {}
        self.keep_dir = keep_dir

    def __call__(self, metrics: dict, ckpt: str | None) -> None:
        self.reports.append(metrics)
        if ckpt is not None:
            assert os.path.isfile(os.path.join(ckpt, checkpoint.FILE))
            if self.keep_dir is not None:
                dest = os.path.join(self.keep_dir, f"step{metrics['step']}")
                shutil.copytree(ckpt, dest)
                self.checkpoints[metrics["step"]] = dest

    def curve(self) -> list[dict]:
        """Reports without their timing keys."""
        return [{k: v for k, v in r.items() if k not in TIMING} for r in self.reports]


def run(cfg: dict, **kw) -> tuple[loop.TrainResult, Recorder]:
    rec = Recorder(kw.pop("keep_dir", None))
    return loop.train({**FAST, **cfg}, rec, **kw), rec


def test_reports_at_step_0_every_eval_every_and_the_last_step():
    result, rec = run({"max_steps": 10, "checkpoint_every": 2})
    assert [r["step"] for r in rec.reports] == [0, 3, 6, 9, 10]
    assert [r["done"] for r in rec.reports] == [False] * 4 + [True]
    assert result.steps == 10 and result.status == "censored"
    first = rec.reports[0]
    assert set(first) == TOP_KEYS and set(first["seeds"][0]) == SEED_KEYS
    assert first["tokens_per_s"] is None and rec.reports[1]["tokens_per_s"] > 0
    s = rec.reports[-1]["seeds"][0]
    assert s["floor"] == 0.0 and s["excess"] == pytest.approx(s["loss"])
    assert len(s["routing_heads"]) == 2 and len(s["routing_heads"][0]) == 2
    assert s["routing_score"] == pytest.approx(max(max(h) for h in s["routing_heads"]))
    assert s["candidate_loss"] == pytest.approx(math.log(4), rel=0.2)
    assert s["z_shuffle_gap"] is not None and 0 <= s["accuracy"] <= 1


def test_checkpoints_every_checkpoint_every_evaluations_then_removed():
    seen: list[tuple[int, str | None]] = []
    loop.train(
        {**FAST, "max_steps": 10, "checkpoint_every": 2}, lambda m, c: seen.append((m["step"], c))
    )
    assert [s for s, c in seen if c] == [6, 10]  # evaluations 2 and 4, and the last
    assert not any(c and os.path.exists(c) for _, c in seen)


def test_same_seeds_give_a_bit_identical_curve():
    _, a = run({})
    _, b = run({})
    assert a.curve() == b.curve()


def test_seeds_for_init_data_and_order_are_separate():
    _, base = run({})
    _, order = run({"order_seed": 5})
    _, data = run({"data_seed": 5})
    _, init = run({"seed": 5, "data_seed": 0, "order_seed": 0})
    step0 = base.reports[0]["seeds"][0]
    # order changes nothing before the first update; data and init change step 0
    assert order.reports[0]["seeds"][0]["loss"] == step0["loss"]
    assert order.reports[-1]["seeds"][0]["loss"] != base.reports[-1]["seeds"][0]["loss"]
    assert data.reports[0]["seeds"][0]["loss"] != step0["loss"]
    assert init.reports[0]["seeds"][0]["loss"] != step0["loss"]
    assert order.reports[0]["seeds"][0]["order_seed"] == 5


def test_evaluation_never_changes_training():
    _, sparse = run({"eval_every": 6})
    _, dense = run({"eval_every": 1})
    by_step = {r["step"]: r["seeds"][0]["loss"] for r in dense.reports}
    assert all(by_step[r["step"]] == r["seeds"][0]["loss"] for r in sparse.reports)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"task": "mapping", "direction": "inverse", "model": "mlp", "mlp_width": 32},
        {"lora_rank": 2, "lora_dropout": 0.1},
        {"optimizer": "sgd", "schedule": "cosine", "num_seeds": 2},  # stacked
        {"num_seeds": 3},  # stacked GPT-2, AdamW
        {"num_seeds": 2, "model": "mlp", "mlp_width": 32, "precision": "bf16"},  # stacked
        {"num_seeds": 2, "seed_mode": "sequential"},
    ],
)
def test_resume_reproduces_the_uninterrupted_curve(tmp_path, extra):
    cfg = {"checkpoint_every": 2, **extra}
    _, full = run(cfg, keep_dir=tmp_path)
    assert 6 in full.checkpoints
    _, resumed = run(cfg, resume_from=full.checkpoints[6])
    assert resumed.curve() == [r for r in full.curve() if r["step"] > 6]


def test_resume_may_extend_the_budget_but_not_change_the_trial(tmp_path):
    _, short = run({"max_steps": 6, "checkpoint_every": 100}, keep_dir=tmp_path)
    _, longer = run({}, resume_from=short.checkpoints[6])
    _, full = run({})
    assert longer.curve() == [r for r in full.curve() if r["step"] > 6]
    with pytest.raises(ValueError, match="resume_from holds another trial: lr differ"):
        loop.train({**FAST, "lr": 1e-2}, resume_from=short.checkpoints[6])


def test_checkpoint_loads_with_weights_only(tmp_path):
    _, rec = run({"max_steps": 3}, keep_dir=tmp_path)
    payload = torch.load(os.path.join(rec.checkpoints[3], checkpoint.FILE), weights_only=True)
    assert payload["step"] == 3 and payload["config"]["K"] == 4
    seed = payload["seeds"][0]
    assert {"model", "optimizer", "scheduler", "order", "rng", "tracker", "history"} <= set(seed)


def test_lora_checkpoints_hold_only_the_adapters(tmp_path):
    _, rec = run({"max_steps": 3, "lora_rank": 2}, keep_dir=tmp_path)
    state = checkpoint.read(rec.checkpoints[3])["seeds"][0]["model"]
    assert state and all("lora_" in k for k in state)


def test_a_non_finite_loss_ends_the_trial_as_diverged():
    result, rec = run(DIVERGING)
    last = rec.reports[-1]
    assert last["done"] and last["step"] < 50
    s = last["seeds"][0]
    assert s["status"] == "diverged" and 1 <= s["diverged_step"] <= last["step"]
    assert result.status == "diverged" and result.seeds[0].diverged_step == s["diverged_step"]


def test_sequential_seeds_train_exactly_as_their_single_seed_trials():
    _, both = run(
        {"num_seeds": 2, "seed": 1, "order_seed": 3, "data_seed": 0, "seed_mode": "sequential"}
    )
    _, second = run({"seed": 2, "order_seed": 4, "data_seed": 0})
    last = both.reports[-1]
    assert last["n_seeds"] == 2 and [s["seed"] for s in last["seeds"]] == [1, 2]
    assert [s["order_seed"] for s in last["seeds"]] == [3, 4]
    assert [r["seeds"][1] for r in both.curve()] == [r["seeds"][0] for r in second.curve()]
    assert last["loss"] == pytest.approx(sum(s["loss"] for s in last["seeds"]) / 2)


def test_mapping_reports_its_floor_and_converges():
    result, rec = run(
        {
            "task": "mapping",
            "direction": "inverse",
            "K": 2,
            "D": 32,
            "batch_size": 32,
            "string_len": 3,
            "lr": 1e-2,
            "warmup_steps": 20,
            "max_steps": 400,
            "eval_every": 20,
            "stop_on_escape": True,
            "converge_tol": 0.1,
        }
    )
    s = rec.reports[-1]["seeds"][0]
    assert s["floor"] == pytest.approx(math.log(2)) and s["candidate_loss"] is None
    assert s["routing_score"] is None and s["z_shuffle_gap"] is None
    assert result.status == "converged" and result.steps < 400
    assert s["excess"] == pytest.approx(s["loss"] - math.log(2))
    assert -0.05 < s["excess"] <= 0.1


def test_learning_rate_warms_up_then_stays_constant_or_follows_cosine():
    cfg = resolve({**FAST, "lr": 1e-3, "warmup_steps": 4, "max_steps": 104})
    assert [loop.lr_at(cfg, s) for s in range(5)] == pytest.approx(
        [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3]
    )
    assert loop.lr_at(cfg, 10_000) == 1e-3  # the budget does not matter
    cos = resolve(
        {
            **FAST,
            "lr": 1e-3,
            "warmup_steps": 4,
            "max_steps": 104,
            "schedule": "cosine",
            "min_lr_ratio": 0.1,
        }
    )
    assert loop.lr_at(cos, 54) == pytest.approx(0.55e-3)
    assert loop.lr_at(cos, 104) == pytest.approx(1e-4)


def test_optimizer_settings_come_from_the_config():
    cfg = resolve({**FAST, "beta1": 0.8, "beta2": 0.95, "eps": 1e-6, "weight_decay": 0.1})
    opt = loop.make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(2))], torch.device("cpu"))
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.AdamW)
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.8, 0.95), 1e-6, 0.1)
    sgd = loop.make_optimizer(
        resolve({**FAST, "optimizer": "sgd", "momentum": 0.5}),
        [torch.nn.Parameter(torch.zeros(2))],
        torch.device("cpu"),
    )
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.5


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"K": 37, "D": 370}, "K=37 is not allowed: must be <= alphabet_size=36"),
        ({"K": 4, "D": 66}, "D=66 is not allowed: must be a multiple of K=4"),
        (
            {"len_z": 1, "K": 40, "D": 400, "distinct_first": False},
            r"K=40 is not allowed: must be <= 36\*\*1",
        ),
        (
            {"task": "mapping", "string_len": 2, "D": 2000, "K": 2},
            r"D=2000 is not allowed: must be <= 36\*\*2",
        ),
        ({"len_a": 2, "K": 10, "D": 370 * 10}, "bases=370 is not allowed: must be <= 36"),
        ({"num_seeds": 0}, "num_seeds=0 is not allowed"),
    ],
)
def test_impossible_requests_are_refused_before_training(cfg, match):
    calls = []
    with pytest.raises(ConfigError, match=match):
        loop.train({**FAST, **cfg}, lambda m, c: calls.append(m))
    assert not calls
