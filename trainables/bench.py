"""Training throughput against this machine's measured fp32 matmul rate.

Usage::

    python -m trainables.bench [--size paper] [--batch 128] [--steps 60]
                               [--threads N] [--device cpu|cuda] [--compile]

Measures, in one run: the fp32 matmul rate (a large square product, the best this
machine does), the rate at the model's own matmul shape, and the loop's training
steps (``loop.Trial.advance``: the very code a trial runs, evaluation excluded) of
the disambiguation task at the given size and batch, in alternating windows whose
best is kept. Prints steps/s, tokens/s, model
FLOP/s and the model-FLOP utilization (MFU) against the square-matmul rate.

Model FLOPs per step count the matmuls of a forward and backward pass (3 x forward):
2 x non-embedding weights per input token, the LM head at the target positions only
(where the loop applies it), and attention scores and values (4 x layers x T x d per
token, causal masking not subtracted).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from trainables import loop, models
from trainables.config import GPT2_SIZES, resolve


def matmul_rate(
    n: int, device: torch.device, m: int | None = None, k: int | None = None, seconds: float = 1.0
) -> float:
    """FLOP/s of fp32 ``[m, k] @ [k, n]`` products (square when m, k are None)."""
    m, k = m or n, k or n
    a = torch.randn(m, k, device=device)
    b = torch.randn(k, n, device=device)
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


def model_flops_per_step(trial: loop.Trial) -> float:
    """Training FLOPs of one step of one seed (see the module docstring)."""
    model = trial.runs[0].model
    assert isinstance(model, models.GPT2Targets), "the benchmark measures GPT-2"
    c = model.lm.config
    d, n_inner = c.n_embd, c.n_inner or 4 * c.n_embd
    T = trial.data.seq_len - 1
    tokens = trial.cfg.batch_size * T
    targets = trial.cfg.batch_size * trial.data.tgt_len
    weights = c.n_layer * (4 * d * d + 2 * d * n_inner)
    forward = 2 * weights * tokens + 2 * c.vocab_size * d * targets
    forward += 4 * c.n_layer * T * d * tokens
    return 3.0 * forward


def bench(
    size: str = "paper",
    batch: int = 128,
    steps: int = 40,
    warmup: int = 5,
    device: str = "cpu",
    compile_model: bool = False,
    rounds: int = 3,
) -> dict[str, Any]:
    """Runs the measurement and returns its figures.

    Matmul rate and training steps are measured in ``rounds`` alternating windows and
    the best window of each is kept, so that a job sharing the machine for a moment
    does not decide the figure.
    """
    cfg = resolve(
        {
            "task": "disambiguation",
            "K": 10,
            "D": 2000,
            "size": size,
            "batch_size": batch,
            "device": device,
            "max_steps": steps + warmup,
            "warmup_steps": 10,
        }
    )
    trial = loop.Trial(cfg)
    if compile_model:
        for run in trial.runs:
            run.model = torch.compile(run.model)  # type: ignore[assignment]
    dev = trial.device
    for _ in range(warmup):
        trial.advance()
    d = GPT2_SIZES[size]["n_embd"]
    square = 4096 if dev.type == "cuda" else 1024
    rows = batch * (trial.data.seq_len - 1)
    step_rates, peaks, shaped = [], [], []
    per_round = max(1, steps // rounds)
    for _ in range(rounds):
        _sync(dev)
        start = time.perf_counter()
        for _ in range(per_round):
            trial.advance()
        _sync(dev)
        step_rates.append(per_round / (time.perf_counter() - start))
        peaks.append(matmul_rate(square, dev, seconds=0.5))
        shaped.append(matmul_rate(4 * d, dev, m=rows, k=d, seconds=0.25))

    flops = model_flops_per_step(trial)
    steps_per_s, peak = max(step_rates), max(peaks)
    achieved = flops * steps_per_s
    return {
        "size": size,
        "batch": batch,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "compiled": compile_model,
        "steps": per_round * rounds,
        "steps_per_s": steps_per_s,
        "tokens_per_s": steps_per_s * trial.tokens_per_step,
        "model_gflop_per_step": flops / 1e9,
        "model_gflop_per_s": achieved / 1e9,
        "matmul_gflop_per_s": peak / 1e9,
        "model_shape_matmul_gflop_per_s": max(shaped) / 1e9,
        "mfu": achieved / peak,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="training throughput and MFU")
    parser.add_argument("--size", default="paper", choices=sorted(GPT2_SIZES))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = bench(args.size, args.batch, args.steps, device=args.device, compile_model=args.compile)
    if args.json:
        print(json.dumps(out))
        return 0
    print(
        f"{out['size']} GPT-2, batch {out['batch']}, {out['device']}, "
        f"{out['threads']} threads{', compiled' if out['compiled'] else ''}"
    )
    print(f"steps/s {out['steps_per_s']:.2f}   tokens/s {out['tokens_per_s']:.0f}")
    print(
        f"model {out['model_gflop_per_step']:.2f} GFLOP/step -> "
        f"{out['model_gflop_per_s']:.1f} GFLOP/s"
    )
    print(
        f"fp32 matmul {out['matmul_gflop_per_s']:.1f} GFLOP/s "
        f"(at the model's shape {out['model_shape_matmul_gflop_per_s']:.1f})"
    )
    print(f"MFU {100 * out['mfu']:.1f}% of the measured matmul rate")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
