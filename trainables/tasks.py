"""The two synthetic task families, their tokenization and their exact floors.

Disambiguation (B, z) -> A: every base string B has K target strings A; the K
selector strings z are shared by all bases and z_k picks the k-th target of every
base. Example i uses base ``i // K`` and selector ``i % K``. Sequences are
``BOS B SEP z SEP A EOS`` (16 tokens with the default lengths).

Mapping: D unique preimage strings, ``bases = D / K`` unique image strings, preimage
i maps to image ``i // K``. ``forward`` reads ``BOS preimage SEP image EOS``,
``inverse`` reads ``BOS image SEP preimage EOS``.

Everything comes from one numpy generator seeded with the data seed, so the same
seed gives the same data set on every machine.

Losses and floors (nats). The reported loss is the per-sequence SUM of the negative
log-likelihood over the target tokens (A, or the second string of a mapping; EOS is
not a target), directly comparable to log K. Its floor is the loss of the
Bayes-optimal predictor of that loss on the training data:

- disambiguation: 0 for every model (B and z determine A).
- mapping forward: 0 for every model (the preimage determines the image).
- mapping inverse, GPT-2 (autoregressive): log K (A is uniform over the K
  preimages of B, and the chain rule sums the token entropies to log K).
- mapping inverse, MLP (every target position predicted independently given B):
  sum over positions of H(A_j | B), the entropy of the j-th symbol among the K
  preimages of B, averaged over examples, computed from the data itself. It is
  never below log K (subadditivity of entropy) and exceeds it as soon as
  positions are dependent given B.

The per-token mean loss has floor ``floor / tgt_len``. The candidate-set loss
(disambiguation: score the K targets of B, renormalize over them, minus log
probability of the right one) has floor 0 and equals log K for the marginal
predictor P(A | B).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from trainables.config import TrialConfig

SYMBOLS = "abcdefghijklmnopqrstuvwxyz0123456789"
BOS, SEP, EOS, PAD = 36, 37, 38, 39
VOCAB_SIZE = 40  # fixed, whatever alphabet_size is, so checkpoints fit every task
SPECIAL_NAMES = {BOS: "<bos>", SEP: "|", EOS: "<eos>", PAD: "<pad>"}
_DENSE_SPACE = 50_000_000  # below this, unique strings come from a permutation


@dataclass(frozen=True)
class TaskData:
    """A generated data set: token sequences plus what the metrics need.

    Attributes:
        task: ``"disambiguation"`` or ``"mapping"``.
        direction: ``"forward"`` or ``"inverse"`` (mapping only).
        seq: [D, T] int64, the full sequences (BOS ... EOS).
        src_pos: [L_in] positions of the input symbols (the MLP's input).
        tgt_start: position of the first target token in ``seq``.
        tgt_len: number of target tokens L.
        K: targets per base (disambiguation) or preimages per image (mapping).
        base_of: [D] base (image) index of every example.
        selector_of: [D] selector index (disambiguation), else None.
        selectors: [K, len_z] selector strings (disambiguation), else None.
        z_pos: [len_z] positions of z in ``seq`` (disambiguation), else None.
        base_targets: [bases, K, L] the K candidate targets of each base
            (disambiguation), else None.
    """

    task: str
    direction: str
    seq: torch.Tensor
    src_pos: torch.Tensor
    tgt_start: int
    tgt_len: int
    K: int
    base_of: torch.Tensor
    selector_of: torch.Tensor | None = None
    selectors: torch.Tensor | None = None
    z_pos: torch.Tensor | None = None
    base_targets: torch.Tensor | None = None

    @property
    def n_examples(self) -> int:
        return int(self.seq.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.seq.shape[1])

    @property
    def targets(self) -> torch.Tensor:
        """[D, L] the target tokens of every example."""
        return self.seq[:, self.tgt_start : self.tgt_start + self.tgt_len]

    def decode(self, i: int) -> str:
        """Example ``i`` as text, e.g. ``'<bos>abcdef|xy|pqrs<eos>'``."""
        return "".join(
            SPECIAL_NAMES.get(t, SYMBOLS[t] if t < len(SYMBOLS) else "?")
            for t in self.seq[i].tolist()
        )


def derive_seed(seed: int, tag: int) -> int:
    """A 32-bit seed for the stream ``tag`` of ``seed`` (streams never share bits)."""
    return int(np.random.SeedSequence([seed, tag]).generate_state(1)[0])


DATA_TAG, EVAL_TAG, INIT_TAG, ORDER_TAG = 0x7A5C, 0xE7A1, 0x1417, 0x0DE2


def make_task(cfg: TrialConfig) -> TaskData:
    """Generates the data set of a trial from its data seed.

    Impossible requests are refused by ``config.resolve`` before this runs.
    """
    rng = np.random.default_rng(derive_seed(cfg.resolved_data_seed, DATA_TAG))
    if cfg.task == "disambiguation":
        return _disambiguation(cfg, rng)
    return _mapping(cfg, rng)


def _disambiguation(cfg: TrialConfig, rng: np.random.Generator) -> TaskData:
    a, K, n_bases = cfg.alphabet_size, cfg.K, cfg.n_bases
    bases = unique_strings(rng, n_bases, cfg.len_b, a)
    selectors = unique_strings(rng, K, cfg.len_z, a)
    if cfg.distinct_first:
        targets = _distinct_first_targets(rng, n_bases, K, cfg.len_a, a)
    else:
        targets = unique_strings(rng, n_bases * K, cfg.len_a, a).reshape(n_bases, K, cfg.len_a)

    ex = np.arange(n_bases * K)
    base_of, sel_of = ex // K, ex % K
    D = len(ex)
    seq = np.concatenate(
        [
            np.full((D, 1), BOS),
            bases[base_of],
            np.full((D, 1), SEP),
            selectors[sel_of],
            np.full((D, 1), SEP),
            targets[base_of, sel_of],
            np.full((D, 1), EOS),
        ],
        axis=1,
    )
    z_start = 2 + cfg.len_b
    tgt_start = z_start + cfg.len_z + 1
    src_pos = np.r_[1 : 1 + cfg.len_b, z_start : z_start + cfg.len_z]
    return TaskData(
        task="disambiguation",
        direction="forward",
        seq=_long(seq),
        src_pos=_long(src_pos),
        tgt_start=tgt_start,
        tgt_len=cfg.len_a,
        K=K,
        base_of=_long(base_of),
        selector_of=_long(sel_of),
        selectors=_long(selectors),
        z_pos=_long(np.arange(z_start, z_start + cfg.len_z)),
        base_targets=_long(targets),
    )


def _distinct_first_targets(
    rng: np.random.Generator, n_bases: int, K: int, length: int, a: int
) -> np.ndarray:
    """[bases, K, length] unique targets; the K targets of a base differ in symbol 0."""
    first = rng.random((n_bases, a)).argsort(axis=1)[:, :K]
    targets = np.zeros((n_bases, K, length), dtype=np.int64)
    targets[..., 0] = first
    for s in range(a):
        mask = first == s
        n = int(mask.sum())
        if n:
            targets[mask, 1:] = unique_strings(rng, n, length - 1, a)
    return targets


def _mapping(cfg: TrialConfig, rng: np.random.Generator) -> TaskData:
    a, L, K = cfg.alphabet_size, cfg.string_len, cfg.K
    images = unique_strings(rng, cfg.n_bases, L, a)
    preimages = unique_strings(rng, cfg.n_examples, L, a)
    base_of = np.arange(cfg.n_examples) // K
    src, tgt = preimages, images[base_of]
    if cfg.direction == "inverse":
        src, tgt = tgt, src
    D = cfg.n_examples
    seq = np.concatenate(
        [np.full((D, 1), BOS), src, np.full((D, 1), SEP), tgt, np.full((D, 1), EOS)], axis=1
    )
    return TaskData(
        task="mapping",
        direction=cfg.direction,
        seq=_long(seq),
        src_pos=_long(np.arange(1, 1 + L)),
        tgt_start=L + 2,
        tgt_len=L,
        K=K,
        base_of=_long(base_of),
    )


def unique_strings(rng: np.random.Generator, count: int, length: int, alphabet: int) -> np.ndarray:
    """[count, length] distinct strings over ``range(alphabet)``, in random order."""
    space = alphabet**length
    if count > space:
        raise ValueError(f"count={count} is not allowed: must be <= {alphabet}**{length}")
    if length == 0:
        return np.zeros((count, 0), dtype=np.int64)
    if space <= _DENSE_SPACE and count * 4 > space:
        codes = rng.permutation(space)[:count]
        digits = alphabet ** np.arange(length - 1, -1, -1)
        return (codes[:, None] // digits) % alphabet
    seen: set[bytes] = set()
    rows: list[np.ndarray] = []
    while len(rows) < count:
        draw = rng.integers(0, alphabet, size=(count - len(rows) + 16, length), dtype=np.int64)
        for row in draw:
            key = row.tobytes()
            if key not in seen:
                seen.add(key)
                rows.append(row)
                if len(rows) == count:
                    break
    return np.stack(rows)


def _long(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64))


# floors ------------------------------------------------------------------------


def floor(data: TaskData, model: str, reduction: str = "sum") -> float:
    """The exact floor of the loss a model of kind ``model`` reports on ``data``.

    Args:
        data: the training data (the floor is the Bayes loss on it).
        model: ``"gpt2"`` (autoregressive) or ``"mlp"`` (positions independent).
        reduction: ``"sum"`` over target tokens per sequence, or ``"mean"`` per token.

    Returns:
        The floor in nats.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction={reduction!r} is not allowed: must be 'sum' or 'mean'")
    if data.task == "disambiguation" or data.direction == "forward":
        total = 0.0
    elif model == "gpt2":
        total = math.log(data.K)
    else:
        total = per_position_entropy(data)
    return total / data.tgt_len if reduction == "mean" else total


def per_position_entropy(data: TaskData) -> float:
    """Sum over target positions of H(target_j | source), from the data.

    Examples sharing a source (``base_of``) form its conditional distribution; each
    example weighs the same, so the average runs over examples.
    """
    targets = data.targets.numpy()
    n_bases = int(data.base_of.max()) + 1
    total = 0.0
    for j in range(data.tgt_len):
        counts = np.zeros((n_bases, VOCAB_SIZE))
        np.add.at(counts, (data.base_of.numpy(), targets[:, j]), 1.0)
        sizes = counts.sum(axis=1, keepdims=True)
        p = np.divide(counts, sizes, out=np.zeros_like(counts), where=sizes > 0)
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        # weight each base by its number of examples
        total += float(-(plogp.sum(axis=1) * sizes[:, 0]).sum() / sizes.sum())
    return total


# losses from target log-probabilities --------------------------------------------


def sequence_nll(logp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[N] per-sequence summed NLL from ``logp`` [N, L, V] and ``targets`` [N, L]."""
    return -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).sum(-1)


def candidate_loss(cand_logp: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """[N] candidate-set loss from ``cand_logp`` [N, K] (log p of each whole candidate).

    The K scores are renormalized over the candidates; the loss is minus the log of
    the renormalized probability of ``correct`` [N].
    """
    return -torch.log_softmax(cand_logp, dim=-1).gather(-1, correct.unsqueeze(-1)).squeeze(-1)


def candidate_sequences(data: TaskData, idx: torch.Tensor) -> torch.Tensor:
    """[N, K, T] the examples ``idx`` with their target replaced by each candidate."""
    assert data.base_targets is not None
    seq = data.seq[idx].unsqueeze(1).repeat(1, data.K, 1)
    seq[:, :, data.tgt_start : data.tgt_start + data.tgt_len] = data.base_targets[
        data.base_of[idx]
    ]
    return seq


def shuffled_selectors(
    data: TaskData, idx: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """[N, T] the examples ``idx`` with z replaced by a different selector.

    Draws from ``generator`` only (never the global one), and the offset in
    ``1 .. K-1`` guarantees a selector other than the example's own.
    """
    assert data.selector_of is not None and data.selectors is not None and data.z_pos is not None
    if data.K < 2:
        raise ValueError("K=1 is not allowed for a z-shuffle: there is no other selector")
    own = data.selector_of[idx]
    offset = torch.randint(1, data.K, own.shape, generator=generator)
    other = (own + offset) % data.K
    seq = data.seq[idx].clone()
    seq[:, data.z_pos] = data.selectors[other]
    return seq
