"""Models: GPT-2 (scratch presets, a local checkpoint or a hub id), LoRA, an MLP.

Every model maps full token sequences [N, T] to the log-probabilities of the target
tokens [N, L, V] (``V = tasks.VOCAB_SIZE``), so losses, floors and metrics are the
same code for all of them:

- GPT-2 is autoregressive: the target token at position p is predicted from the
  hidden state at p - 1 (the input drops the final EOS). Log-probabilities are taken
  over the model's whole vocabulary and then read at the task's tokens, so a
  pre-trained base with a 50k vocabulary reports full-vocabulary losses.
- The MLP predicts every target position independently from the one-hot input
  symbols (B and z, or the source string): same loss, its own floor (tasks.floor).

Construction draws from the global torch generator seeded with the seed's
initialization seed, inside ``torch.random.fork_rng`` so callers' generators are left
alone; :func:`build_model` is called once per seed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.config import GPT2_SIZES, ConfigError, TrialConfig
from trainables.tasks import BOS, EOS, INIT_TAG, SEP, SYMBOLS, VOCAB_SIZE, TaskData, derive_seed

log = logging.getLogger(__name__)
MARKER_FILE = "phasetune.json"  # written by base_model: the checkpoint uses our vocabulary


class TargetModel(nn.Module):
    """Base class: ``forward(seq) -> logp`` of the targets, [N, L, V]."""

    kind = "base"

    def __init__(self, tgt_start: int, tgt_len: int) -> None:
        super().__init__()
        self.tgt_start = tgt_start
        self.tgt_len = tgt_len

    def routing(self, seq: torch.Tensor, query: int, keys: torch.Tensor) -> torch.Tensor | None:
        """[layers, heads] mean attention mass from ``query`` to ``keys``; None if none."""
        return None


class GPT2Targets(TargetModel):
    """A ``GPT2LMHeadModel`` (possibly with LoRA layers injected) read at the targets."""

    kind = "gpt2"
    lm: Any  # transformers.GPT2LMHeadModel
    token_map: torch.Tensor | None

    def __init__(
        self, lm: nn.Module, tgt_start: int, tgt_len: int, token_map: torch.Tensor | None
    ) -> None:
        super().__init__(tgt_start, tgt_len)
        self.lm = lm
        # our token id -> the model's token id (None: the same ids)
        self.register_buffer("token_map", token_map, persistent=False)

    def _inputs(self, seq: torch.Tensor) -> torch.Tensor:
        inp = seq[:, :-1]
        return inp if self.token_map is None else self.token_map[inp]

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        hidden = self.lm.transformer(input_ids=self._inputs(seq)).last_hidden_state
        # [N, T-1, E] -> the L positions that predict the targets
        hidden = hidden[:, self.tgt_start - 1 : self.tgt_start - 1 + self.tgt_len]
        logp = torch.log_softmax(self.lm.lm_head(hidden).float(), dim=-1)
        return logp if self.token_map is None else logp[..., self.token_map]

    @torch.no_grad()
    def routing(self, seq: torch.Tensor, query: int, keys: torch.Tensor) -> torch.Tensor:
        """Attention mass from position ``query`` to ``keys``, per layer and head.

        Runs the eager attention once (SDPA returns no weights) and restores it.
        """
        previous = self.lm.config._attn_implementation
        self.lm.set_attn_implementation("eager")
        try:
            out = self.lm.transformer(input_ids=self._inputs(seq), output_attentions=True)
        finally:
            self.lm.set_attn_implementation(previous)
        # each [N, H, T-1, T-1] -> [H]
        mass = [att[:, :, query][..., keys].sum(-1).mean(0) for att in out.attentions]
        return torch.stack(mass).float()


class MLPTargets(TargetModel):
    """One-hot input symbols -> hidden layers (GELU) -> independent per-position logits."""

    kind = "mlp"
    src_pos: torch.Tensor
    offsets: torch.Tensor

    def __init__(
        self, src_pos: torch.Tensor, tgt_start: int, tgt_len: int, width: int, depth: int
    ) -> None:
        super().__init__(tgt_start, tgt_len)
        self.register_buffer("src_pos", src_pos.clone(), persistent=False)
        n_in = len(src_pos)
        self.register_buffer("offsets", torch.arange(n_in) * VOCAB_SIZE, persistent=False)
        # a linear layer on the flattened one-hot input, as a summed embedding
        self.embed = nn.EmbeddingBag(n_in * VOCAB_SIZE, width, mode="sum")
        nn.init.uniform_(self.embed.weight, -1 / math.sqrt(n_in), 1 / math.sqrt(n_in))
        self.bias = nn.Parameter(torch.zeros(width))
        layers: list[nn.Module] = []
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(width, width)]
        layers += [nn.GELU(), nn.Linear(width, tgt_len * VOCAB_SIZE)]
        self.body = nn.Sequential(*layers)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        src = seq[:, self.src_pos] + self.offsets  # [N, L_in]
        h = self.embed(src) + self.bias
        logits = self.body(h).view(-1, self.tgt_len, VOCAB_SIZE)
        return torch.log_softmax(logits.float(), dim=-1)


def build_model(cfg: TrialConfig, data: TaskData, init_seed: int) -> TargetModel:
    """The trial's model for one seed, on the CPU, initialized from ``init_seed``.

    Raises:
        ConfigError: a base that cannot be loaded or does not fit the task.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(init_seed, INIT_TAG))
        if cfg.model == "mlp":
            return MLPTargets(
                data.src_pos, data.tgt_start, data.tgt_len, cfg.mlp_width, cfg.mlp_depth
            )
        lm, token_map = _gpt2(cfg, data.seq_len - 1)
        if cfg.lora_rank:
            lm = _add_lora(lm, cfg)
        return GPT2Targets(lm, data.tgt_start, data.tgt_len, token_map)


