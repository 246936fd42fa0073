"""The ``phasetune`` command.

Exit status: 0 on success, 2 on bad input (one line on stderr naming the field, the
value and what is allowed), 1 on a runtime failure (including trials that failed).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from study.tables import text_table
from trainables.config import ConfigError

BAD_INPUT = 2
FAILURE = 1
FORMATS = ("table", "csv", "json")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line.

    Args:
        argv: the arguments (``sys.argv[1:]`` when None).

    Returns:
        The exit status.
    """
    args = _parser().parse_args(argv)
    _configure_output(args.verbose)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as err:
        print(f"error: {_one_line(str(err))}", file=sys.stderr)
        return BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a runtime failure: one line, the details in the log
        logging.getLogger(__name__).debug("failure", exc_info=True)
        print(f"error: {_one_line(f'{type(err).__name__}: {err}')}", file=sys.stderr)
        return FAILURE


def _one_line(message: str) -> str:
    """A message that stays on one line whatever the input it quotes holds."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phasetune",
        description="Plateau-escape phase diagrams of small transformers, on Ray Tune.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a study (a preset name or a YAML spec)")
    run.add_argument("spec", metavar="SPEC")
    run.add_argument(
        "--storage",
        metavar="DIR",
        help="study directory (default: a new "
        "folder under ./studies/); a local path or a URI such as s3://...",
    )
    run.add_argument("--name", help="study name (default: the spec's)")
    run.add_argument("--address", help="Ray cluster to join ('auto' for the local one)")
    run.add_argument("--max-concurrent", type=int, metavar="N", help="trials at once")
    run.add_argument("--no-dashboard", action="store_true", help="no local Ray dashboard")
    run.add_argument(
        "--progress-every",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds between progress tables (default 10)",
    )
    run.set_defaults(handler=_run)

    resume = sub.add_parser("resume", help="continue a study whose driver stopped")
    resume.add_argument("dir", metavar="DIR")
    resume.add_argument("--address", help="Ray cluster to join")
    resume.add_argument("--no-dashboard", action="store_true", help="no local Ray dashboard")
    resume.set_defaults(handler=_resume)

    status = sub.add_parser("status", help="counts, steps saved and one line per trial")
    status.add_argument("dir", metavar="DIR")
    status.set_defaults(handler=_status)

    query = sub.add_parser("query", help="the trials table (or the curves) of a study")
    query.add_argument("dir", metavar="DIR")
    query.add_argument(
        "--where", metavar="EXPR", help="filter, e.g. \"status == 'escaped' and lr >= 1e-3\""
    )
    query.add_argument("--columns", metavar="A,B", help="columns to show, in order")
    query.add_argument("--curves", action="store_true", help="one row per evaluation")
    query.add_argument("--format", choices=FORMATS, default="table")
    query.set_defaults(handler=_query)

    analyze = sub.add_parser(
        "analyze",
        help="fit the laws and write the report",
        description="Fits the laws to one study, or to several pooled (a study and its "
        "follow-ups), and writes laws.json, the figures and report.md.",
    )
    analyze.add_argument("dirs", metavar="DIR", nargs="+")
    analyze.add_argument(
        "--out", metavar="DIR", help="report directory (default DIR/report; needed for several)"
    )
    analyze.set_defaults(handler=_analyze)

    base = sub.add_parser(
        "base",
        help="train a local GPT-2 base for LoRA and fine-tuning",
        description="Trains a GPT-2 of a size preset on an unrelated random mapping and "
        "saves it to DIR, for `base: DIR` in a spec where no hub model can be downloaded.",
    )
    base.add_argument("out", metavar="DIR", help="a new or empty directory")
    base.add_argument("--size", default="paper", help="GPT-2 size preset (default paper)")
    base.add_argument("--steps", type=int, default=2000, help="optimizer steps (default 2000)")
    base.add_argument("--seed", type=int, default=7, help="init, data and order seed")
    base.set_defaults(handler=_base)

    validate = sub.add_parser("validate", help="check a study spec or a cluster.yaml")
    validate.add_argument("file", metavar="FILE")
    validate.set_defaults(handler=_validate)
    return parser


def _configure_output(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("study", "trainables", "analysis"):
        log = logging.getLogger(name)
        log.handlers[:] = [handler]
        log.setLevel(logging.DEBUG if verbose else logging.INFO)
        log.propagate = False
    warnings.formatwarning = _one_line_warning


def _one_line_warning(
    message: Any, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    return f"warning: {message}\n"


# commands ---------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    import dataclasses

    from study.runner import run_study
    from study.spec import check_name, load_spec

    spec = load_spec(args.spec)
    if args.name:
        spec = dataclasses.replace(spec, name=check_name(args.name))
    outcome = run_study(
        spec,
        args.storage,
        address=args.address,
        max_concurrent=args.max_concurrent,
        dashboard=False if args.no_dashboard else None,
        progress_interval_s=args.progress_every,
    )
    return _print_outcome(outcome)


def _resume(args: argparse.Namespace) -> int:
    from study.runner import resume_study

    outcome = resume_study(
        args.dir, address=args.address, dashboard=False if args.no_dashboard else None
    )
    return _print_outcome(outcome)


def _print_outcome(outcome: Any) -> int:
    status = outcome.status
    unfinished = status.pending + status.trials.get("running", 0)
    ended = "stopped" if unfinished else "done"
    print(f"study {status.name} {ended} in {_duration(outcome.wall_s)}: {outcome.path}")
    for line in _status_lines(status):
        print(line)
    if unfinished:
        print(f"{unfinished} trials unfinished: phasetune resume {outcome.path} continues them")
    print(f"next: phasetune query {outcome.path}  |  phasetune analyze {outcome.path}")
    return FAILURE if status.trials.get("failed") else 0


def _status(args: argparse.Namespace) -> int:
    from study.results import Study

    study = Study.open(args.dir)
    status = study.status()
    print(f"study {status.name}: {status.path}")
    for line in _status_lines(status):
        print(line)
    trials = study.trials()
    if len(trials):
        axes = [a for a in study.meta.get("axes", []) if a in trials.columns]
        cols = ["trial_id", "seed", "status", "case", *axes, "steps", "escape_step"]
        cols = list(dict.fromkeys(c for c in cols if c in trials.columns))
        if trials["case"].isna().all():
            cols.remove("case")
        print(_render(trials[cols], "table"), end="")
    return 0


def _status_lines(status: Any) -> list[str]:
    planned = f" of {status.planned}" if status.planned is not None else ""
    trials = ", ".join(f"{n} {k}" for k, n in sorted(status.trials.items())) or "none"
    runs = ", ".join(f"{n} {k}" for k, n in sorted(status.runs.items())) or "none"
    lines = [
        f"trials: {status.started}{planned} started ({trials}); {status.pending} pending",
        f"runs (trial x seed): {runs}",
    ]
    if status.saved_fraction is not None:
        lines.append(
            f"steps: {status.steps_trained:,} trained of {status.budget_steps:,} at "
            f"the fixed budget; early stopping saved {status.saved_fraction:.0%}"
        )
    return lines


def _query(args: argparse.Namespace) -> int:
    from study.results import Study

    study = Study.open(args.dir)
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    if args.curves:
        table = study.curves(where=args.where, columns=columns)
    else:
        table = study.trials(where=args.where, columns=columns)
    sys.stdout.write(_render(table, args.format))
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from study.results import pooled_tables

    if len(args.dirs) > 1 and not args.out:
        allowed = f"must name the report directory when {len(args.dirs)} studies are pooled"
        raise ConfigError("--out", None, allowed)
    out = Path(args.out) if args.out else Path(args.dirs[0]) / "report"
    trials, curves = pooled_tables(args.dirs)
    try:
        from analysis.report import write_report
    except ImportError as err:
        raise RuntimeError(f"the analysis package cannot write reports here: {err}") from err
    write_report(trials, curves, out)
    print(f"report: {out / 'report.md'}")
    return 0


def _base(args: argparse.Namespace) -> int:
    import time

    from transformers.utils import logging as hf_logging

    from trainables.base_model import make_base

    hf_logging.disable_progress_bar()
    start = time.perf_counter()
    make_base(args.out, size=args.size, steps=args.steps, seed=args.seed)
    took = _duration(time.perf_counter() - start)
    print(f"base: {args.out} ({args.size} GPT-2, {args.steps} steps, {took})")
    print(f"next: base: {Path(args.out).expanduser().resolve()} in a spec's model section")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from study.cluster import is_cluster_config, validate_cluster
    from study.spec import load_spec, load_yaml, parse_spec

    path = Path(args.file)
    if not path.is_file():
        spec = load_spec(args.file)  # a preset name, or the one-line error for a bad path
    else:
        data = load_yaml(path.read_text(), str(path))
        if is_cluster_config(data):
            summary = validate_cluster(data)
            nodes = "; ".join(f"{name} {res}" for name, res in summary.node_types.items())
            print(
                f"ok: cluster {summary.name!r} on {summary.provider}"
                + (f": {nodes}" if nodes else "")
            )
            return 0
        spec = parse_spec(data, source=str(path))
    search = "optuna" if spec.sweep.search == "optuna" else "grid"
    res = spec.resources
    print(
        f"ok: study {spec.name!r}: {spec.n_trials} trials ({search}), axes "
        f"{', '.join(spec.axes) or 'none'}; per trial cpu={res.cpu:g} gpu={res.gpu:g}"
    )
    return 0


# output -----------------------------------------------------------------------------------


def _render(table: pd.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "json":
        return table.to_json(orient="records") + "\n"
    if table.empty:
        return "  ".join(map(str, table.columns)) + "\n(no rows)\n"
    return text_table(table, digits=6) + "\n"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


if __name__ == "__main__":
    sys.exit(main())
