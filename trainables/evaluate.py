"""Evaluation on a fixed batch: losses with their floor, and the probes.

The evaluation batch and the z-shuffle are drawn once, from their own generator
seeded by the data seed; evaluation never touches the batch-order generator or the
global one, so it cannot change training.

Metrics of one seed (nats; None where they do not apply):

- ``loss``: mean over the batch of the per-sequence SUM of target-token NLL.
- ``floor``, ``excess`` = loss - floor (see tasks.floor).
- ``candidate_loss`` (disambiguation): the K targets of B scored as whole strings,
  renormalized over those K; log K for the marginal predictor, floor 0.
- ``first_token_loss``: NLL of the first target token over the full vocabulary.
- ``accuracy``: fraction of examples whose every target token is the argmax given
  the true prefix (= greedy decoding is right).
- ``z_shuffle_gap`` (disambiguation): loss with each example's z replaced by a
  different selector, minus the clean loss.
- ``routing_score`` (GPT-2, disambiguation): the largest, over layers and heads, mean
  attention mass from the position that predicts the first target token (the SEP
  before A) to the z positions; ``routing_heads`` holds every [layer][head] value.

``evaluate`` scores one module, ``evaluate_stack`` every seed of a stacked model at
once; both run the same metric code on tensors that lead with the seed dimension.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from trainables import tasks
from trainables.config import TrialConfig
from trainables.models import TargetModel

if TYPE_CHECKING:
    from trainables.stacked import StackedModel

CHUNK = 2048  # sequences per forward pass during evaluation
STACK_ROWS = 8192  # sequences times seeds per forward pass of a stacked model
STACK_LOGITS = 2**28  # at most this many logits [S, n, L, V] per stacked forward pass


@dataclass(frozen=True)
class EvalBatch:
    """The fixed evaluation batch of a trial, already on its device."""

    seq: torch.Tensor  # [E, T]
    targets: torch.Tensor  # [E, L]
    candidates: torch.Tensor | None  # [E, K, T]
    correct: torch.Tensor | None  # [E] index of the right candidate
    shuffled: torch.Tensor | None  # [E, T] z replaced by another selector
    query: int  # position predicting the first target token
    z_pos: torch.Tensor | None


def eval_generator(cfg: TrialConfig) -> torch.Generator:
    return torch.Generator().manual_seed(tasks.derive_seed(cfg.resolved_data_seed, tasks.EVAL_TAG))


def make_eval_batch(cfg: TrialConfig, data: tasks.TaskData, device: torch.device) -> EvalBatch:
    """Draws the evaluation examples (without replacement while eval_size <= D)."""
    gen = eval_generator(cfg)
    D = data.n_examples
    if cfg.eval_size <= D:
        idx = torch.randperm(D, generator=gen)[: cfg.eval_size]
    else:
        idx = torch.randint(0, D, (cfg.eval_size,), generator=gen)
    candidates = correct = shuffled = None
    if data.task == "disambiguation":
        assert data.selector_of is not None
        candidates = tasks.candidate_sequences(data, idx).to(device)
        correct = data.selector_of[idx].to(device)
        if data.K > 1:
            shuffled = tasks.shuffled_selectors(data, idx, gen).to(device)
    seq = data.seq[idx].to(device)
    return EvalBatch(
        seq=seq,
        targets=seq[:, data.tgt_start : data.tgt_start + data.tgt_len],
        candidates=candidates,
        correct=correct,
        shuffled=shuffled,
        query=data.tgt_start - 1,
        z_pos=None if data.z_pos is None else data.z_pos.to(device),
    )


class Probe(Protocol):
    """What the metrics need of a model: log-probabilities and routing, seeds first."""

    n_seeds: int
    chunk: int  # sequences per forward pass

    def logp(self, seq: torch.Tensor) -> torch.Tensor:
        """[S, N, L, V] target log-probabilities of ``seq`` [N, T]."""
        ...

    def routing(self, seq: torch.Tensor, query: int, keys: torch.Tensor) -> torch.Tensor | None:
        """[S, layers, heads] attention mass from ``query`` to ``keys``, or None."""
        ...


class _ModuleProbe:
    """One module as a probe with S = 1."""

    n_seeds = 1
    chunk = CHUNK

    def __init__(self, model: TargetModel) -> None:
        self.model = model

    def logp(self, seq: torch.Tensor) -> torch.Tensor:
        return self.model(seq).unsqueeze(0)

    def routing(self, seq: torch.Tensor, query: int, keys: torch.Tensor) -> torch.Tensor | None:
        heads = self.model.routing(seq, query, keys)
        return None if heads is None else heads.unsqueeze(0)


class _StackProbe:
    """A stacked model as a probe: every seed sees the same sequences."""

    def __init__(self, stack: StackedModel) -> None:
        self.stack = stack
        self.n_seeds = stack.n_seeds
        per_sequence = stack.n_seeds * stack.tgt_len * stack.vocab_size
        self.chunk = max(1, min(STACK_ROWS // stack.n_seeds, STACK_LOGITS // per_sequence))

    def logp(self, seq: torch.Tensor) -> torch.Tensor:
        return self.stack.forward(seq)

    def routing(self, seq: torch.Tensor, query: int, keys: torch.Tensor) -> torch.Tensor | None:
        return self.stack.routing(seq, query, keys)


@torch.no_grad()
def evaluate(
    model: TargetModel,
    batch: EvalBatch,
    floor: float,
    amp: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> dict:
    """One seed's metrics on the evaluation batch (see the module docstring).

    ``amp`` makes the mixed-precision context of the trial (none for fp32).
    """
    was_training = model.training
    model.eval()
    try:
        with amp():
            return _metrics(_ModuleProbe(model), batch, floor)[0]
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_stack(
    stack: StackedModel,
    batch: EvalBatch,
    floor: float,
    amp: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> list[dict]:
    """Every seed's metrics of a stacked model, the same as ``evaluate`` of each seed's
    own module (to floating-point tolerance), in seed order."""
    with amp():
        return _metrics(_StackProbe(stack), batch, floor)


def _metrics(probe: Probe, batch: EvalBatch, floor: float) -> list[dict[str, Any]]:
    """The metrics of each of the probe's S seeds; every tensor below leads with S."""
    S = probe.n_seeds
    logp = _logp(probe, batch.seq)  # [S, E, L, V]
    targets = batch.targets.expand(S, *batch.targets.shape)  # [S, E, L]
    loss = tasks.sequence_nll(logp, targets).mean(-1).tolist()
    first = -logp[:, :, 0].gather(-1, targets[..., :1]).mean((1, 2))
    accuracy = (logp.argmax(-1) == targets).all(-1).float().mean(-1)
    out: list[dict[str, Any]] = [
        {
            "loss": loss[i],
            "floor": floor,
            "excess": loss[i] - floor,
            "candidate_loss": None,
            "first_token_loss": f,
            "accuracy": a,
            "z_shuffle_gap": None,
            "routing_score": None,
            "routing_heads": None,
        }
        for i, (f, a) in enumerate(zip(first.tolist(), accuracy.tolist(), strict=True))
    ]
    if batch.candidates is not None and batch.correct is not None:
        E, K, T = batch.candidates.shape
        cand = batch.candidates.view(E * K, T)
        start = batch.query + 1
        cand_targets = cand[:, start : start + logp.shape[2]].expand(S, E * K, -1)
        cand_nll = tasks.sequence_nll(_logp(probe, cand), cand_targets)  # [S, E*K]
        correct = batch.correct.expand(S, E)
        cand_loss = tasks.candidate_loss(-cand_nll.view(S, E, K), correct).mean(-1)
        for row, value in zip(out, cand_loss.tolist(), strict=True):
            row["candidate_loss"] = value
    if batch.shuffled is not None:
        shuffled = tasks.sequence_nll(_logp(probe, batch.shuffled), targets).mean(-1)
        for row, value in zip(out, shuffled.tolist(), strict=True):
            row["z_shuffle_gap"] = value - row["loss"]
    if batch.z_pos is not None:
        heads = probe.routing(batch.seq, batch.query, batch.z_pos)  # [S, layers, heads]
        if heads is not None:
            for row, h in zip(out, heads, strict=True):
                row["routing_heads"] = h.tolist()
                row["routing_score"] = float(h.max())
    return out


def _logp(probe: Probe, seq: torch.Tensor) -> torch.Tensor:
    """[S, N, L, V] in float, computed ``probe.chunk`` sequences at a time."""
    parts = [probe.logp(seq[i : i + probe.chunk]) for i in range(0, seq.shape[0], probe.chunk)]
    return torch.cat(parts, dim=1).float()
