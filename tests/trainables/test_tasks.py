"""Data generation, tokenization, probes and the exact floors of every reported loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.trainables.oracles import Oracle
from trainables import tasks
from trainables.config import resolve

LOG10 = math.log(10)


def disamb(**kw):
    return tasks.make_task(
        resolve({"task": "disambiguation", "K": 10, "D": 300, "batch_size": 32, **kw})
    )


def mapping(direction, **kw):
    return tasks.make_task(
        resolve(
            {"task": "mapping", "direction": direction, "K": 5, "D": 500, "batch_size": 32, **kw}
        )
    )


# generation ---------------------------------------------------------------------


def test_disambiguation_layout_is_bos_b_sep_z_sep_a_eos():
    data = disamb()
    assert data.seq.shape == (300, 16)
    s = data.seq[13]
    assert s[0] == tasks.BOS and s[7] == tasks.SEP and s[10] == tasks.SEP and s[15] == tasks.EOS
    assert data.z_pos.tolist() == [8, 9] and data.tgt_start == 11 and data.tgt_len == 4
    assert data.base_of[13] == 1 and data.selector_of[13] == 3
    assert torch.equal(s[8:10], data.selectors[3])
    assert torch.equal(s[11:15], data.base_targets[1, 3])
    assert data.src_pos.tolist() == [1, 2, 3, 4, 5, 6, 8, 9]
    text = data.decode(13)
    assert text.startswith("<bos>") and text.endswith("<eos>") and text.count("|") == 2


def test_disambiguation_strings_are_unique_and_first_symbols_distinct():
    data = disamb(K=36, D=36 * 20)
    bases = data.seq[:, 1:7]
    assert len({tuple(r) for r in bases.tolist()}) == 20
    assert len({tuple(r) for r in data.targets.tolist()}) == 720
    assert len({tuple(r) for r in data.selectors.tolist()}) == 36
    first = data.base_targets[..., 0]
    assert all(len(set(row)) == 36 for row in first.tolist())
    assert int(data.seq[:, :-1].max()) < 36 + 3


def test_without_distinct_first_targets_are_still_unique():
    data = disamb(distinct_first=False, alphabet_size=3, len_a=5, K=9, D=243)
    assert len({tuple(r) for r in data.targets.tolist()}) == 243  # every string of 3**5
    assert int(data.targets.max()) < 3


def test_alphabet_size_limits_the_symbols():
    data = disamb(alphabet_size=4, len_b=5, K=4, D=40, len_a=4)
    assert int(data.seq[:, 1:6].max()) < 4


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_mapping_has_k_preimages_per_image(direction):
    data = mapping(direction)
    assert data.seq.shape == (500, 19) and data.tgt_start == 10 and data.tgt_len == 8
    src, tgt = data.seq[:, 1:9], data.targets
    pre, img = (src, tgt) if direction == "forward" else (tgt, src)
    assert len({tuple(r) for r in pre.tolist()}) == 500
    assert len({tuple(r) for r in img.tolist()}) == 100
    for b in (0, 57):
        rows = img[data.base_of == b]
        assert len(rows) == 5 and all(torch.equal(r, rows[0]) for r in rows)


def test_same_data_seed_same_data_and_other_seed_other_data():
    a, b = disamb(seed=3), disamb(seed=3)
    assert torch.equal(a.seq, b.seq)
    assert not torch.equal(a.seq, disamb(seed=4).seq)
    # data_seed decouples the data from the initialization seed
    assert torch.equal(disamb(seed=1, data_seed=9).seq, disamb(seed=2, data_seed=9).seq)
    assert torch.equal(mapping("inverse", seed=5).seq, mapping("inverse", seed=5).seq)


def test_forward_and_inverse_share_the_pairs():
    f, i = mapping("forward", seed=2), mapping("inverse", seed=2)
    assert torch.equal(f.seq[:, 1:9], i.targets) and torch.equal(f.targets, i.seq[:, 1:9])


@pytest.mark.parametrize(
    "count,length,alphabet", [(27, 3, 3), (5, 3, 3), (500, 8, 36), (1, 0, 36)]
)
def test_unique_strings(count, length, alphabet):
    rows = tasks.unique_strings(np.random.default_rng(0), count, length, alphabet)
    assert rows.shape == (count, length)
    assert len({tuple(r) for r in rows.tolist()}) == count
    assert rows.size == 0 or (rows.min() >= 0 and rows.max() < alphabet)


def test_unique_strings_refuses_more_than_the_length_allows():
    with pytest.raises(ValueError, match=r"count=28 is not allowed: must be <= 3\*\*3"):
        tasks.unique_strings(np.random.default_rng(0), 28, 3, 3)


# probes -------------------------------------------------------------------------


def test_z_shuffle_always_picks_another_selector_from_its_own_generator():
    data = disamb(K=2, D=200)
    idx = torch.arange(200)
    before = torch.get_rng_state()
    shuffled = tasks.shuffled_selectors(data, idx, torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), before)
    z = data.z_pos
    assert (shuffled[:, z] != data.seq[:, z]).any(-1).all()
    assert torch.equal(shuffled[:, z], data.selectors[1 - data.selector_of])  # K=2: the other
    rest = [p for p in range(16) if p not in z.tolist()]
    assert torch.equal(shuffled[:, rest], data.seq[:, rest])


def test_candidate_sequences_hold_every_target_of_the_base():
    data = disamb()
    cand = tasks.candidate_sequences(data, torch.tensor([0, 25]))
    assert cand.shape == (2, 10, 16)
    assert torch.equal(cand[1, :, 11:15], data.base_targets[2])
    assert torch.equal(cand[1, data.selector_of[25]], data.seq[25])


# floors, proved by the Bayes-optimal predictor built from the data ---------------


def _oracle_metrics(data, keys, autoregressive):
    """Loss, candidate loss (if any) and first-token loss of the oracle on all of data."""
    oracle = Oracle(keys, data.targets.numpy(), autoregressive)
    logp = oracle.logp(keys, data.targets.numpy())
    loss = tasks.sequence_nll(logp, data.targets).mean().item()
    first = -logp[:, 0].gather(-1, data.targets[:, :1]).mean().item()
    cand = None
    if data.base_targets is not None:
        scores = torch.tensor(
            [
                [oracle.sequence_logp(key, row) for row in data.base_targets[b].tolist()]
                for key, b in zip(keys.tolist(), data.base_of.tolist(), strict=True)
            ]
        )
        cand = tasks.candidate_loss(scores, data.selector_of).mean().item()
    return loss, cand, first, logp


def test_disambiguation_marginal_predictor_sits_at_log_k():
    data = disamb()
    loss, cand, first, _ = _oracle_metrics(data, data.base_of.numpy(), autoregressive=True)
    assert cand == pytest.approx(LOG10, abs=1e-6)
    assert loss == pytest.approx(LOG10, abs=1e-6)
    assert first == pytest.approx(LOG10, abs=1e-6)  # distinct first symbols


@pytest.mark.parametrize("model", ["gpt2", "mlp"])
def test_disambiguation_floor_is_zero_and_reached_by_the_conditional(model):
    data = disamb()
    keys = (data.base_of * 100 + data.selector_of).numpy()
    loss, cand, _, _ = _oracle_metrics(data, keys, autoregressive=model == "gpt2")
    assert tasks.floor(data, model) == 0.0
    assert loss == pytest.approx(0.0, abs=1e-9) and cand == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("model", ["gpt2", "mlp"])
def test_forward_mapping_floor_is_zero(model):
    data = mapping("forward")
    keys = np.arange(data.n_examples)  # the preimage identifies the example
    loss, _, _, _ = _oracle_metrics(data, keys, autoregressive=model == "gpt2")
    assert tasks.floor(data, model) == 0.0 and loss == pytest.approx(0.0, abs=1e-9)


def test_inverse_mapping_floor_is_log_k_for_gpt2():
    data = mapping("inverse", K=5)
    loss, _, _, _ = _oracle_metrics(data, data.base_of.numpy(), autoregressive=True)
    assert tasks.floor(data, "gpt2") == pytest.approx(math.log(5))
    assert loss == pytest.approx(tasks.floor(data, "gpt2"), abs=1e-9)
    assert tasks.floor(data, "gpt2", "mean") == pytest.approx(math.log(5) / 8)


@pytest.mark.parametrize("K,alphabet", [(5, 36), (8, 3), (4, 2)])
def test_inverse_mapping_floor_for_the_mlp_is_the_per_position_entropy(K, alphabet):
    data = mapping("inverse", K=K, alphabet_size=alphabet, D=K * 40)
    loss, _, _, logp = _oracle_metrics(data, data.base_of.numpy(), autoregressive=False)
    floor = tasks.floor(data, "mlp")
    assert loss == pytest.approx(floor, abs=1e-9)
    assert floor >= math.log(K) - 1e-9  # positions are predicted independently
    if alphabet < 36:
        assert floor > math.log(K) + 0.1  # repeated symbols: the MLP floor exceeds log K
    assert tasks.floor(data, "mlp", "mean") == pytest.approx(floor / 8)

    # Bayes optimal: moving probability anywhere else only raises the loss
    uniform = torch.full_like(logp, -math.log(alphabet)).masked_fill(
        torch.arange(logp.shape[-1]) >= alphabet, -1e9
    )
    for w in (0.01, 0.3):
        mixed = torch.logaddexp(logp + math.log(1 - w), uniform + math.log(w))
        assert tasks.sequence_nll(mixed, data.targets).mean().item() > floor


def test_floor_refuses_an_unknown_reduction():
    with pytest.raises(ValueError, match="reduction='median' is not allowed"):
        tasks.floor(disamb(), "gpt2", "median")
