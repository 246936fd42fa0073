"""Models: shapes, causality, seeding, LoRA, loading a local base, the MLP."""

from __future__ import annotations

import pytest
import torch

from trainables import models, tasks
from trainables.config import ConfigError, resolve

TINY = {"size": "tiny", "K": 4, "D": 40, "batch_size": 8}


def build(seed=0, **kw):
    cfg = resolve({**TINY, **kw})
    data = tasks.make_task(cfg)
    return models.build_model(cfg, data, seed), data, cfg


@pytest.mark.parametrize("model", ["gpt2", "mlp"])
def test_models_return_normalized_target_logprobs(model):
    m, data, _ = build(model=model)
    logp = m(data.seq[:6])
    assert logp.shape == (6, data.tgt_len, tasks.VOCAB_SIZE)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(6, data.tgt_len), atol=1e-5)


@pytest.mark.parametrize("model", ["gpt2", "mlp"])
def test_a_target_is_never_predicted_from_itself_or_later_targets(model):
    m, data, _ = build(model=model)
    seq = data.seq[:5].clone()
    before = m(seq)
    seq[:, data.tgt_start + 2 :] = 0  # targets 2.. and EOS
    after = m(seq)
    keep = 3 if model == "gpt2" else data.tgt_len  # gpt2 sees earlier targets; mlp none
    assert torch.allclose(before[:, :keep], after[:, :keep], atol=1e-6)
    if model == "mlp":
        seq[:, data.tgt_start :] = 0
        assert torch.allclose(before, m(seq), atol=1e-6)


@pytest.mark.parametrize("model", ["gpt2", "mlp"])
def test_init_seed_decides_the_weights_and_leaves_global_rng_alone(model):
    state = torch.get_rng_state()
    a, _, _ = build(seed=3, model=model)
    assert torch.equal(torch.get_rng_state(), state)
    b, _, _ = build(seed=3, model=model)
    c, _, _ = build(seed=4, model=model)
    pa, pb, pc = (torch.cat([p.flatten() for p in x.parameters()]) for x in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_size_presets_and_overrides_set_the_architecture():
    cfg = resolve({**TINY, "size": "paper", "n_layer": 3})
    gc = models.gpt2_config(cfg, 15)
    assert (gc.n_layer, gc.n_head, gc.n_embd, gc.n_inner) == (3, 4, 128, 512)
    assert gc.resid_pdrop == gc.attn_pdrop == gc.embd_pdrop == 0.0
    small = models.gpt2_config(resolve({**TINY, "size": "small"}), 15)
    assert (small.n_layer, small.n_embd) == (12, 768)


def test_mlp_depth_and_width():
    m, _, _ = build(model="mlp", mlp_width=32, mlp_depth=3)
    linears = [x for x in m.body if isinstance(x, torch.nn.Linear)]
    assert [lin.out_features for lin in linears] == [32, 32, 4 * tasks.VOCAB_SIZE]
    assert m.embed.weight.shape == (8 * tasks.VOCAB_SIZE, 32)


def test_routing_is_attention_mass_per_layer_and_head():
    m, data, _ = build()
    heads = m.routing(data.seq[:7], data.tgt_start - 1, data.z_pos)
    assert heads.shape == (2, 2)
    assert ((heads >= 0) & (heads <= 1 + 1e-6)).all()
    assert m.lm.config._attn_implementation == "sdpa"  # restored after the eager pass
    mlp, _, _ = build(model="mlp")
    assert mlp.routing(data.seq[:7], 10, data.z_pos) is None


def test_lora_trains_only_its_adapters_with_the_configured_rank():
    m, _, cfg = build(lora_rank=4, lora_alpha=8.0, lora_targets=["c_attn"])
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all("c_attn" in n for n in trainable)
    a = next(p for n, p in m.named_parameters() if "lora_A" in n)
    assert 4 in a.shape
    state = models.trainable_state(m, cfg)
    assert set(state) == set(trainable)


def test_lora_refuses_unknown_target_modules():
    with pytest.raises(ConfigError, match="lora_targets=.*'q_proj'.*not modules of GPT-2"):
        build(lora_rank=2, lora_targets=["q_proj"])


def test_lr_is_not_scaled_with_rank_unless_asked():
    assert models.base_lr(resolve({**TINY, "lora_rank": 64, "lr": 1e-3})) == 1e-3
    scaled = resolve({**TINY, "lora_rank": 32, "lr": 1e-3, "lora_lr_scaling": "inverse_rank"})
    assert models.base_lr(scaled) == pytest.approx(1e-3 * 8 / 32)


def test_a_missing_base_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="base=.*no such directory"):
        build(base=str(tmp_path / "nothing-here"))


def test_a_directory_without_a_checkpoint_is_a_config_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="base=.*must be a loadable GPT-2 checkpoint"):
        build(base=str(tmp_path / "empty"))


def test_a_saved_base_loads_with_lora(tiny_base):
    m, data, cfg = build(base=tiny_base, lora_rank=2)
    assert m.token_map is None  # marked as using our vocabulary
    from transformers import GPT2LMHeadModel

    saved = GPT2LMHeadModel.from_pretrained(tiny_base)
    w = saved.transformer.h[0].mlp.c_fc.weight
    assert torch.equal(m.lm.transformer.h[0].mlp.c_fc.weight, w)
    assert m(data.seq[:3]).shape == (3, 4, tasks.VOCAB_SIZE)
