"""Several seeds in one trial, stacked into one model: each seed is its own trial.

Seed i of a stacked S-seed trial (``seed``, ``order_seed``) must follow the single-seed
trial of ``seed + i`` / ``order_seed + i`` to floating-point tolerance, escape on its
own, diverge on its own without touching the others, and resume exactly.
"""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch

from tests.trainables.oracles import DIVERGING
from trainables import checkpoint, evaluate, loop, models, stacked

# tiny GPT-2 and MLP settings whose seeds escape within about 100 steps
QUICK = {
    "size": "tiny",
    "K": 4,
    "D": 64,
    "batch_size": 16,
    "eval_size": 32,
    "lr": 3e-3,
    "warmup_steps": 4,
    "eval_every": 5,
    "max_steps": 150,
    "stop_on_escape": True,
    "data_seed": 0,
}
MODELS = {"gpt2": {}, "mlp": {"model": "mlp", "mlp_width": 32, "eval_every": 2}}
S = 3
# seed i of the stacked trial and its single-seed trial agree to this tolerance
TOL = {"rel": 1e-4, "abs": 2e-5}
COMPARED = ("loss", "candidate_loss", "first_token_loss", "z_shuffle_gap", "routing_score")


def train(cfg: dict) -> tuple[loop.TrainResult, list[dict]]:
    reports: list[dict] = []
    result = loop.train(cfg, lambda metrics, _: reports.append(metrics))
    return result, reports


