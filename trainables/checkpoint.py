"""Checkpoint directories written by the training loop.

A checkpoint directory holds ``checkpoint.pt`` (one ``torch.save`` of plain
containers and tensors, read back with ``weights_only=True``) and ``config.json``
(the resolved trial config, for people). The payload:

- ``format``, ``config`` (resolved dict), ``step``, ``n_evals``, ``train_s``;
- ``seeds``: one entry per seed with ``model`` (every weight, or only LoRA's: the
  frozen base is rebuilt from the config), ``optimizer``, ``scheduler`` (the
  schedule is a pure function of the step; its state is that step),
  ``order`` (batch-order generator state, current permutation and position),
  ``rng`` (the global torch generator the seed's dropout draws from, CPU and CUDA),
  ``tracker`` (escape tracker fields), ``history`` (watched value per evaluation),
  ``bad_step``.

The evaluation batch and z-shuffle are not stored: their generator is re-seeded from
the data seed and they are drawn before training, so they come out the same.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = 1
FILE = "checkpoint.pt"


def write(payload: dict[str, Any]) -> str:
    """Writes ``payload`` to a fresh temporary directory and returns its path."""
    out = tempfile.mkdtemp(prefix="phasetune-ckpt-")
    torch.save({"format": FORMAT, **payload}, os.path.join(out, FILE))
    Path(out, "config.json").write_text(json.dumps(payload.get("config", {}), indent=1))
    return out


def read(path: str | os.PathLike) -> dict[str, Any]:
    """Loads a checkpoint directory (or its ``checkpoint.pt``) on the CPU.

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: a checkpoint of another format.
    """
    file = Path(path)
    if file.is_dir():
        file = file / FILE
    if not file.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: {FILE} is missing")
    payload = torch.load(file, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(
            f"checkpoint format={payload.get('format')!r} is not allowed: must be {FORMAT}"
        )
    return payload


def remove(path: str | None) -> None:
    """Deletes a checkpoint directory if it is still there (the caller may have moved it)."""
    if path:
        shutil.rmtree(path, ignore_errors=True)
