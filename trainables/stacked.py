"""S seeds of one trial as one model whose weights carry a leading seed dimension.

A trial with ``num_seeds = S`` (and ``seed_mode`` stacked, the default for S > 1 without
LoRA) trains its S models as one. Every weight is stacked over seeds into one tensor
``[S, *shape]`` (the layout of ``torch.func.stack_module_state``), each layer runs once
for all seeds as a batched matrix product (``[S, rows, in] @ [S, in, out]``), and one
backward pass of the sum of the S losses gives every seed the gradient of its own
loss. What must not mix seeds works along the seed dimension: the gradient norm is
clipped per seed, a diverged seed is frozen by its index, and the optimizer's update
is elementwise. Seed i's curve equals the single-seed trial of seed i to
floating-point tolerance: the same initialization (the S modules are built by
``models.build_model`` and stacked), the same batches (each seed's own order
generator), the same arithmetic in another order.

The forward passes restate GPT-2 (``transformers.GPT2LMHeadModel``: pre-norm blocks,
fused qkv projection, causal attention, tied LM head) and the MLP of
:mod:`trainables.models` for stacked weights; attention runs over ``S * N`` sequences
at once through ``scaled_dot_product_attention`` (fused kernels on CUDA). Why not
``torch.vmap`` over ``functional_call``: it works for GPT-2 with eager or SDPA
attention (with a real template module, not one on the meta device), but the CPU SDPA
kernel has no batching rule (vmap loops over seeds there), the MLP's ``EmbeddingBag``
has none either, and on CPU it ran no faster than the sequential loop; written out,
the layout is ours to choose.

Example::

    stack = build_stack(cfg, data, init_seeds=[0, 1, 2, 3], device=torch.device("cpu"))
    logp = stack.forward(seq)  # seq [S, N, T] -> [S, N, L, V]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F

from trainables import evaluate, models, tasks
from trainables.config import ConfigError, TrialConfig

# GPT-2 config flags whose other values the stacked forward does not restate
_REQUIRED_GPT2 = {"add_cross_attention": False}


class StackedModel:
    """S models of one architecture: ``params`` name -> [S, *shape], ``forward``."""

    kind = "base"

    def __init__(self, template: models.TargetModel, params: dict[str, torch.Tensor]) -> None:
        self.template = template  # seed 0's module: architecture, buffers, export
        self.params = params  # trainable weights, each a leaf [S, *shape]
        self.n_seeds = int(next(iter(params.values())).shape[0])
        self.tgt_start = template.tgt_start
        self.tgt_len = template.tgt_len
        self.vocab_size = tasks.VOCAB_SIZE  # of the logits before log_softmax

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """[S, N, L, V] target log-probabilities of ``seq`` [S, N, T] (or [N, T], shared)."""
        raise NotImplementedError

    def routing(self, seq: torch.Tensor, query: int, keys: torch.Tensor) -> torch.Tensor | None:
        """[S, layers, heads] mean attention mass from ``query`` to ``keys``; None if none."""
        return None

    def per_seed(self, seq: torch.Tensor) -> torch.Tensor:
        """``seq`` as [S, N, T]: a shared [N, T] batch is expanded (no copy)."""
        if seq.dim() == 2:
            return seq.expand(self.n_seeds, *seq.shape)
        return seq

    @torch.no_grad()
    def seed_module(self, index: int) -> models.TargetModel:
        """The template module holding seed ``index``'s weights (overwritten by the next
        call)."""
        named = dict(self.template.named_parameters())
        for name, stacked in self.params.items():
            named[name].copy_(stacked[index])
        return self.template

    @torch.no_grad()
    def set_seed(self, index: int, module: models.TargetModel) -> None:
        """Copies ``module``'s trainable weights into seed ``index``."""
        named = dict(module.named_parameters())
        for name, stacked in self.params.items():
            stacked[index].copy_(named[name])


