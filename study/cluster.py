"""Checks of a Ray cluster launcher config (``cluster.yaml``) before ``ray up``.

Two layers: Ray's own JSON schema (``ray/autoscaler/ray-schema.json``, draft-07,
read from the installed wheel without starting Ray), then this project's rules: the
head's dashboard listens on 127.0.0.1 only, every ``ray start`` runs with token
authentication, and the setup installs phasetune.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainables.config import ConfigError

CLUSTER_KEYS = ("cluster_name", "provider", "available_node_types", "head_node_type")
_DASHBOARD_HOST = re.compile(r"--dashboard-host[= ]+(\S+)")


@dataclass(frozen=True)
class ClusterSummary:
    """What a valid cluster config declares."""

    name: str
    provider: str
    node_types: dict[str, dict[str, Any]]


def is_cluster_config(data: Any) -> bool:
    """True when a parsed YAML document looks like a cluster launcher config."""
    return isinstance(data, Mapping) and any(k in data for k in CLUSTER_KEYS)


def ray_schema() -> dict[str, Any]:
    """The cluster config schema shipped inside Ray's wheel."""
    spec = importlib.util.find_spec("ray")
    if spec is None or spec.origin is None:
        raise RuntimeError("ray is not installed: the cluster schema ships with it")
    path = Path(spec.origin).parent / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text())


def validate_cluster(data: Any) -> ClusterSummary:
    """Validates a cluster launcher config.

    Args:
        data: the parsed ``cluster.yaml``.

    Returns:
        Its name, provider type and node types.

    Raises:
        ConfigError: the first schema violation or broken project rule, naming the
            field, the value and what is allowed.
    """
    import jsonschema

    validator = jsonschema.Draft7Validator(ray_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "cluster"
        raise ConfigError(where, _short(error.instance), error.message)
    _check_dashboard(data.get("head_start_ray_commands") or [])
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        _check_token_auth(key, data.get(key) or [])
    _check_setup(data)
    return ClusterSummary(
        name=str(data["cluster_name"]),
        provider=str(data["provider"]["type"]),
        node_types={
            name: dict(node.get("resources") or {}) | _workers(node)
            for name, node in (data.get("available_node_types") or {}).items()
        },
    )


def _check_dashboard(commands: Sequence[str]) -> None:
    starts = [c for c in commands if "ray start" in c and "--head" in c]
    if not starts:
        raise ConfigError(
            "head_start_ray_commands",
            _short(list(commands)),
            "must start the head with ray start --head",
        )
    for command in starts:
        match = _DASHBOARD_HOST.search(command)
        if match is None or match.group(1) != "127.0.0.1":
            raise ConfigError(
                "head_start_ray_commands",
                command,
                "must pass "
                "--dashboard-host=127.0.0.1 (reach the dashboard through an "
                "SSH tunnel, never an open port)",
            )


def _check_token_auth(key: str, commands: Sequence[str]) -> None:
    exported = False
    for command in commands:
        if re.search(r"export\s+RAY_AUTH_MODE=token\b", command):
            exported = True
        if "ray start" in command and not (exported or "RAY_AUTH_MODE=token" in command):
            raise ConfigError(
                key,
                command,
                "must run ray start with RAY_AUTH_MODE=token (token authentication on every node)",
            )


def _check_setup(data: Mapping[str, Any]) -> None:
    commands = [
        c
        for key in ("setup_commands", "head_setup_commands", "worker_setup_commands")
        for c in data.get(key) or []
    ]
    if not any("pip install" in c and "phasetune" in c for c in commands):
        raise ConfigError(
            "setup_commands",
            _short(commands),
            "must install this project (pip install ... phasetune ...)",
        )


def _workers(node: Mapping[str, Any]) -> dict[str, Any]:
    return {k: node[k] for k in ("min_workers", "max_workers") if k in node}


def _short(value: Any, limit: int = 80) -> Any:
    text = repr(value)
    return value if len(text) <= limit else text[: limit - 3] + "..."
