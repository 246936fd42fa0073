"""Training throughput of S seeds per trial, stacked and sequential, against the matmul rate.

Usage::

    python -m trainables.bench [--size paper] [--batch 128] [--seeds 1,4,8,16]
                               [--precision fp32,bf16] [--steps 3] [--rounds 3]
                               [--threads N] [--device cpu|cuda] [--compile]
                               [--no-baseline] [--json]

    # on a GPU machine
    python -m trainables.bench --device cuda --seeds 1,4,16,32,64 --precision bf16

Measures, in one run and side by side, the training steps of the disambiguation task
at the given size and batch (``loop.Trial.advance``: the very code a trial runs,
evaluation excluded) for every seed count S and precision: the trial of S seeds as it
trains by default (stacked for S > 1, the single-seed path for S = 1) and, as the
baseline, the same S seeds trained one after the other (``seed_mode: sequential``,
which is S single-seed runs stepped in turn). Also measured: the matmul rate of each
precision (a large square product, the best this machine does) and the rate at the
model's own matmul shape. Every configuration runs in alternating windows whose best
is kept, so that a job sharing the machine for a moment does not decide a figure.

Printed per row: steps/s (steps of the whole trial), per-seed steps/s (S x steps/s),
tokens/s, model FLOP/s and model-FLOP utilization (MFU) against the square matmul rate
of the row's precision, and for stacked rows the ratio of their per-seed throughput
to the sequential baseline with as many seeds.

Model FLOPs per step and seed count the matmuls of a forward and backward pass (3 x
forward): 2 x non-embedding weights per input token, the LM head at the target
positions only (where the loop applies it), and attention scores and values (4 x
layers x T x d per token, causal masking not subtracted).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from typing import Any

import torch

from trainables import loop, models, stacked
from trainables.config import GPT2_SIZES, TrialConfig, resolve

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_rate(
    n: int,
    device: torch.device,
    m: int | None = None,
    k: int | None = None,
    seconds: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> float:
    """FLOP/s of ``[m, k] @ [k, n]`` products in ``dtype`` (square when m, k are None)."""
    m, k = m or n, k or n
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(4):
            a @ b
        reps += 4
        _sync(device)
    return 2.0 * m * n * k * reps / (time.perf_counter() - start)


def model_flops_per_step(cfg: TrialConfig, seq_len: int, tgt_len: int) -> float:
    """Training FLOPs of one step of one seed (see the module docstring)."""
    c = models.gpt2_config(cfg, seq_len - 1)
    d, n_inner = c.n_embd, c.n_inner or 4 * c.n_embd
    T = seq_len - 1
    tokens = cfg.batch_size * T
    targets = cfg.batch_size * tgt_len
    weights = c.n_layer * (4 * d * d + 2 * d * n_inner)
    forward = 2 * weights * tokens + 2 * c.vocab_size * d * targets
    forward += 4 * c.n_layer * T * d * tokens
    return 3.0 * forward


@dataclass
class _Case:
    """One measured configuration: a trial and its best window."""

    precision: str
    seeds: int
    mode: str  # "single" (S = 1), "stacked" or "sequential" (the baseline)
    trial: loop.Trial
    best: float = 0.0  # steps/s


def bench(
    size: str = "paper",
    batch: int = 128,
    seeds: tuple[int, ...] = (1, 4, 8, 16),
    precisions: tuple[str, ...] = ("fp32", "bf16"),
    steps: int = 3,
    warmup: int = 2,
    device: str = "cpu",
    compile_model: bool = False,
    rounds: int = 3,
    baseline: bool = True,
) -> dict[str, Any]:
    """Runs the measurement and returns its figures (see the module docstring).

    Args:
        size: a GPT2_SIZES preset.
        batch: batch size per seed.
        seeds: seed counts S to measure.
        precisions: ``fp32`` and/or ``bf16`` (autocast).
        steps: training steps per window.
        warmup: steps before the first window of each configuration.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        compile_model: ``torch.compile`` each trial's forward pass.
        rounds: alternating windows per configuration; the best is kept.
        baseline: also measure the sequential path for every S > 1.
    """
    cases = _cases(size, batch, seeds, precisions, device, baseline)
    dev = cases[0].trial.device
    for case in cases:
        if compile_model:
            _compile(case.trial)
        for _ in range(warmup):
            case.trial.advance()
    d = GPT2_SIZES[size]["n_embd"]
    rows = batch * (cases[0].trial.data.seq_len - 1)
    square = 4096 if dev.type == "cuda" else 1024
    peaks: dict[str, list[float]] = {p: [] for p in precisions}
    shaped: dict[str, list[float]] = {p: [] for p in precisions}
    for _ in range(rounds):
        for case in cases:
            case.best = max(case.best, _window(case.trial, steps))
        for p in precisions:
            peaks[p].append(matmul_rate(square, dev, seconds=0.5, dtype=DTYPES[p]))
            shaped[p].append(matmul_rate(4 * d, dev, m=rows, k=d, seconds=0.25, dtype=DTYPES[p]))

    data = cases[0].trial.data
    flops = model_flops_per_step(cases[0].trial.cfg, data.seq_len, data.tgt_len)
    peak = {p: max(v) for p, v in peaks.items()}
    sequential = {(c.precision, c.seeds): c.best for c in cases if c.mode == "sequential"}
    single = {c.precision: c.best for c in cases if c.seeds == 1}
    out_rows = []
    for case in cases:
        per_seed = case.best * case.seeds
        achieved = flops * per_seed
        base = sequential.get((case.precision, case.seeds))
        out_rows.append(
            {
                "precision": case.precision,
                "seeds": case.seeds,
                "mode": case.mode,
                "steps_per_s": case.best,
                "seed_steps_per_s": per_seed,
                "tokens_per_s": per_seed * case.trial.tokens_per_step,
                "model_gflop_per_s": achieved / 1e9,
                "mfu": achieved / peak[case.precision],
                "vs_sequential": (
                    per_seed / (base * case.seeds) if base and case.mode == "stacked" else None
                ),
                "vs_single_seed": per_seed / single[case.precision]
                if case.precision in single
                else None,
            }
        )
    return {
        "size": size,
        "batch": batch,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "compiled": compile_model,
        "steps": steps * rounds,
        "model_gflop_per_step": flops / 1e9,
        "matmul_gflop_per_s": {p: v / 1e9 for p, v in peak.items()},
        "model_shape_matmul_gflop_per_s": {p: max(v) / 1e9 for p, v in shaped.items()},
        "rows": out_rows,
    }


def _cases(
    size: str,
    batch: int,
    seeds: tuple[int, ...],
    precisions: tuple[str, ...],
    device: str,
    baseline: bool,
) -> list[_Case]:
    cases = []
    for precision in precisions:
        for S in seeds:
            modes = ["stacked", "sequential"] if baseline and S > 1 else ["stacked"]
            for mode in modes:
                cfg = resolve(
                    {
                        "task": "disambiguation",
                        "K": 10,
                        "D": 2000,
                        "size": size,
                        "batch_size": batch,
                        "device": device,
                        "precision": precision,
                        "num_seeds": S,
                        "seed_mode": "auto" if mode == "stacked" else "sequential",
                        "warmup_steps": 10,
                    }
                )
                label = "single" if S == 1 else mode
                cases.append(_Case(precision, S, label, loop.Trial(cfg)))
    return cases


def _window(trial: loop.Trial, steps: int) -> float:
    """Steps/s of ``steps`` training steps."""
    _sync(trial.device)
    start = time.perf_counter()
    for _ in range(steps):
        trial.advance()
    _sync(trial.device)
    return steps / (time.perf_counter() - start)


def _compile(trial: loop.Trial) -> None:
    seeds = trial.seeds
    if isinstance(seeds, stacked.StackedSeeds):
        seeds.forward = torch.compile(seeds.model.forward)
    elif isinstance(seeds, loop.SequentialSeeds):
        for solo in seeds.solos:
            solo.model = torch.compile(solo.model)  # type: ignore[assignment]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def _precisions(text: str) -> tuple[str, ...]:
    out = tuple(text.split(","))
    for p in out:
        if p not in DTYPES:
            raise argparse.ArgumentTypeError(f"precision {p!r} is not one of fp32, bf16")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="training throughput and MFU per seed count")
    parser.add_argument("--size", default="paper", choices=sorted(GPT2_SIZES))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seeds", type=_ints, default=(1, 4, 8, 16))
    parser.add_argument("--precision", type=_precisions, default=("fp32", "bf16"))
    parser.add_argument("--steps", type=int, default=3, help="steps per window")
    parser.add_argument("--rounds", type=int, default=3, help="windows per configuration")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--no-baseline", action="store_true", help="skip the sequential runs")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = bench(
        args.size,
        args.batch,
        args.seeds,
        args.precision,
        steps=args.steps,
        device=args.device,
        compile_model=args.compile,
        rounds=args.rounds,
        baseline=not args.no_baseline,
    )
    if args.json:
        print(json.dumps(out))
        return 0
    _print(out)
    return 0


def _print(out: dict[str, Any]) -> None:
    print(
        f"{out['size']} GPT-2, batch {out['batch']} per seed, {out['device']}, "
        f"{out['threads']} threads{', compiled' if out['compiled'] else ''}, "
        f"{out['model_gflop_per_step']:.3f} GFLOP per step and seed"
    )
    for p, rate in out["matmul_gflop_per_s"].items():
        shaped = out["model_shape_matmul_gflop_per_s"][p]
        print(f"{p} matmul {rate:.1f} GFLOP/s (at the model's shape {shaped:.1f})")
    print(
        f"{'prec':>5} {'S':>3} {'mode':>10} {'steps/s':>9} {'seed-steps/s':>13} "
        f"{'tokens/s':>10} {'GFLOP/s':>9} {'MFU':>6} {'vs seq':>7} {'vs S=1':>7}"
    )
    for r in out["rows"]:
        vs_seq = "" if r["vs_sequential"] is None else f"{r['vs_sequential']:.2f}x"
        vs_one = "" if r["vs_single_seed"] is None else f"{r['vs_single_seed']:.2f}x"
        print(
            f"{r['precision']:>5} {r['seeds']:>3} {r['mode']:>10} {r['steps_per_s']:>9.2f} "
            f"{r['seed_steps_per_s']:>13.2f} {r['tokens_per_s']:>10.0f} "
            f"{r['model_gflop_per_s']:>9.1f} {100 * r['mfu']:>5.1f}% {vs_seq:>7} {vs_one:>7}"
        )
    for r in out["rows"]:
        if r["seeds"] == 8 and r["vs_sequential"] is not None:
            print(
                f"{r['precision']}: stacked S=8 per-seed throughput = "
                f"{r['vs_sequential']:.2f}x that of 8 sequential single-seed runs"
            )


if __name__ == "__main__":
    raise SystemExit(main())