def gpt2_config(cfg: TrialConfig, n_positions: int):  # -> transformers.GPT2Config
    """A scratch GPT-2 config from the size preset and any n_* overrides.

    Dropout 0, learned positions, exact GELU (erf; faster on CPUs than GPT-2's tanh
    approximation, which is a chain of elementwise kernels there).
    """
    from transformers import GPT2Config

    size: dict[str, Any] = dict(GPT2_SIZES[cfg.size])
    for key in ("n_layer", "n_head", "n_embd", "n_inner"):
        if getattr(cfg, key) is not None:
            size[key] = getattr(cfg, key)
    return GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=n_positions,
        bos_token_id=BOS,
        eos_token_id=EOS,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        activation_function="gelu",
        **size,
    )


def _gpt2(cfg: TrialConfig, n_positions: int) -> tuple[Any, torch.Tensor | None]:
    from transformers import GPT2LMHeadModel

    if cfg.base is None:
        lm = GPT2LMHeadModel(gpt2_config(cfg, n_positions))
        return lm, None
    lm = _load_base(cfg.base)
    if lm.config.n_positions < n_positions:
        raise ConfigError(
            "base",
            cfg.base,
            f"its n_positions={lm.config.n_positions} is shorter than the task's "
            f"{n_positions} input tokens",
        )
    return lm, _token_map(cfg.base, lm.config.vocab_size)


def _load_base(base: str) -> Any:
    from transformers import GPT2LMHeadModel

    local = os.path.isdir(base)
    try:
        lm = GPT2LMHeadModel.from_pretrained(
            base, local_files_only=local, attn_implementation="sdpa"
        )
    except (OSError, ValueError) as err:
        where = "a local directory" if local else "a hub id (no directory of that name)"
        raise ConfigError(
            "base",
            base,
            f"must be a loadable GPT-2 checkpoint; as {where} it failed: "
            f"{str(err).splitlines()[0]}",
        ) from err
    for module in lm.modules():  # the recipe has no dropout, whatever the base says
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return lm


