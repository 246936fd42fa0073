"""The training loop: a plain function that takes a trial config and a callback.

Example::

    from trainables.loop import train

    result = train({"task": "disambiguation", "size": "tiny", "K": 10, "D": 1000},
                   report=lambda metrics, checkpoint_dir: print(metrics["step"]))

Ray Tune is one caller (study wraps ``report`` around ``tune.report``); tests and the
benchmark are others. One trial trains ``num_seeds`` models; model i has
initialization seed ``seed + i`` and order seed ``order_seed + i``, and all share the
data set and the evaluation batch. With ``seed_mode`` stacked (the default for several
seeds without LoRA) the S models train as one model with stacked weights
(:mod:`trainables.stacked`); otherwise one after the other at every step
(:class:`SequentialSeeds`). Either way seed i follows the single-seed trial of its
seeds: exactly when sequential, to floating-point tolerance when stacked.

The recipe: AdamW (or SGD) on every trainable weight, linear warm-up over
``warmup_steps`` then a constant learning rate (or cosine down to ``min_lr_ratio``
at ``max_steps``), gradient-norm clipping. The training objective is the mean NLL
per target token; the reported ``loss`` is the per-sequence SUM over target tokens
(comparable to log K), with the floor of exactly that loss (see tasks.floor: 0 for
disambiguation and forward mapping, log K for inverse mapping with GPT-2, the
per-position conditional entropy of the data for inverse mapping with the MLP).

Evaluations (step 0, every ``eval_every`` steps and the last step) feed one
``analysis.escape.EscapeTracker`` per seed: the candidate-set loss in ``escape``
mode for disambiguation, the loss against its floor in ``converge`` mode for
mapping. The trial ends when every seed is resolved (``stop_on_escape``), when every
seed has diverged (a non-finite training loss, step recorded), or at ``max_steps``
(unresolved seeds are censored).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from analysis.escape import EscapeTracker, all_resolved, summarize_curve
from trainables import checkpoint, evaluate, models, stacked, tasks
from trainables.config import (
    MARGINAL_METRIC,
    ConfigError,
    TrialConfig,
    escape_rule,
    resolve,
    watched_metric,
)

log = logging.getLogger(__name__)

Report = Callable[[dict, "str | None"], None]
# keys that may change between a checkpoint and its resumption
RESUMABLE_CHANGES = frozenset({"max_steps", "stop_on_escape", "checkpoint_every", "device"})


@dataclass(frozen=True)
class SeedSummary:
    """Where one seed ended."""

    seed: int
    init_seed: int
    order_seed: int
    status: str
    onset_step: int | None
    escape_step: int | None
    converged_step: int | None
    diverged_step: int | None
    final_loss: float | None
    final_excess: float | None
    floor: float
    plateau_loss: float | None


@dataclass(frozen=True)
class TrainResult:
    """What ``train`` returns: the resolved config, steps trained, one summary per seed."""

    config: dict[str, Any]
    steps: int
    seeds: list[SeedSummary]
    wall_s: float

    @property
    def status(self) -> str:
        """The status of the first seed (the trial's, when it trains one)."""
        return self.seeds[0].status


# batch order --------------------------------------------------------------------


@dataclass
class BatchOrder:
    """Epochs of random permutations of the D examples, from the seed's own generator."""

    generator: torch.Generator
    n: int
    perm: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    pos: int = 0

    def next(self, size: int) -> torch.Tensor:
        """The indices of the next batch; a batch may span two epochs."""
        if self.pos + size <= len(self.perm):
            idx = self.perm[self.pos : self.pos + size]
            self.pos += size
            return idx
        rest = self.perm[self.pos :]
        self.perm = torch.randperm(self.n, generator=self.generator)
        self.pos = size - len(rest)
        return torch.cat([rest, self.perm[: self.pos]])

    def state(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "perm": self.perm.clone(),
            "pos": self.pos,
        }

    def load(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.perm = state["perm"].clone()
        self.pos = int(state["pos"])


# one seed -----------------------------------------------------------------------


@dataclass
class SeedRun:
    """One seed's batch order, escape tracker and curve, however its model trains."""

    index: int
    init_seed: int
    order_seed: int
    order: BatchOrder
    tracker: EscapeTracker
    # (step, watched loss, first-token loss or None) at every evaluation
    history: list[tuple[int, float, float | None]] = field(default_factory=list)
    last: dict[str, Any] | None = None

    @property
    def diverged(self) -> bool:
        return self.tracker.diverged_step is not None


def make_seed_run(cfg: TrialConfig, data: tasks.TaskData, index: int, floor: float) -> SeedRun:
    """Seed ``index`` of a trial: its seeds, order generator and tracker."""
    order_seed = cfg.resolved_order_seed + index
    gen = torch.Generator().manual_seed(tasks.derive_seed(order_seed, tasks.ORDER_TAG))
    return SeedRun(
        index=index,
        init_seed=cfg.seed + index,
        order_seed=order_seed,
        order=BatchOrder(gen, data.n_examples),
        tracker=EscapeTracker(escape_rule(cfg), cfg.log_k, floor),
    )


@dataclass
class SoloModel:
    """The module and optimizer of a seed that trains on its own."""

    model: models.TargetModel
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    rng: dict[str, Any] | None  # global generator states; None when training draws none
    bad: torch.Tensor  # first step with a non-finite loss, -1 if none (on the device)


def make_solo(
    cfg: TrialConfig, data: tasks.TaskData, init_seed: int, device: torch.device
) -> SoloModel:
    """The model, optimizer and dropout generator of one seed."""
    model = models.build_model(cfg, data, init_seed).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    rng = None
    if models.is_lora(cfg) and cfg.lora_dropout > 0:  # the only random draw in a step
        with torch.random.fork_rng(devices=_cuda_devices(device)):
            torch.manual_seed(tasks.derive_seed(init_seed, tasks.ORDER_TAG + 1))
            rng = _rng_state(device)
    return SoloModel(
        model=model,
        params=params,
        optimizer=make_optimizer(cfg, params, device),
        rng=rng,
        bad=torch.full((), -1, dtype=torch.long, device=device),
    )


def make_optimizer(
    cfg: TrialConfig, params: Sequence[torch.Tensor], device: torch.device
) -> torch.optim.Optimizer:
    """AdamW or SGD with the config's settings; lr is set at every step by lr_at."""
    lr = models.base_lr(cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=True
        )
    return torch.optim.AdamW(
        params,
        lr=lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        fused=device.type in ("cpu", "cuda"),
    )


def lr_at(cfg: TrialConfig, step: int) -> float:
    """Learning rate of update number ``step`` (0-based); independent of max_steps
    unless the schedule is cosine."""
    base = models.base_lr(cfg)
    if step < cfg.warmup_steps:
        return base * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return base
    t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return base * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def train_step(
    run: SoloModel,
    seq: torch.Tensor,
    targets: torch.Tensor,
    lr: float,
    step: int,
    cfg: TrialConfig,
    amp: Callable[[], contextlib.AbstractContextManager],
) -> None:
    """One update of one seed on the batch ``seq`` [B, T]; records a non-finite loss."""
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    with _seed_rng(run), amp():
        logp = run.model(seq)  # [B, L, V]
        loss = F.nll_loss(logp.flatten(0, 1), targets.flatten())
    loss.backward()
    if cfg.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(run.params, cfg.grad_clip, foreach=True)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.bad = torch.where((run.bad < 0) & ~torch.isfinite(loss.detach()), step, run.bad)


@contextlib.contextmanager
def _seed_rng(run: SoloModel):
    """Lends the global generator to this seed (dropout draws from it), then takes it back."""
    if run.rng is None:
        yield
        return
    device = run.bad.device
    with torch.random.fork_rng(devices=_cuda_devices(device)):
        torch.set_rng_state(run.rng["cpu"])
        if device.type == "cuda" and run.rng.get("cuda") is not None:
            torch.cuda.set_rng_state(run.rng["cuda"], device)
        yield
        run.rng = _rng_state(device)


def _rng_state(device: torch.device) -> dict[str, Any]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def _cuda_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


# the trial ----------------------------------------------------------------------


def resolve_device(cfg: TrialConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def make_amp(cfg: TrialConfig, device: torch.device) -> Callable[[], Any]:
    if cfg.precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


class Seeds(Protocol):
    """How a trial's S models train: :class:`SequentialSeeds` or ``stacked.StackedSeeds``.

    ``indices`` holds each seed's batch [B] (None for a seed known to have diverged).
    """

    def step(self, indices: list[torch.Tensor | None], lr: float, step: int) -> None: ...

    def bad_steps(self) -> list[int]: ...

    def evaluate(self, batch: evaluate.EvalBatch, floor: float) -> list[dict[str, Any]]: ...

    def seed_states(self) -> list[dict[str, Any]]: ...

    def load_seed_states(self, states: Sequence[Mapping[str, Any]]) -> None: ...


class SequentialSeeds:
    """One module per seed, trained one after the other at every step."""

    def __init__(
        self,
        cfg: TrialConfig,
        data: tasks.TaskData,
        init_seeds: list[int],
        seq: torch.Tensor,
        amp: Callable[[], contextlib.AbstractContextManager],
    ) -> None:
        self.cfg = cfg
        self.seq = seq  # [D, T] on the device
        self.targets = slice(data.tgt_start, data.tgt_start + data.tgt_len)
        self.amp = amp
        self.solos = [make_solo(cfg, data, s, seq.device) for s in init_seeds]

    def step(self, indices: list[torch.Tensor | None], lr: float, step: int) -> None:
        for solo, idx in zip(self.solos, indices, strict=True):
            if idx is None:
                continue
            seq = self.seq[idx.to(self.seq.device, non_blocking=True)]
            train_step(solo, seq, seq[:, self.targets], lr, step, self.cfg, self.amp)

    def bad_steps(self) -> list[int]:
        return [int(solo.bad.item()) for solo in self.solos]

    def evaluate(self, batch: evaluate.EvalBatch, floor: float) -> list[dict[str, Any]]:
        return [evaluate.evaluate(solo.model, batch, floor, self.amp) for solo in self.solos]

    def seed_states(self) -> list[dict[str, Any]]:
        return [
            {
                "model": models.trainable_state(solo.model, self.cfg),
                "optimizer": solo.optimizer.state_dict(),
                "rng": solo.rng,
                "bad": int(solo.bad.item()),
            }
            for solo in self.solos
        ]

    def load_seed_states(self, states: Sequence[Mapping[str, Any]]) -> None:
        for solo, state in zip(self.solos, states, strict=True):
            models.load_trainable_state(solo.model, self.cfg, state["model"])
            solo.optimizer.load_state_dict(state["optimizer"])
            solo.rng = state["rng"]
            solo.bad.fill_(int(state["bad"]))


def make_seeds(
    cfg: TrialConfig,
    data: tasks.TaskData,
    init_seeds: list[int],
    seq: torch.Tensor,
    amp: Callable[[], contextlib.AbstractContextManager],
) -> Seeds:
    """Stacked seeds when the config asks for them (``seed_mode``), else sequential.

    Raises:
        ConfigError: ``seed_mode`` stacked for a model that cannot stack.
    """
    if cfg.stacked:
        try:
            return stacked.StackedSeeds(
                cfg, data, init_seeds, seq, amp, lambda p: make_optimizer(cfg, p, seq.device)
            )
        except ConfigError as err:
            if cfg.seed_mode != "auto":
                raise
            log.info("seeds train one after the other: %s", err)
    return SequentialSeeds(cfg, data, init_seeds, seq, amp)


class Trial:
    """One trial's state and its steps; ``train`` drives it."""

    def __init__(self, cfg: TrialConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg)
        self.amp = make_amp(cfg, self.device)
        self.data = tasks.make_task(cfg)
        self.floor = tasks.floor(self.data, cfg.model)
        self.seq = self.data.seq.to(self.device)
        self.eval_batch = evaluate.make_eval_batch(cfg, self.data, self.device)
        self.runs = [make_seed_run(cfg, self.data, i, self.floor) for i in range(cfg.num_seeds)]
        init_seeds = [run.init_seed for run in self.runs]
        self.seeds = make_seeds(cfg, self.data, init_seeds, self.seq, self.amp)
        self.step = 0
        self.n_evals = 0
        self.train_s = 0.0
        self.setup_s = 0.0  # building data and models (set by train)
        self.tokens_per_step = cfg.batch_size * (self.data.seq_len - 1)

    # training
    def advance(self) -> None:
        """One step: every seed that has not diverged takes one update."""
        lr = lr_at(self.cfg, self.step)
        size = self.cfg.batch_size
        indices = [None if run.diverged else run.order.next(size) for run in self.runs]
        self.seeds.step(indices, lr, self.step + 1)
        self.step += 1

    def check_divergence(self) -> bool:
        """Marks seeds whose loss went non-finite; True if any newly diverged."""
        newly = False
        for run, bad in zip(self.runs, self.seeds.bad_steps(), strict=True):
            if bad >= 0 and not run.diverged:
                run.tracker.update(bad, math.nan)
                newly = True
        return newly

    # evaluation
    def evaluate(self) -> None:
        watched_key = watched_metric(self.cfg)
        seeds = self.seeds.evaluate(self.eval_batch, self.floor)
        for run, metrics in zip(self.runs, seeds, strict=True):
            watched, marginal = metrics[watched_key], metrics.get(MARGINAL_METRIC)
            run.tracker.update(self.step, watched, marginal)
            run.history.append((self.step, watched, marginal))
            run.last = metrics
        self.n_evals += 1

    def done(self) -> bool:
        if self.step >= self.cfg.max_steps or all(r.diverged for r in self.runs):
            return True
        return self.cfg.stop_on_escape and all_resolved(r.tracker for r in self.runs)

    def metrics(self, done: bool, steps_per_s: float | None) -> dict[str, Any]:
        seeds = [self._seed_metrics(run) for run in self.runs]
        active = sum(not r.diverged for r in self.runs) or len(self.runs)
        tokens = None if steps_per_s is None else steps_per_s * self.tokens_per_step * active
        return {
            "step": self.step,
            "lr_now": lr_at(self.cfg, max(self.step - 1, 0)),
            "tokens_per_s": tokens,
            "steps_per_s": steps_per_s,
            "train_s": self.train_s,
            "setup_s": self.setup_s,
            "loss": _mean(s["loss"] for s in seeds),
            "candidate_loss": _mean(s["candidate_loss"] for s in seeds),
            "excess": _mean(s["excess"] for s in seeds),
            "n_seeds": len(seeds),
            "n_escaped": sum(s["status"] == "escaped" for s in seeds),
            "n_resolved": sum(r.tracker.resolved for r in self.runs),
            "done": done,
            "seeds": seeds,
        }

    def _seed_metrics(self, run: SeedRun) -> dict[str, Any]:
        t = run.tracker
        return {
            "seed": run.init_seed,
            "init_seed": run.init_seed,
            "order_seed": run.order_seed,
            "data_seed": self.cfg.resolved_data_seed,
            **(run.last or {}),
            "status": t.status,
            "onset_step": t.onset_step,
            "escape_step": t.escape_step,
            "converged_step": t.converged_step,
            "diverged_step": t.diverged_step,
        }

    # checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "step": self.step,
            "n_evals": self.n_evals,
            "train_s": self.train_s,
            "seeds": [
                {
                    **trained,  # model, optimizer, rng, bad
                    "scheduler": {"step": self.step},
                    "order": r.order.state(),
                    "tracker": _tracker_state(r.tracker),
                    "history": [list(point) for point in r.history],
                    "last": r.last,
                }
                for r, trained in zip(self.runs, self.seeds.seed_states(), strict=True)
            ],
        }

    def load(self, payload: Mapping[str, Any]) -> None:
        _check_same_trial(self.cfg, payload["config"])
        if len(payload["seeds"]) != len(self.runs):
            raise ValueError(
                f"checkpoint has {len(payload['seeds'])} seeds, the config {len(self.runs)}"
            )
        self.step = int(payload["step"])
        self.n_evals = int(payload["n_evals"])
        self.train_s = float(payload["train_s"])
        self.seeds.load_seed_states(payload["seeds"])
        for run, state in zip(self.runs, payload["seeds"], strict=True):
            run.order.load(state["order"])
            for name, value in state["tracker"].items():
                setattr(run.tracker, name, value)
            run.history = [_history_point(*point) for point in state["history"]]
            run.last = state["last"]

    def summaries(self) -> list[SeedSummary]:
        out = []
        for run in self.runs:
            t, last = run.tracker, run.last or {}
            curve = (
                summarize_curve(
                    [p[0] for p in run.history],
                    [p[1] for p in run.history],
                    self.cfg.log_k,
                    t.rule,
                    self.floor,
                    [p[2] for p in run.history],
                )
                if run.history
                else None
            )
            out.append(
                SeedSummary(
                    seed=run.init_seed,
                    init_seed=run.init_seed,
                    order_seed=run.order_seed,
                    status=t.status,
                    onset_step=t.onset_step,
                    escape_step=t.escape_step,
                    converged_step=t.converged_step,
                    diverged_step=t.diverged_step,
                    final_loss=last.get("loss"),
                    final_excess=last.get("excess"),
                    floor=self.floor,
                    plateau_loss=curve.plateau_height if curve else None,
                )
            )
        return out


def train(
    config: Mapping[str, Any] | TrialConfig,
    report: Report | None = None,
    resume_from: str | os.PathLike | None = None,
) -> TrainResult:
    """Trains one trial, reporting at every evaluation.

    Args:
        config: a flat config mapping (validated by ``config.resolve``) or a TrialConfig.
        report: ``report(metrics, checkpoint_dir)``, called at step 0, every
            ``eval_every`` steps and at the last step. ``checkpoint_dir`` is a fresh
            directory holding a complete checkpoint every ``checkpoint_every``
            evaluations and at the last report, else None. It is deleted when
            ``report`` returns: copy (or move) it inside the callback.
        resume_from: a checkpoint directory written by this loop; training continues
            from it and reproduces the uninterrupted run's curve.

    Returns:
        The resolved config, steps trained, and a summary per seed.

    Raises:
        ConfigError: an invalid config (before anything is built).
    """
    cfg = config if isinstance(config, TrialConfig) else resolve(config)
    start = time.perf_counter()
    trial = Trial(cfg)
    if resume_from is not None:
        trial.load(checkpoint.read(resume_from))
        log.info("resumed trial at step %d from %s", trial.step, resume_from)
    trial.setup_s = time.perf_counter() - start
    if resume_from is None:
        trial.evaluate()
        _report(trial, report, trial.done(), None)
    while not trial.done():
        t0 = time.perf_counter()
        steps0 = trial.step
        while True:
            trial.advance()
            at_eval = trial.step % cfg.eval_every == 0 or trial.step >= cfg.max_steps
            # on the CPU every step (free); on CUDA only at evaluations (a sync)
            check = at_eval or trial.device.type == "cpu"
            if (check and trial.check_divergence()) or at_eval:
                break
        if trial.device.type == "cuda":
            torch.cuda.synchronize(trial.device)
        elapsed = time.perf_counter() - t0
        trial.evaluate()
        trial.train_s += time.perf_counter() - t0
        _report(trial, report, trial.done(), (trial.step - steps0) / max(elapsed, 1e-9))
    return TrainResult(cfg.to_dict(), trial.step, trial.summaries(), time.perf_counter() - start)


def _report(trial: Trial, report: Report | None, done: bool, steps_per_s: float | None) -> None:
    if report is None:
        return
    metrics = trial.metrics(done, steps_per_s)
    n = trial.n_evals - 1  # evaluations since step 0
    ckpt = None
    if done or (n > 0 and n % trial.cfg.checkpoint_every == 0):
        ckpt = checkpoint.write(trial.state())
    try:
        report(metrics, ckpt)
    finally:
        checkpoint.remove(ckpt)


def _history_point(
    step: Any, watched: Any, marginal: Any = None
) -> tuple[int, float, float | None]:
    """One saved history point; checkpoints without the first-token loss have two fields."""
    return int(step), float(watched), None if marginal is None else float(marginal)


def _tracker_state(tracker: EscapeTracker) -> dict[str, Any]:
    return {
        f.name: getattr(tracker, f.name) for f in dataclasses.fields(tracker) if f.name != "rule"
    }


def _check_same_trial(cfg: TrialConfig, saved: Mapping[str, Any]) -> None:
    now = cfg.to_dict()
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and now[k] != saved.get(k))
    if changed:
        raise ValueError(
            f"resume_from holds another trial: {', '.join(changed)} differ "
            f"(only {', '.join(sorted(RESUMABLE_CHANGES))} may change on resume)"
        )


def _mean(values: Any) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None
