"""Study-level benchmarks: load, early stopping and Ray's overhead.

Each command runs real studies on an embedded local Ray and prints its figures::

    python -m study.bench load --trials 200 --max-steps 20
    python -m study.bench early-stopping
    python -m study.bench overhead                    # runs the quick preset
    python -m study.bench overhead --study studies/quick   # or reads a finished one

``load`` runs many tiny trials with a bounded number of workers and prints the peak
memory of the driver and every Ray process it started, the most Ray workers alive at
once, and the time per trial spent outside the training loop. ``early-stopping`` runs
a reduced ``temperature`` study twice, with escape stopping and at its full budget,
and prints the steps each trained and whether the escape steps agree. ``overhead``
prints the share of trial time spent outside the training loop.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from study import presets
from study.results import Study
from study.runner import StudyOutcome, run_study
from study.spec import StudySpec, load_yaml, parse_spec

logger = logging.getLogger(__name__)
# Ray's own long-lived processes: not trial workers
_RAY_SERVICES = ("ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::IDLE")


@dataclass
class Usage:
    """What the sampler saw: peak resident memory (bytes) and the most trial workers."""

    peak_rss: int = 0
    peak_workers: int = 0
    samples: int = 0


@contextlib.contextmanager
def sampled_usage(interval_s: float = 0.25) -> Iterator[Usage]:
    """Samples the memory of this process and all its descendants while the block runs."""
    import psutil

    usage, done = Usage(), threading.Event()
    me = psutil.Process()

    def sample() -> None:
        while not done.is_set():
            rss, workers = 0, 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    rss += process.memory_info().rss
                    name = process.name()
                except psutil.Error:
                    continue
                if name.startswith("ray::") and not name.startswith(_RAY_SERVICES):
                    workers += 1
            usage.peak_rss = max(usage.peak_rss, rss)
            usage.peak_workers = max(usage.peak_workers, workers)
            usage.samples += 1
            done.wait(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield usage
    finally:
        done.set()
        thread.join()


def _preset(name: str) -> dict[str, Any]:
    data = load_yaml(presets.read_text(name), name)
    assert isinstance(data, dict)
    return data


def _run(
    spec: StudySpec, storage: str | None, cpus: int, **kwargs: Any
) -> tuple[StudyOutcome, float]:
    """Runs a study on a fresh embedded Ray; returns it and the seconds Ray took to start."""
    import ray

    path = storage or tempfile.mkdtemp(prefix=f"bench-{spec.name}-")
    target = str(Path(path) / spec.name) if storage is None else path
    start = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
    ray_start = time.perf_counter() - start
    try:
        return run_study(spec, target, progress_interval_s=60.0, **kwargs), ray_start
    finally:
        ray.shutdown()


def trial_overhead(study: Study) -> pd.DataFrame:
    """Per trial: where its wall time went, from its reports.

    Columns: ``wall_s`` (Ray's time of the trial), ``train_s`` (inside the loop:
    steps and evaluations), ``setup_s`` (building data and models, first imports
    included), ``report_s`` (waiting in ``tune.report``: the driver's round trip and
    checkpoint persistence), ``other_s`` (the rest: the step-0 evaluation, checkpoint
    writing, Ray's start of the trainable), ``outside_s`` (wall - train), and
    ``start``/``end`` (seconds since the epoch; within a second, from Ray's integer
    timestamps and the trial's float clock).
    """
    rows = []
    for run in study.trial_runs():
        last = run.last
        wall, train_s = last.get("time_total_s"), last.get("train_s")
        if wall is None or train_s is None:
            continue
        starts = [
            r["timestamp"] - r["time_total_s"]
            for r in run.reports
            if r.get("timestamp") is not None and r.get("time_total_s") is not None
        ]
        start = max(starts) if starts else math.nan
        rows.append(
            {
                "trial_id": run.trial_id,
                "wall_s": wall,
                "train_s": train_s,
                "setup_s": last.get("setup_s") or 0.0,
                "report_s": last.get("report_s") or 0.0,
                "start": start,
                "end": start + wall,
            }
        )
    columns = ["trial_id", "wall_s", "train_s", "setup_s", "report_s", "start", "end"]
    table = pd.DataFrame(rows, columns=columns)
    table["outside_s"] = table["wall_s"] - table["train_s"]
    table["other_s"] = table["outside_s"] - table["setup_s"] - table["report_s"]
    return table


def tail_idle_s(table: pd.DataFrame, slots: int) -> float:
    """Slot-seconds left idle because fewer trials than slots remained to run.

    From the moment the last trial started to the moment the last one ended, every
    slot without a running trial had nothing left to start: that is the study's
    shape, not overhead.
    """
    if table.empty or table["start"].isna().any():
        return 0.0
    last_start, last_end = float(table["start"].max()), float(table["end"].max())
    idle = 0.0
    cuts = sorted({last_start, last_end, *table["end"].clip(last_start, last_end)})
    for a, b in zip(cuts, cuts[1:], strict=False):
        mid = 0.5 * (a + b)
        running = int(((table["start"] <= mid) & (table["end"] > mid)).sum())
        idle += max(slots - running, 0) * (b - a)
    return idle


# commands ------------------------------------------------------------------------------------


def load(args: argparse.Namespace) -> int:
    """Many tiny trials on a bounded number of workers."""
    data = _preset("smoke")
    data.update(name="load", description="many tiny trials", max_concurrent=args.workers)
    data["budget"] = {"max_steps": args.max_steps, "eval_every": max(1, args.max_steps // 2)}
    data["budget"] |= {"eval_size": 64, "checkpoint_every": 1}
    data["recipe"] = {**data["recipe"], "warmup_steps": 0}
    data["sweep"] = {"grid": {"seed": list(range(args.trials))}}
    spec = parse_spec(data, source="bench load")
    start = time.time()
    with sampled_usage() as usage:
        outcome, _ = _run(spec, args.storage, args.cpus)
    wall = time.time() - start
    study = Study.open(outcome.path)
    per_trial = trial_overhead(study)
    trials = study.trials()
    slots = min(args.workers, args.cpus)
    train_total = float(per_trial["train_s"].sum())
    print(f"load: {len(trials)} trials of {spec.n_trials} planned, {args.max_steps} steps each")
    print(f"  statuses: { {k: int(v) for k, v in trials['status'].value_counts().items()} }")
    print(f"  study wall time: {wall:.1f} s ({wall / spec.n_trials:.2f} s per trial)")
    print(f"  peak RSS of driver + Ray processes: {usage.peak_rss / 2**30:.2f} GiB")
    print(f"  most trial workers alive at once: {usage.peak_workers} (limit {args.workers})")
    print(
        f"  per trial outside the loop (Ray's trial time - train_s): mean "
        f"{per_trial['outside_s'].mean():.3f} s, max {per_trial['outside_s'].max():.3f} s"
    )
    print(
        f"  per trial outside the loop, whole study (wall x {slots} slots - train_s): "
        f"{(wall * slots - train_total) / spec.n_trials:.3f} s"
    )
    print(f"  study: {outcome.path}")
    return 0 if len(trials) == spec.n_trials else 1


def early_stopping(args: argparse.Namespace) -> int:
    """The temperature study at reduced scale, with and without escape stopping."""
    data = _preset("temperature")
    data["task"] = {"task": "disambiguation", "K": 4, "D": 400}
    data["model"] = {"model": "gpt2", "size": "tiny"}
    recipe = {k: v for k, v in data["recipe"].items() if k not in ("lr", "batch_size")}
    data["recipe"] = {**recipe, "warmup_steps": 50, "weight_decay": 0.0}
    data["budget"] = {"max_steps": args.max_steps, "eval_every": 50, "eval_size": 128}
    data["budget"] |= {"checkpoint_every": 10}
    data["stop"] = {**data["stop"], "escape_confirm": 3, "escape_tail": 3}
    data["seeds"] = {"num_seeds": args.seeds}
    data["sweep"] = {"grid": {"lr": args.lr, "batch_size": args.batch_size}}
    data["resources"] = {"cpu": 1}
    results = {}
    for stop in (True, False):
        run = {**data, "name": "temperature_stop" if stop else "temperature_full"}
        run["stop"] = {**data["stop"], "stop_on_escape": stop}
        spec = parse_spec(run, source="bench early-stopping")
        outcome, _ = _run(spec, None, args.cpus)
        study = Study.open(outcome.path)
        results[stop] = (study.status(), study.trials(), outcome.path)
    keys = ["lr", "batch_size", "seed"]
    stopped = results[True][1].set_index(keys)["escape_step"].sort_index()
    full = results[False][1].set_index(keys)["escape_step"].sort_index()
    steps_stop, steps_full = results[True][0].steps_trained, results[False][0].steps_trained
    same = stopped.astype("Float64").equals(full.astype("Float64"))
    print(f"early stopping: {len(stopped)} runs (trial x seed), budget {args.max_steps} steps")
    print(f"  escape steps with stopping:  {_ints(stopped)}")
    print(f"  escape steps at full budget: {_ints(full)}")
    print(f"  identical escape steps: {same}")
    print(f"  steps trained with escape stopping: {steps_stop:,}")
    print(f"  steps trained at the full budget:   {steps_full:,}")
    ratio = steps_full / steps_stop if steps_stop else math.inf
    print(f"  ratio: {ratio:.2f}x fewer steps")
    print(f"  studies: {results[True][2]}  {results[False][2]}")
    return 0 if same and ratio >= 3 else 1


def _ints(values: pd.Series) -> list[int | None]:
    return [None if pd.isna(v) else int(v) for v in values]


def overhead(args: argparse.Namespace) -> int:
    """The share of trial time outside the training loop on the quick preset."""
    wall = ray_start = start = None
    if args.study:
        study = Study.open(args.study)
    else:
        spec = parse_spec(_preset("quick"), source="quick")
        start = time.time()
        outcome, ray_start = _run(spec, args.storage, args.cpus)
        wall = time.time() - start
        study = Study.open(outcome.path)
    per_trial = trial_overhead(study)
    trial_wall, train_s = float(per_trial["wall_s"].sum()), float(per_trial["train_s"].sum())
    share = 1 - train_s / trial_wall
    parts = {name: float(per_trial[f"{name}_s"].sum()) for name in ("setup", "report", "other")}
    print(f"overhead: {len(per_trial)} trials of {study.name} ({study.path})")
    print(f"  sum of Ray's trial times {trial_wall:.1f} s, of train_s {train_s:.1f} s")
    print(f"  share outside the loop (inside trials): {share:.1%}")
    print(
        "  of which: "
        + ", ".join(f"{name} {seconds:.1f} s ({seconds / trial_wall:.1%})" for name, seconds
                    in parts.items())
    )  # fmt: skip
    ok = share <= 0.10
    if wall is not None:
        slots = min(args.cpus, len(per_trial))
        idle = tail_idle_s(per_trial, slots)
        whole = 1 - train_s / (wall * slots)
        busy = 1 - train_s / (wall * slots - idle)
        lead = float(per_trial["start"].min()) - start
        after = start + wall - float(per_trial["end"].max())
        gaps = wall * slots - trial_wall - idle - slots * (lead + after)
        print(f"  study wall {wall:.1f} s on {slots} slots = {wall * slots:.1f} slot-s")
        print(
            f"  before the first trial {lead:.1f} s (Ray start {ray_start:.1f} s, then Tune and "
            f"worker start); after the last {after:.1f} s (Tune and Ray shutdown)"
        )
        print(
            f"  between trials on a slot {gaps:.1f} slot-s; tail with fewer trials than slots "
            f"{idle:.1f} slot-s"
        )
        print("  share outside the loop, whole study (Ray and worker start, reports,")
        print(f"  checkpoints): {busy:.1%} without the tail's idle slots, {whole:.1%} with them")
        ok = ok and busy <= 0.10
    return 0 if ok else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study.bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("load", help="many tiny trials, bounded workers")
    cmd.add_argument("--trials", type=int, default=200)
    cmd.add_argument("--max-steps", type=int, default=20)
    cmd.add_argument("--workers", type=int, default=2, help="trials at once")
    cmd.set_defaults(handler=load)
    cmd = sub.add_parser("early-stopping", help="escape stopping against the full budget")
    cmd.add_argument("--max-steps", type=int, default=3000)
    cmd.add_argument("--seeds", type=int, default=2)
    cmd.add_argument("--lr", type=float, nargs="+", default=[3e-3, 6e-3])
    cmd.add_argument("--batch-size", type=int, nargs="+", default=[32])
    cmd.set_defaults(handler=early_stopping)
    cmd = sub.add_parser("overhead", help="time outside the training loop, quick preset")
    cmd.add_argument("--study", help="read this finished study instead of running quick")
    cmd.set_defaults(handler=overhead)
    for name, cmd in sub.choices.items():
        cmd.add_argument("--cpus", type=int, default=2, help="CPUs of the embedded Ray")
        if name != "early-stopping":
            cmd.add_argument("--storage", help="study directory (default: a temporary one)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one benchmark and prints its figures."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