def _token_map(base: str, vocab_size: int) -> torch.Tensor | None:
    """Our token ids -> the base's; None when the base uses our vocabulary."""
    if os.path.isdir(base) and (Path(base) / MARKER_FILE).exists():
        return None
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(base, local_files_only=os.path.isdir(base))
    except (OSError, ValueError):
        tok = None
    if tok is None:
        if vocab_size == VOCAB_SIZE:
            return None
        if vocab_size < VOCAB_SIZE:
            raise ConfigError(
                "base",
                base,
                f"its vocabulary ({vocab_size}) is smaller than "
                f"the task's {VOCAB_SIZE} tokens and it has no tokenizer",
            )
        log.warning("base %s has no tokenizer: using token ids 0..%d", base, VOCAB_SIZE - 1)
        return None
    ids = [_single_id(tok, ch, base) for ch in SYMBOLS]
    eos = tok.eos_token_id if tok.eos_token_id is not None else _single_id(tok, "\n", base)
    bos = tok.bos_token_id if tok.bos_token_id is not None else eos
    specials = {BOS: bos, SEP: _single_id(tok, "|", base), EOS: eos}
    ids += [specials.get(t, eos) for t in range(len(SYMBOLS), VOCAB_SIZE)]
    return torch.tensor(ids, dtype=torch.long)


def _single_id(tok: Any, text: str, base: str) -> int:
    ids = tok.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ConfigError("base", base, f"its tokenizer splits {text!r} into {len(ids)} tokens")
    return int(ids[0])


def _add_lora(lm: Any, cfg: TrialConfig) -> Any:
    """Injects LoRA layers (peft) into ``lm`` in place; only they stay trainable."""
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in lm.named_modules()}
    missing = [t for t in cfg.lora_targets if t not in names]
    if missing:
        raise ConfigError(
            "lora_targets",
            list(cfg.lora_targets),
            f"{missing} are not modules of GPT-2 (e.g. c_attn, c_proj, c_fc)",
        )
    lora = LoraConfig(
        r=int(cfg.lora_rank or 0),
        lora_alpha=cfg.lora_alpha,  # type: ignore[arg-type]  # a float works
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets),
        fan_in_fan_out=True,  # GPT-2's Conv1D stores weights transposed
        bias="none",
    )
    with warnings.catch_warnings():  # peft calls an API transformers has deprecated
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(lm, lora)
    return peft_model.base_model.model  # the same modules, LoRA layers inside


def is_lora(cfg: TrialConfig) -> bool:
    return cfg.model == "gpt2" and bool(cfg.lora_rank)


def base_lr(cfg: TrialConfig) -> float:
    """The configured lr; scaled by 8 / rank only if ``lora_lr_scaling`` says so."""
    if is_lora(cfg) and cfg.lora_lr_scaling == "inverse_rank":
        return cfg.lr * 8.0 / cfg.lora_rank  # type: ignore[operator]
    return cfg.lr


def trainable_state(model: TargetModel, cfg: TrialConfig) -> dict[str, torch.Tensor]:
    """What a checkpoint must hold: every weight, or only LoRA's (the base is rebuilt)."""
    state = model.state_dict()
    if not is_lora(cfg):
        return state
    keep = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in state.items() if k in keep}


def load_trainable_state(
    model: TargetModel, cfg: TrialConfig, state: dict[str, torch.Tensor]
) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    needed = set(trainable_state(model, cfg))
    lost = needed & set(missing)
    if lost or unexpected:
        raise ValueError(
            f"checkpoint does not fit the model: missing {sorted(lost)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )


def describe(model: TargetModel) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"parameters": total, "trainable": trainable}


def write_marker(out_dir: str | os.PathLike, info: dict) -> None:
    """Marks a saved GPT-2 as using this package's vocabulary (see _token_map)."""
    Path(out_dir, MARKER_FILE).write_text(json.dumps({"vocab": "phasetune", **info}, indent=1))
