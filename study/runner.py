"""Running a study on Ray Tune, on an embedded local Ray or on a cluster.

:func:`run_study` takes a :class:`~study.spec.StudySpec` (valid by construction) and
checks only where it goes; then it starts or joins Ray, records the spec in the study
directory, and runs one ``Tuner``: the escape stopper, one resource shape per trial,
actor reuse, retries from the last checkpoint, the compact progress table and the
study's Ray metrics. :func:`resume_study` continues a study whose driver died.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.results import STUDY_FILE, Study, StudyStatus
from study.space import param_space, search_alg
from study.spec import StudySpec, parse_spec
from study.trainable import TrainFn, train_trial
from trainables.config import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_ROOT = "studies"
# Ray Tune settings read from the environment when a run starts: the classic progress
# reporter (so that ours replaces Ray's tables), no default loggers (TensorBoard
# cannot record the per-seed lists; the JSON logger is added explicitly), and no
# warning when frequent small checkpoints force state snapshots (they are cheap here).
_TUNE_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}
# Defaults a user's own environment overrides: a trial's reports travel to the driver
# in batches gathered over about a second instead of one round trip per evaluation
# (the training thread waits for each round trip). The stopper and the progress table
# then see a report at most about a second late; the loop stops itself on escape.
# TUNE_RESULT_BUFFER_LENGTH=1 turns batching off.
_TUNE_ENV_DEFAULTS = {
    "TUNE_RESULT_BUFFER_LENGTH": "64",
    "TUNE_RESULT_BUFFER_MIN_TIME_S": "1.0",
    "TUNE_RESULT_BUFFER_MAX_TIME_S": "1.0",
}


@dataclass(frozen=True)
class StudyOutcome:
    """How a run ended: where the study is and its status."""

    path: str
    status: StudyStatus
    wall_s: float
    dashboard_url: str | None = None


def default_storage(spec: StudySpec, now: dt.datetime | None = None) -> str:
    """A new study directory under ``./studies/``: the spec name and the time."""
    stamp = (now or dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    return str(Path(DEFAULT_ROOT) / f"{spec.name}-{stamp}")


def run_study(
    spec: StudySpec,
    storage: str | None = None,
    *,
    address: str | None = None,
    max_concurrent: int | None = None,
    dashboard: bool | None = None,
    progress_interval_s: float = 10.0,
    train_fn: TrainFn | None = None,
) -> StudyOutcome:
    """Runs a study to the end.

    Args:
        spec: the validated spec.
        storage: the study directory (local path or a URI Ray accepts, such as
            ``s3://bucket/studies/name``); a new folder under ``./studies/`` when None.
            A directory that already holds this very spec is resumed.
        address: a Ray cluster to join (``auto`` for the local one); None starts an
            embedded local Ray, or uses the session already initialized in this process.
        max_concurrent: trials running at once (overrides the spec).
        dashboard: start the local dashboard (on 127.0.0.1); None when installed.
        progress_interval_s: seconds between progress tables.
        train_fn: the training function; :func:`trainables.loop.train` when None.

    Returns:
        The study directory and its final status.

    Raises:
        ConfigError: the storage holds another study or something else, or a bad
            ``max_concurrent``.
        RuntimeError: Ray Tune failed as a whole.
    """
    if max_concurrent is not None and (isinstance(max_concurrent, bool) or max_concurrent < 1):
        raise ConfigError("max_concurrent", max_concurrent, "must be an integer >= 1")
    path = _absolute(storage or default_storage(spec))
    resume = _check_storage(path, spec)
    if address and not _is_uri(path):
        logger.warning(
            "storage %s is a local path: on a multi-node cluster it must be shared "
            "(an NFS mount on every node, or a URI such as s3://...)",
            path,
        )
    if not resume:  # before Ray starts: storage that cannot be written is refused at once
        _record_spec(path, spec)
    start = time.time()
    with _ray_session(address, dashboard) as url:
        logger.info("study %s: %d trials in %s", spec.name, spec.n_trials, path)
        tuner = _tuner(spec, path, resume, max_concurrent, progress_interval_s, train_fn)
        _fit(tuner, path)
    return _outcome(path, time.time() - start, url)


def resume_study(
    path: str,
    *,
    address: str | None = None,
    dashboard: bool | None = None,
    train_fn: TrainFn | None = None,
) -> StudyOutcome:
    """Continues a study whose driver stopped: unfinished and errored trials resume
    from their last checkpoint; finished trials are neither rerun nor duplicated.

    Args:
        path: the study directory.
        address: a Ray cluster to join; None for an embedded local Ray.
        dashboard: start the local dashboard; None when installed.
        train_fn: the training function; :func:`trainables.loop.train` when None.

    Returns:
        The study directory and its final status.

    Raises:
        ConfigError: the directory is not a study this tool started.
        RuntimeError: Ray Tune failed as a whole.
    """
    path = _absolute(path)
    meta = _read_meta(path)
    if meta is None or "spec" not in meta:
        raise ConfigError(
            "DIR", path, f"must be a study directory made by phasetune run (with {STUDY_FILE})"
        )
    if not _exists(_join(path, "tuner.pkl")):
        raise ConfigError(
            "DIR",
            path,
            "holds no Ray Tune state (tuner.pkl) to resume; start it again with phasetune run",
        )
    spec = parse_spec(meta["spec"], source=meta.get("source", ""))
    start = time.time()
    with _ray_session(address, dashboard) as url:
        logger.info("resuming study %s in %s", spec.name, path)
        _fit(_tuner(spec, path, True, None, 10.0, train_fn), path)
    return _outcome(path, time.time() - start, url)


def dashboard_available() -> bool:
    """True when Ray's dashboard packages (the ``dashboard`` extra) are installed."""
    try:
        importlib.import_module("ray.dashboard.optional_deps")
    except ImportError:
        return False
    return True


def trial_name(trial: Any) -> str:
    """Trial names and directories are the trial ids, as in the tables."""
    return str(trial.trial_id)


# Ray ------------------------------------------------------------------------------------


# Ray picks the node's outward address, and binds its servers and agents there, unless
# multi-node mode is off; then the node address is the loopback one. Ray reads the
# switch from the environment in its own processes and from a module constant here.
_SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _bind_to_loopback() -> None:
    """Makes an embedded Ray listen on 127.0.0.1 only (a study joining a cluster does not)."""
    from ray._private import ray_constants

    os.environ[_SINGLE_NODE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


@contextlib.contextmanager
def _ray_session(address: str | None, dashboard: bool | None) -> Iterator[str | None]:
    """Starts or joins Ray, and shuts down only what it started."""
    import ray

    if ray.is_initialized():
        yield None
        return
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
    if address:
        kwargs["address"] = address
    else:
        _bind_to_loopback()
        with_dashboard = dashboard_available() if dashboard is None else dashboard
        kwargs.update(include_dashboard=with_dashboard, dashboard_host="127.0.0.1")
    context = ray.init(**kwargs)
    url = getattr(context, "dashboard_url", None) or None
    if url:
        logger.info("Ray dashboard: http://%s", url)
    try:
        yield url
    finally:
        ray.shutdown()


def _tuner(
    spec: StudySpec,
    path: str,
    restore: bool,
    max_concurrent: int | None,
    progress_interval_s: float,
    train_fn: TrainFn | None,
) -> Any:
    from ray import tune

    objective = spec.sweep.objective.to_dict() if spec.sweep.objective else None
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, objective=objective, train_fn=train_fn),
        spec.resources.to_ray(),
    )
    if restore:
        return tune.Tuner.restore(
            path, trainable, resume_unfinished=True, resume_errored=True, restart_errored=False
        )
    return tune.Tuner(
        trainable,
        param_space=param_space(spec) or {},
        tune_config=tune.TuneConfig(
            num_samples=spec.sweep.num_samples,
            search_alg=search_alg(spec),
            max_concurrent_trials=max_concurrent or spec.max_concurrent,
            reuse_actors=True,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
            time_budget_s=spec.time_budget_s,
        ),
        run_config=_run_config(spec, path, progress_interval_s),
    )