class StackedGPT2(StackedModel):
    """GPT-2 (scratch or from a base, no LoRA) with stacked weights."""

    kind = "gpt2"

    def __init__(self, template: models.GPT2Targets, params: dict[str, torch.Tensor]) -> None:
        super().__init__(template, params)
        config = template.lm.config
        self.n_layer = int(config.n_layer)
        self.n_head = int(config.n_head)
        self.d = int(config.n_embd)
        self.eps = float(config.layer_norm_epsilon)
        self.scales = [_attention_scale(config, i) for i in range(self.n_layer)]
        self.act = _activation(config.activation_function)
        self.token_map = template.token_map
        self.w = {name.removeprefix("lm.transformer."): p for name, p in params.items()}
        self.vocab_size = int(config.vocab_size)
        # LayerNorm without an affine of its own; unit weights run a faster CPU kernel
        # than none, and change no bit
        device = next(iter(params.values())).device
        self.unit = (torch.ones(self.d, device=device), torch.zeros(self.d, device=device))

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        h, _ = self._blocks(self._inputs(seq), None)
        S, N, T, d = h.shape
        # only the L positions that predict the targets go through ln_f and the LM head
        h = h[:, :, self.tgt_start - 1 : self.tgt_start - 1 + self.tgt_len]
        h = self._norm(h.reshape(S, N * self.tgt_len, d), "ln_f")
        wte = self.w["wte.weight"]  # [S, V, d], tied LM head
        logits = torch.bmm(h, wte.transpose(1, 2)).float()  # [S, N*L, V]
        logp = torch.log_softmax(logits, dim=-1).view(S, N, self.tgt_len, -1)
        return logp if self.token_map is None else logp[..., self.token_map]

    @torch.no_grad()
    def routing(self, seq: torch.Tensor, query: int, keys: torch.Tensor) -> torch.Tensor:
        inp = self._inputs(seq)
        _, mass = self._blocks(inp, (query, keys))
        assert mass is not None
        return mass / inp.shape[1]  # summed over N -> mean

    def _inputs(self, seq: torch.Tensor) -> torch.Tensor:
        inp = self.per_seed(seq)[..., :-1]  # [S, N, T-1]
        return inp if self.token_map is None else self.token_map[inp]

    def _blocks(
        self, inp: torch.Tensor, probe: tuple[int, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embeddings and blocks: hidden states [S, N, T, d] before ln_f, and with a
        probe (query, keys) the attention mass [S, layers, heads] summed over N."""
        S, N, T = inp.shape
        w = self.w
        seeds = torch.arange(S, device=inp.device).view(S, 1, 1)
        h = w["wte.weight"][seeds, inp] + w["wpe.weight"][:, :T].unsqueeze(1)
        h = h.reshape(S, N * T, self.d)
        masses = []
        for i in range(self.n_layer):
            qkv = self._norm_linear(h, f"h.{i}.ln_1", f"h.{i}.attn.c_attn")  # [S, N*T, 3d]
            q, k, v = qkv.view(S * N, T, 3, self.n_head, -1).transpose(1, 3).unbind(2)
            # q, k, v: [S*N, H, T, d/H]; seeds and sequences share the batch dimension
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scales[i])
            if probe is not None:
                masses.append(self._mass(q, k, i, *probe).view(S, N, -1).sum(1))
            o = o.transpose(1, 2).reshape(S, N * T, self.d)
            h = h + _linear(o, w, f"h.{i}.attn.c_proj")
            m = self.act(self._norm_linear(h, f"h.{i}.ln_2", f"h.{i}.mlp.c_fc"))
            h = h + _linear(m, w, f"h.{i}.mlp.c_proj")
        mass = torch.stack(masses, dim=1).float() if probe is not None else None
        return h.view(S, N, T, self.d), mass

    def _mass(
        self, q: torch.Tensor, k: torch.Tensor, layer: int, query: int, keys: torch.Tensor
    ) -> torch.Tensor:
        """[S*N, H] attention probability from ``query`` summed over ``keys``."""
        scores = q[:, :, query : query + 1] @ k[:, :, : query + 1].transpose(-1, -2)
        probs = torch.softmax(scores.float() * self.scales[layer], dim=-1)  # [S*N, H, 1, q+1]
        return probs[:, :, 0][..., keys].sum(-1)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.d,), *self.unit, eps=self.eps)

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """LayerNorm of ``x`` [S, rows, d] with seed-wise affine weights [S, d]."""
        x = self._normalize(x)
        g, b = self.w[name + ".weight"], self.w[name + ".bias"]
        return torch.addcmul(b.unsqueeze(1), x, g.unsqueeze(1))

    def _norm_linear(self, x: torch.Tensor, norm: str, linear: str) -> torch.Tensor:
        """``linear(LayerNorm(x))`` for x [S, rows, d].

        With more rows than outputs the norm's affine is folded into the linear weights,
        (x̂ g + b) W + c = x̂ (g[:, None] W) + (b W + c): the folded weights [S, d, out]
        are then smaller than x, and no elementwise pass over x is spent on the affine.
        """
        weight, bias = self.w[linear + ".weight"], self.w[linear + ".bias"]  # [S, d, out]
        if x.shape[1] <= weight.shape[2]:
            return _linear(self._norm(x, norm), self.w, linear)
        g, b = self.w[norm + ".weight"], self.w[norm + ".bias"]  # [S, d]
        folded_bias = torch.baddbmm(bias.unsqueeze(1), b.unsqueeze(1), weight)  # [S, 1, out]
        return torch.bmm(self._normalize(x), g.unsqueeze(2) * weight).add_(folded_bias)


class StackedMLP(StackedModel):
    """The MLP of :class:`models.MLPTargets` with stacked weights."""

    kind = "mlp"

    def __init__(self, template: models.MLPTargets, params: dict[str, torch.Tensor]) -> None:
        super().__init__(template, params)
        self.src_pos = template.src_pos
        self.offsets = template.offsets
        # the body: GELU, Linear, GELU, Linear, ...; Linear weights are [out, in]
        self.linears = [
            f"body.{i}" for i, m in enumerate(template.body) if isinstance(m, torch.nn.Linear)
        ]

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        w = self.params
        seq = self.per_seed(seq)
        S, N, _ = seq.shape
        src = seq[..., self.src_pos] + self.offsets  # [S, N, L_in]
        seeds = torch.arange(S, device=seq.device).view(S, 1, 1)
        # the summed embedding bag: [S, N, L_in, width] -> [S, N, width]
        h = w["embed.weight"][seeds, src].sum(2) + w["bias"].unsqueeze(1)
        for name in self.linears:
            weight = w[name + ".weight"].transpose(1, 2)  # [S, in, out]
            h = _affine(F.gelu(h), weight, w[name + ".bias"])
        logits = h.view(S, N, self.tgt_len, tasks.VOCAB_SIZE)
        return torch.log_softmax(logits.float(), dim=-1)


def build_stack(
    cfg: TrialConfig, data: tasks.TaskData, init_seeds: Sequence[int], device: torch.device
) -> StackedModel:
    """The S models of ``init_seeds``, each built as the single-seed trial builds it.

    Raises:
        ConfigError: a config that cannot train stacked (LoRA, whose peft layers are not
            restated here, or a GPT-2 base with cross-attention layers).
    """
    if models.is_lora(cfg):
        raise ConfigError("seed_mode", cfg.seed_mode, "must be 'sequential' with LoRA")
    template = models.build_model(cfg, data, init_seeds[0]).to(device)
    if isinstance(template, models.GPT2Targets):
        _check_gpt2(template, cfg)
    params = {
        name: p.detach().new_empty((len(init_seeds), *p.shape))
        for name, p in template.named_parameters()
        if p.requires_grad
    }
    stack: StackedModel
    if isinstance(template, models.GPT2Targets):
        stack = StackedGPT2(template, params)
    else:
        assert isinstance(template, models.MLPTargets)
        stack = StackedMLP(template, params)
    stack.set_seed(0, template)
    for i, seed in enumerate(init_seeds[1:], start=1):
        stack.set_seed(i, models.build_model(cfg, data, seed))  # one module at a time
    for p in params.values():
        p.requires_grad_(True)
    return stack


def _check_gpt2(template: models.GPT2Targets, cfg: TrialConfig) -> None:
    config = template.lm.config
    for flag, required in _REQUIRED_GPT2.items():
        if getattr(config, flag, required) != required:
            raise ConfigError(
                "seed_mode",
                cfg.seed_mode,
                f"must be 'sequential' for a base with {flag}={getattr(config, flag)!r}",
            )


def _linear(x: torch.Tensor, w: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    """GPT-2's Conv1D for stacked weights: x [S, rows, in] @ W [S, in, out] + b [S, out]."""
    return _affine(x, w[name + ".weight"], w[name + ".bias"])


def _affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x [S, rows, in] @ weight [S, in, out] + bias [S, out]; the bias is added after the
    product (on CPU faster than ``baddbmm``'s broadcast copy of it into the output)."""
    return torch.bmm(x, weight).add_(bias.unsqueeze(1))


def _attention_scale(config: Any, layer: int) -> float:
    scale = 1.0
    if config.scale_attn_weights:
        scale = (config.n_embd // config.n_head) ** -0.5
    if config.scale_attn_by_inverse_layer_idx:
        scale /= float(layer + 1)
    return scale


def _activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """GPT-2's activation by its config name (elementwise, so any shape will do)."""
    from transformers.activations import ACT2FN

    return ACT2FN[name]


# one training step of every seed -------------------------------------------------


class StackedSeeds:
    """The trial's S seeds as one stacked model, its optimizer and the divergence record.

    The same interface as ``loop.SequentialSeeds``: a step from each seed's batch
    indices, the first bad step per seed, per-seed metrics and checkpoint entries.

    The optimizer is the trial's own (``loop.make_optimizer``: fused AdamW or SGD) over
    the stacked weights: its update is elementwise, so it is S independent updates with
    the single-seed arithmetic. Divergence follows the sequential path: a seed's first
    non-finite loss is recorded on the device at every step; once the trial has read it
    (every step on the CPU, at evaluations on CUDA, where reading costs a
    synchronization) the seed is frozen: its gradient is zeroed and its weights are put
    back after every update. Until then its non-finite numbers stay in its own slices:
    no operation mixes seeds, and the clipping norm is per seed.
    """

    def __init__(
        self,
        cfg: TrialConfig,
        data: tasks.TaskData,
        init_seeds: Sequence[int],
        seq: torch.Tensor,
        amp: Callable[[], AbstractContextManager],
        make_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    ) -> None:
        self.cfg = cfg
        self.seq = seq  # [D, T] on the device
        self.targets = slice(data.tgt_start, data.tgt_start + data.tgt_len)
        self.amp = amp
        self.model = build_stack(cfg, data, init_seeds, seq.device)
        self.params = list(self.model.params.values())
        self.optimizer = make_optimizer(self.params)
        # first step with a non-finite training loss, -1 if none: [S] on the device
        self.bad = torch.full((len(init_seeds),), -1, dtype=torch.long, device=seq.device)
        self.frozen: dict[int, list[torch.Tensor]] = {}  # seed -> its weights when frozen
        # the batch of a frozen seed: any valid one, its update is undone
        self.spare = torch.arange(cfg.batch_size)
        self.forward: Callable[[torch.Tensor], torch.Tensor] = self.model.forward

    def step(self, indices: list[torch.Tensor | None], lr: float, step: int) -> None:
        """One update of every seed from its batch ``indices[i]`` [B] of the data."""
        idx = torch.stack([self.spare if i is None else i for i in indices])  # [S, B]
        seq = self.seq[idx.to(self.seq.device, non_blocking=True)]  # [S, B, T]
        self.train_step(seq, seq[..., self.targets], lr, step)

    def train_step(self, seq: torch.Tensor, targets: torch.Tensor, lr: float, step: int) -> None:
        """One update of every seed: ``seq`` [S, B, T], ``targets`` [S, B, L]."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.amp():
            logp = self.forward(seq)  # [S, B, L, V]
            nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [S, B, L]
            loss = nll.flatten(1).mean(1)  # [S], the mean per target token of each seed
        loss.sum().backward()  # seed i's gradient is that of its own loss
        with torch.no_grad():
            grads = [p.grad for p in self.params if p.grad is not None]  # each [S, ...]
            for i in self.frozen:
                for g in grads:
                    g[i].zero_()
            if self.cfg.grad_clip is not None:
                _clip_per_seed(grads, self.cfg.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            for i, weights in self.frozen.items():
                for p, frozen in zip(self.params, weights, strict=True):
                    p[i].copy_(frozen)
            finite = torch.isfinite(loss.detach())
            self.bad = torch.where((self.bad < 0) & ~finite, step, self.bad)

    def bad_steps(self) -> list[int]:
        """Each seed's first bad step (-1: none); a seed seen bad here is frozen."""
        bad = [int(b) for b in self.bad.tolist()]
        for i, b in enumerate(bad):
            if b >= 0 and i not in self.frozen:
                self.frozen[i] = [p[i].detach().clone() for p in self.params]
        return bad

    def evaluate(self, batch: evaluate.EvalBatch, floor: float) -> list[dict[str, Any]]:
        return evaluate.evaluate_stack(self.model, batch, floor, self.amp)

    def seed_states(self) -> list[dict[str, Any]]:
        """Per seed: its weights as its own module's state dict, its slices of the
        optimizer state (per weight, by position), its bad step."""
        opt = self.optimizer.state_dict()["state"]  # weight position -> buffers [S, ...]
        out = []
        for i, bad in enumerate(self.bad_steps()):
            weights = models.trainable_state(self.model.seed_module(i), self.cfg)
            out.append(
                {
                    "model": {k: v.detach().cpu().clone() for k, v in weights.items()},
                    "optimizer": {
                        pos: {k: _seed_slice(v, i) for k, v in buffers.items()}
                        for pos, buffers in opt.items()
                    },
                    "rng": None,
                    "bad": bad,
                }
            )
        return out

    @torch.no_grad()
    def load_seed_states(self, states: Sequence[Mapping[str, Any]]) -> None:
        """Loads what ``seed_states`` wrote, one entry per seed."""
        for i, state in enumerate(states):
            module = self.model.seed_module(i)
            models.load_trainable_state(module, self.cfg, state["model"])
            self.model.set_seed(i, module)
            self.bad[i] = int(state["bad"])
        opt = {
            pos: {k: _stack_slices([s["optimizer"][pos][k] for s in states]) for k in buffers}
            for pos, buffers in states[0]["optimizer"].items()
        }
        if opt:
            groups = self.optimizer.state_dict()["param_groups"]
            self.optimizer.load_state_dict({"state": opt, "param_groups": groups})
        self.frozen = {}
        self.bad_steps()


def _clip_per_seed(grads: list[torch.Tensor], max_norm: float) -> None:
    """Scales each seed's gradients [S, ...] so that their joint norm is <= max_norm,
    as ``clip_grad_norm_`` does for one seed."""
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])
    total = torch.linalg.vector_norm(norms, dim=0)  # [S]
    coef = (max_norm / (total + 1e-6)).clamp_(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *[1] * (g.dim() - 1)))


def _seed_slice(value: Any, index: int) -> Any:
    """Seed ``index``'s part of an optimizer buffer [S, ...]; a step count (0-dim) or a
    missing buffer (None) is shared."""
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        return value[index].cpu().clone()
    return value.cpu().clone() if isinstance(value, torch.Tensor) else value


def _stack_slices(slices: list[Any]) -> Any:
    """The buffer [S, ...] from the seeds' slices (the inverse of ``_seed_slice``)."""
    first = slices[0]
    if isinstance(first, torch.Tensor) and first.dim() > 0:
        return torch.stack(slices)
    return first
