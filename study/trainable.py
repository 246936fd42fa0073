"""The Ray Tune adapter: a function trainable around :func:`trainables.loop.train`.

Each evaluation of the loop becomes one ``tune.report``; a checkpoint directory given
by the loop goes along as a ``tune.Checkpoint``, and a retried or resumed trial
continues from ``tune.get_checkpoint()``. The final report also leaves a checkpoint
that records it, so a trial that finished just before its driver died is not
trained again when the study resumes.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from study.spec import OBJECTIVE_KEY, Objective, trial_config

TrainFn = Callable[..., Any]
FINAL_REPORT = "final_report.json"  # in the last checkpoint of a finished trial


def train_trial(
    config: dict[str, Any],
    objective: Mapping[str, Any] | None = None,
    train_fn: TrainFn | None = None,
) -> None:
    """Runs one trial inside Ray Tune.

    Args:
        config: the trial's params (a grid point travels under ``variant``).
        objective: an Optuna objective (``metric``, ``mode``, ``target``) to add to
            every report as ``objective``; None for none.
        train_fn: the training function, ``train(config, report, resume_from)``;
            :func:`trainables.loop.train` when None.
    """
    from ray import tune

    # one line per checkpoint would bury the progress table
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    train = train_fn or _loop_train()
    report = _Reporter(Objective(**objective) if objective else None)
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        train(trial_config(config), report=report)
        return
    with checkpoint.as_directory() as path:
        final = Path(path) / FINAL_REPORT
        if final.exists():
            tune.report(json.loads(final.read_text()))
            return
        train(trial_config(config), report=report, resume_from=path)


def _loop_train() -> TrainFn:
    from transformers.utils import logging as hf_logging

    from trainables.loop import train

    # a worker's output reaches the driver's console: a progress bar per loaded base
    # (LoRA, fine-tuning) would interleave with the study's progress table
    hf_logging.disable_progress_bar()
    return train


class _Reporter:
    """The loop's ``report(metrics, checkpoint_dir)`` speaking to Ray Tune."""

    def __init__(self, objective: Objective | None) -> None:
        import ray

        self.objective = objective
        self.node_id = ray.get_runtime_context().get_node_id()
        self.report_s = 0.0  # time spent waiting in tune.report so far (this process)

    def __call__(self, metrics: Mapping[str, Any], checkpoint_dir: str | None) -> None:
        from ray import tune

        out = dict(metrics)
        out["node_id"] = self.node_id
        out["report_s"] = self.report_s
        if self.objective is not None:
            out[OBJECTIVE_KEY] = self.objective.value(metrics)
        start = time.perf_counter()
        try:
            if out.get("done"):
                self._report_final(out, checkpoint_dir)
            elif checkpoint_dir is not None:
                tune.report(out, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))
            else:
                tune.report(out)
        finally:
            self.report_s += time.perf_counter() - start

    @staticmethod
    def _report_final(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        from ray import tune

        # the loop deletes its directory after report; Ray has copied it by then
        scratch = None if checkpoint_dir is not None else tempfile.mkdtemp(prefix="phasetune-")
        target = checkpoint_dir or scratch
        assert target is not None
        try:
            Path(target, FINAL_REPORT).write_text(json.dumps(metrics))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(target))
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