def _run_config(spec: StudySpec, path: str, progress_interval_s: float) -> Any:
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from study.metrics import StudyMetrics
    from study.progress import StudyProgress
    from study.stopper import EscapeStopper

    parent, name = _split(path)
    return tune.RunConfig(
        name=name,
        storage_path=parent,
        stop=EscapeStopper(),
        callbacks=[JsonLoggerCallback(), StudyMetrics(spec.name)],
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        progress_reporter=StudyProgress(spec.name, _shown_axes(spec), progress_interval_s),
        verbose=1,
    )


def _shown_axes(spec: StudySpec) -> list[str]:
    return (["case"] if spec.sweep.cases else []) + list(spec.axes)


def _fit(tuner: Any, path: str) -> None:
    from ray.tune import TuneError

    defaults = {k: v for k, v in _TUNE_ENV_DEFAULTS.items() if k not in os.environ}
    with _environment({**defaults, **_TUNE_ENV}):
        try:
            results = tuner.fit()
        except Exception as err:
            _raise_if_storage_failed(path, err)
            if isinstance(err, TuneError):
                raise RuntimeError(f"Ray Tune failed: {err}") from err
            raise
    if getattr(results, "errors", None):
        _raise_if_storage_failed(path, None)


def _raise_if_storage_failed(path: str, cause: BaseException | None) -> None:
    """Names the storage when it cannot be written (full, read-only) after trials failed."""
    problem = _storage_problem(path)
    if problem is not None:
        raise RuntimeError(
            f"storage {path} cannot be written ({problem}): the study is incomplete and "
            f"its files may be cut short; make room, then phasetune resume {path}"
        ) from cause


