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
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from trainables import tasks
from trainables.config import TrialConfig
from trainables.models import TargetModel

CHUNK = 2048  # sequences per forward pass during evaluation


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
            return _metrics(model, batch, floor)
    finally:
        model.train(was_training)


def _metrics(model: TargetModel, batch: EvalBatch, floor: float) -> dict[str, Any]:
    logp = _logp(model, batch.seq)  # [E, L, V]
    nll = tasks.sequence_nll(logp, batch.targets)
    loss = nll.mean().item()
    first = -logp[:, 0].gather(-1, batch.targets[:, :1]).mean().item()
    accuracy = (logp.argmax(-1) == batch.targets).all(-1).float().mean().item()
    out: dict[str, Any] = {
        "loss": loss,
        "floor": floor,
        "excess": loss - floor,
        "candidate_loss": None,
        "first_token_loss": first,
        "accuracy": accuracy,
        "z_shuffle_gap": None,
        "routing_score": None,
        "routing_heads": None,
    }
    if batch.candidates is not None and batch.correct is not None:
        E, K, T = batch.candidates.shape
        cand = batch.candidates.view(E * K, T)
        start = batch.query + 1
        cand_nll = tasks.sequence_nll(_logp(model, cand), cand[:, start : start + logp.shape[1]])
        cand_loss = tasks.candidate_loss(-cand_nll.view(E, K), batch.correct)
        out["candidate_loss"] = cand_loss.mean().item()
    if batch.shuffled is not None:
        shuffled_nll = tasks.sequence_nll(_logp(model, batch.shuffled), batch.targets)
        out["z_shuffle_gap"] = shuffled_nll.mean().item() - loss
    if batch.z_pos is not None:
        heads = model.routing(batch.seq, batch.query, batch.z_pos)
        if heads is not None:
            out["routing_heads"] = heads.tolist()
            out["routing_score"] = float(heads.max())
    return out


def _logp(model: TargetModel, seq: torch.Tensor) -> torch.Tensor:
    parts = [model(seq[i : i + CHUNK]) for i in range(0, seq.shape[0], CHUNK)]
    return torch.cat(parts).float()