@pytest.fixture(scope="module", params=sorted(MODELS))
def side_by_side(request) -> dict:
    """One stacked S-seed trial and the S single-seed trials of its seeds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as conftest does for each test; this fixture runs before
    cfg = {**QUICK, **MODELS[request.param]}
    try:
        both = train({**cfg, "num_seeds": S, "seed": 1, "order_seed": 3})
        singles = [train({**cfg, "seed": 1 + i, "order_seed": 3 + i}) for i in range(S)]
    finally:
        torch.set_num_threads(threads)
    return {"model": request.param, "stacked": both, "singles": singles}


def test_a_stacked_trial_trains_its_seeds_as_one_model(side_by_side):
    result, reports = side_by_side["stacked"]
    assert result.config["num_seeds"] == S and result.config["seed_mode"] == "auto"
    assert [s.seed for s in result.seeds] == [1, 2, 3]
    assert [s.order_seed for s in result.seeds] == [3, 4, 5]
    assert all(r["n_seeds"] == S and len(r["seeds"]) == S for r in reports)


def test_seed_i_follows_its_single_seed_trial_to_floating_point_tolerance(side_by_side):
    _, reports = side_by_side["stacked"]
    by_step = {r["step"]: r for r in reports}
    for i, (_, single) in enumerate(side_by_side["singles"]):
        for one in single:
            mine, theirs = by_step[one["step"]]["seeds"][i], one["seeds"][0]
            for key in COMPARED:
                if theirs[key] is None:
                    assert mine[key] is None
                else:
                    assert mine[key] == pytest.approx(theirs[key], **TOL), (i, one["step"], key)
            assert mine["accuracy"] == pytest.approx(theirs["accuracy"], abs=1.5 / 32)
            if theirs["routing_heads"] is not None:
                assert torch.allclose(
                    torch.tensor(mine["routing_heads"]),
                    torch.tensor(theirs["routing_heads"]),
                    rtol=TOL["rel"],
                    atol=TOL["abs"],
                )
            for key in ("status", "onset_step", "escape_step"):
                assert mine[key] == theirs[key], (i, one["step"], key)


def test_each_seed_escapes_on_its_own_and_the_trial_waits_for_the_last(side_by_side):
    result, reports = side_by_side["stacked"]
    singles = [r for r, _ in side_by_side["singles"]]
    assert [s.status for s in result.seeds] == ["escaped"] * S
    assert [s.escape_step for s in result.seeds] == [r.seeds[0].escape_step for r in singles]
    assert [s.onset_step for s in result.seeds] == [r.seeds[0].onset_step for r in singles]
    # the trial ends when its last seed is resolved, where that seed's own trial ends
    assert result.steps == max(r.steps for r in singles) < QUICK["max_steps"]
    if side_by_side["model"] == "gpt2":  # its seeds escape at different steps
        assert len({s.escape_step for s in result.seeds}) > 1
    # a seed that escaped stays escaped while the others go on
    first = min(s.escape_step for s in result.seeds)
    early = [i for i, s in enumerate(result.seeds) if s.escape_step == first]
    later = [r for r in reports if r["step"] > first + 3 * QUICK["eval_every"]]
    assert all(r["seeds"][i]["status"] == "escaped" for r in later for i in early)
    assert [r["n_resolved"] for r in reports][-1] == S and reports[-1]["done"]


def test_every_seed_diverges_at_its_single_seed_step():
    cfg = {**QUICK, **DIVERGING}
    result, reports = train({**cfg, "num_seeds": S, "seed": 1, "order_seed": 3})
    singles = [train({**cfg, "seed": 1 + i, "order_seed": 3 + i})[0] for i in range(S)]
    assert [s.status for s in result.seeds] == ["diverged"] * S
    assert [s.diverged_step for s in result.seeds] == [r.seeds[0].diverged_step for r in singles]
    assert reports[-1]["done"] and result.steps < 50


def _poisoned_pair(n_before: int, **extra) -> tuple[loop.Trial, loop.Trial]:
    """Two identical stacked trials; seed 1 of the first gets a NaN weight after
    ``n_before`` steps."""
    cfg = loop.resolve({**QUICK, "num_seeds": S, "max_steps": 100, **extra})
    clean, poisoned = loop.Trial(cfg), loop.Trial(cfg)
    for trial in (clean, poisoned):
        for _ in range(n_before):
            trial.advance()
            trial.check_divergence()
    seeds = poisoned.seeds
    assert isinstance(seeds, stacked.StackedSeeds)
    with torch.no_grad():
        next(iter(seeds.model.params.values()))[1, 0] = math.nan
    return clean, poisoned


def _weights(trial: loop.Trial, i: int) -> list[torch.Tensor]:
    seeds = trial.seeds
    assert isinstance(seeds, stacked.StackedSeeds)
    return [p[i].detach().clone() for p in seeds.params]


@pytest.mark.parametrize("extra", [{}, {"optimizer": "sgd"}, {"model": "mlp", "mlp_width": 32}])
def test_a_diverged_seed_is_frozen_and_leaves_the_others_bit_identical(extra):
    clean, poisoned = _poisoned_pair(4, **extra)
    frozen = None
    for step in range(5, 12):
        for trial in (clean, poisoned):
            trial.advance()
            trial.check_divergence()
        if step == 6:
            frozen = _weights(poisoned, 1)
    for i in (0, 2):
        for mine, theirs in zip(_weights(poisoned, i), _weights(clean, i), strict=True):
            assert torch.equal(mine, theirs)
    # the first step after the NaN weight has a non-finite loss; from then on seed 1 stays
    assert poisoned.runs[1].tracker.diverged_step == 5
    assert [r.diverged for r in poisoned.runs] == [False, True, False]
    assert frozen is not None
    for now, then in zip(_weights(poisoned, 1), frozen, strict=True):
        torch.testing.assert_close(now, then, rtol=0, atol=0, equal_nan=True)
    poisoned.evaluate()
    clean.evaluate()
    for i in (0, 2):
        assert poisoned.runs[i].last == clean.runs[i].last


@pytest.mark.parametrize("extra", [{}, {"optimizer": "sgd", "momentum": 0.0}])
def test_resume_after_a_seed_diverged_continues_identically(extra):
    _, poisoned = _poisoned_pair(3, **extra)
    for _ in range(3):
        poisoned.advance()
        poisoned.check_divergence()
    poisoned.evaluate()
    resumed = loop.Trial(poisoned.cfg)
    resumed.load(checkpoint.read(checkpoint.write(poisoned.state())))
    for _ in range(4):
        for trial in (poisoned, resumed):
            trial.advance()
            trial.check_divergence()
    poisoned.evaluate()
    resumed.evaluate()
    for i in range(S):
        for mine, theirs in zip(_weights(resumed, i), _weights(poisoned, i), strict=True):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0, equal_nan=True)
    assert [r.tracker.diverged_step for r in resumed.runs] == [None, 4, None]
    assert [r.last for r in resumed.runs][::2] == [r.last for r in poisoned.runs][::2]


def test_stacked_checkpoints_hold_each_seeds_weights_as_its_own_module(tmp_path):
    kept: dict[int, str] = {}

    def keep(metrics: dict, ckpt: str | None) -> None:
        if ckpt is not None:
            kept[metrics["step"]] = shutil.copytree(ckpt, os.path.join(tmp_path, "last"))

    cfg = loop.resolve({**QUICK, "num_seeds": 2, "max_steps": 6, "stop_on_escape": False})
    reports: list[dict] = []
    loop.train(cfg, lambda m, c: (reports.append(m), keep(m, c)))
    payload = checkpoint.read(kept[6])
    trial = loop.Trial(cfg)
    for i, entry in enumerate(payload["seeds"]):
        module = models.build_model(cfg, trial.data, 99)  # other weights, then loaded
        models.load_trainable_state(module, cfg, entry["model"])
        metrics = evaluate.evaluate(module, trial.eval_batch, trial.floor)
        assert metrics["loss"] == pytest.approx(reports[-1]["seeds"][i]["loss"], **TOL)
        assert {"model", "optimizer", "scheduler", "order", "tracker", "history"} <= set(entry)


def test_bf16_stacked_seeds_follow_their_bf16_single_seed_trials():
    cfg = {**QUICK, "precision": "bf16", "max_steps": 10, "stop_on_escape": False}
    _, both = train({**cfg, "num_seeds": 2, "seed": 1, "order_seed": 3})
    _, second = train({**cfg, "seed": 2, "order_seed": 4})
    for mine, theirs in zip(both, second, strict=True):
        assert mine["seeds"][1]["loss"] == pytest.approx(theirs["seeds"][0]["loss"], rel=2e-2)
        assert math.isfinite(mine["seeds"][1]["candidate_loss"])


@pytest.mark.parametrize(
    ("extra", "kind"),
    [
        ({"num_seeds": 2}, stacked.StackedSeeds),
        ({"num_seeds": 1, "seed_mode": "stacked"}, stacked.StackedSeeds),
        ({"num_seeds": 1}, loop.SequentialSeeds),
        ({"num_seeds": 2, "seed_mode": "sequential"}, loop.SequentialSeeds),
        ({"num_seeds": 2, "lora_rank": 2}, loop.SequentialSeeds),
    ],
)
def test_seed_mode_decides_how_seeds_train(extra, kind):
    trial = loop.Trial(loop.resolve({**QUICK, **extra}))
    assert isinstance(trial.seeds, kind)
    trial.advance()
    trial.evaluate()
    assert all(math.isfinite(r.last["loss"]) for r in trial.runs if r.last)


def test_seeds_stack_from_a_base_checkpoint_too(tiny_base):
    cfg = {**QUICK, "base": tiny_base, "max_steps": 6, "eval_every": 3, "stop_on_escape": False}
    _, both = train({**cfg, "num_seeds": 2, "seed": 1, "order_seed": 3})
    _, second = train({**cfg, "seed": 2, "order_seed": 4})
    assert [r["seeds"][1]["loss"] for r in both] == pytest.approx(
        [r["seeds"][0]["loss"] for r in second], **TOL
    )
    # the same base weights, another batch order: the seeds part after step 0
    assert both[0]["seeds"][0]["loss"] == both[0]["seeds"][1]["loss"]
    assert both[-1]["seeds"][0]["loss"] != both[-1]["seeds"][1]["loss"]


def test_a_base_with_layers_the_stack_lacks_trains_sequentially_or_is_refused(tiny_base):
    from transformers import GPT2Config

    # cross-attention layers: GPT-2 may carry them, the stacked forward does not
    config = GPT2Config.from_pretrained(tiny_base)
    config.add_cross_attention = True
    config.save_pretrained(tiny_base + "-cross")
    for name in os.listdir(tiny_base):
        if name != "config.json":
            shutil.copy(os.path.join(tiny_base, name), tiny_base + "-cross")
    cfg = {**QUICK, "base": tiny_base + "-cross", "num_seeds": 2}
    trial = loop.Trial(loop.resolve(cfg))
    assert isinstance(trial.seeds, loop.SequentialSeeds)
    with pytest.raises(loop.ConfigError, match="seed_mode='stacked' is not allowed"):
        loop.Trial(loop.resolve({**cfg, "seed_mode": "stacked"}))