def _storage_problem(path: str, probe_bytes: int = 65536) -> str | None:
    """Why a local study directory cannot take more data, or None when it can."""
    if _is_uri(path):
        return None
    probe = Path(path) / ".phasetune-write-probe"
    try:
        with probe.open("wb") as file:
            file.write(b"\0" * probe_bytes)
            file.flush()
            os.fsync(file.fileno())
    except OSError as err:
        return err.strerror or str(err)
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
    return None


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _outcome(path: str, wall_s: float, url: str | None) -> StudyOutcome:
    status = Study.open(path).status() if not _is_uri(path) else _remote_status(path)
    return StudyOutcome(path=path, status=status, wall_s=wall_s, dashboard_url=url)


def _remote_status(path: str) -> StudyStatus:
    # Tables are read from local directories; a remote study is summarized by name only.
    return StudyStatus(
        name=_split(path)[1],
        path=path,
        planned=None,
        started=0,
        pending=0,
        trials={},
        runs={},
        steps_trained=0,
        budget_steps=0,
        train_s=0.0,
    )


# the study directory ----------------------------------------------------------------------


def _study_meta(spec: StudySpec, path: str) -> dict[str, Any]:
    return {
        "name": spec.name,
        "source": spec.source,
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "path": path,
        "n_trials": spec.n_trials,
        "axes": list(spec.axes),
        "spec": spec.to_dict(),
    }


def _record_spec(path: str, spec: StudySpec) -> None:
    """Writes ``study.json``; storage that refuses it is refused as the storage."""
    created = not _is_uri(path) and not Path(path).exists()
    try:
        _write_text(_join(path, STUDY_FILE), json.dumps(_study_meta(spec, path), indent=1))
    except OSError as err:
        if not _is_uri(path):  # no half-written record, no new empty directory left behind
            with contextlib.suppress(OSError):
                Path(_join(path, STUDY_FILE)).unlink(missing_ok=True)
                if created:
                    Path(path).rmdir()
        reason = err.strerror or str(err)
        raise ConfigError("storage", path, f"must be writable: {reason}") from err


def _check_storage(path: str, spec: StudySpec) -> bool:
    """True when ``path`` already holds this spec (the run resumes it)."""
    meta = _read_meta(path)
    if meta is not None:
        same = _canonical(meta.get("spec")) == _canonical(spec.to_dict())
        if not same:
            raise ConfigError(
                "storage",
                path,
                f"already holds study {meta.get('name')!r} with "
                "another spec; use phasetune resume DIR or a new --storage",
            )
        return _exists(_join(path, "tuner.pkl"))
    if not _is_uri(path) and Path(path).exists():
        if not Path(path).is_dir() or any(Path(path).iterdir()):
            raise ConfigError(
                "storage",
                path,
                "must be a new or empty directory, or a study directory of the same spec",
            )
    return False


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _read_meta(path: str) -> dict[str, Any] | None:
    text = _read_text(_join(path, STUDY_FILE))
    if text is None:
        return None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError:
        return None
    return meta if isinstance(meta, dict) else None


def _is_uri(path: str) -> bool:
    return "://" in path


def _absolute(path: str) -> str:
    return path.rstrip("/") if _is_uri(path) else str(Path(path).expanduser().resolve())


def _split(path: str) -> tuple[str, str]:
    parent, _, name = path.rstrip("/").rpartition("/")
    return parent, name


def _join(path: str, name: str) -> str:
    return f"{path.rstrip('/')}/{name}"


def _exists(path: str) -> bool:
    if not _is_uri(path):
        return Path(path).exists()
    import pyarrow.fs as pafs

    fs, inner = pafs.FileSystem.from_uri(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def _read_text(path: str) -> str | None:
    if not _is_uri(path):
        file = Path(path)
        return file.read_text() if file.is_file() else None
    if not _exists(path):
        return None
    import pyarrow.fs as pafs

    fs, inner = pafs.FileSystem.from_uri(path)
    with fs.open_input_stream(inner) as stream:
        return stream.read().decode()


def _write_text(path: str, text: str) -> None:
    if not _is_uri(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
        return
    import pyarrow.fs as pafs

    fs, inner = pafs.FileSystem.from_uri(path)
    fs.create_dir(inner.rpartition("/")[0], recursive=True)
    with fs.open_output_stream(inner) as stream:
        stream.write(text.encode())
