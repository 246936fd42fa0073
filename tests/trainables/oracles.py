"""Bayes-optimal predictors built from a data set.

An oracle conditions on a key per example (what it may see: B, or B and z, or the
source string) and predicts the targets from the empirical distribution of the data:
autoregressive (position j also sees the true targets before j) or per-position
(positions independent given the key, as the MLP predicts).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
import torch

from trainables.tasks import VOCAB_SIZE

# A recipe whose first SGD updates overflow the weights: the loss turns non-finite.
DIVERGING = {
    "optimizer": "sgd",
    "lr": 1e12,
    "grad_clip": None,
    "warmup_steps": 0,
    "momentum": 0.0,
    "max_steps": 50,
    "eval_every": 10,
}
NEG = -1e9  # log of a zero probability, finite so that sums stay defined


class Oracle:
    def __init__(self, keys: np.ndarray, targets: np.ndarray, autoregressive: bool) -> None:
        self.autoregressive = autoregressive
        self.counts: dict[tuple, Counter] = defaultdict(Counter)
        for key, row in zip(keys.tolist(), targets.tolist(), strict=True):
            for j, sym in enumerate(row):
                self.counts[self._context(key, row, j)][sym] += 1

    def _context(self, key, row, j: int) -> tuple:
        prefix = tuple(row[:j]) if self.autoregressive else ()
        return (key, j, prefix)

    def position_logp(self, key, row, j: int) -> np.ndarray:
        """[V] log-probabilities of position j of ``row`` given key (and prefix)."""
        out = np.full(VOCAB_SIZE, NEG)
        c = self.counts[self._context(key, row, j)]
        total = sum(c.values())
        for sym, n in c.items():
            out[sym] = math.log(n / total)
        return out

    def logp(self, keys: np.ndarray, targets: np.ndarray) -> torch.Tensor:
        """[N, L, V] target log-probabilities, the shape every model returns."""
        N, L = targets.shape
        out = np.empty((N, L, VOCAB_SIZE))
        for i, (key, row) in enumerate(zip(keys.tolist(), targets.tolist(), strict=True)):
            for j in range(L):
                out[i, j] = self.position_logp(key, row, j)
        return torch.from_numpy(out)

    def sequence_logp(self, key, row) -> float:
        """log p(row | key) of a whole target string."""
        return float(sum(self.position_logp(key, row, j)[s] for j, s in enumerate(row)))
