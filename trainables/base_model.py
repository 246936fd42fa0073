"""A local GPT-2 base checkpoint, for LoRA and fine-tuning where nothing can be downloaded.

Trains a GPT-2 of a size preset on an unrelated random mapping (its own data seed,
string length 6, two preimages per image) with the loop's recipe, and saves it with
``save_pretrained`` plus a marker saying it uses this package's vocabulary. Its
position table is 64 long, enough for every task with default lengths.

Usage::

    phasetune base OUT_DIR [--size paper] [--steps 2000] [--seed 7]
    python -m trainables.base_model OUT_DIR [--size paper] [--steps 2000] [--seed 7]

then ``base: OUT_DIR`` in a trial config (with ``lora_rank`` for LoRA).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from trainables import loop, models, tasks
from trainables.config import ConfigError, resolve

log = logging.getLogger(__name__)
N_POSITIONS = 64


def make_base(
    out_dir: str | os.PathLike,
    size: str = "paper",
    steps: int = 2000,
    seed: int = 7,
    **overrides: Any,
) -> str:
    """Trains and saves a base GPT-2; returns ``out_dir``.

    Args:
        out_dir: directory to write (created if missing).
        size: a GPT2_SIZES preset.
        steps: optimizer steps on the unrelated mapping.
        seed: initialization, data and order seed of the base.
        overrides: further trial-config keys (``lr``, ``batch_size``, ``n_embd``, ...).

    Raises:
        ConfigError: ``out_dir`` holds files already, or a bad size, step count or key.

    The checkpoint is written to a hidden sibling of ``out_dir`` and renamed into place
    at the end, so an interrupted call leaves no half-written base behind.
    """
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError("out_dir", str(out_dir), "must be a new or empty directory")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError("steps", steps, "must be an integer >= 1")
    cfg = resolve(
        {
            "task": "mapping",
            "direction": "forward",
            "K": 2,
            "D": 4000,
            "string_len": 6,
            "size": size,
            "seed": seed,
            "data_seed": seed + 1_000_003,
            "max_steps": steps,
            "warmup_steps": min(100, steps),
            "device": "cpu",
            **overrides,
        }
    )
    data = tasks.make_task(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tasks.derive_seed(seed, tasks.INIT_TAG))
        from transformers import GPT2LMHeadModel

        lm = GPT2LMHeadModel(models.gpt2_config(cfg, N_POSITIONS))
    model = models.GPT2Targets(lm, data.tgt_start, data.tgt_len, None)
    params = list(model.parameters())
    solo = loop.SoloModel(
        model=model,
        params=params,
        optimizer=loop.make_optimizer(cfg, params, torch.device("cpu")),
        rng=None,
        bad=torch.full((), -1),
    )
    order = loop.BatchOrder(torch.Generator().manual_seed(seed), data.n_examples)
    amp = loop.make_amp(cfg, torch.device("cpu"))
    for step in range(steps):
        seq = data.seq[order.next(cfg.batch_size)]
        targets = seq[:, data.tgt_start : data.tgt_start + data.tgt_len]
        loop.train_step(solo, seq, targets, loop.lr_at(cfg, step), step + 1, cfg, amp)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        lm.save_pretrained(staging)
        marker = {"trained_on": "mapping K=2 string_len=6", "steps": steps, "size": size}
        models.write_marker(staging, {**marker, "seed": seed})
        staging.chmod(0o755)  # mkdtemp's 0o700 would hide the base from other users
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.debug("saved a %s GPT-2 base (%d steps) to %s", size, steps, out)
    return str(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--size", default="paper")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    make_base(args.out_dir, args.size, args.steps, args.seed)
    print(f"base checkpoint written to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
