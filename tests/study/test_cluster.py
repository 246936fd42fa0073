"""cluster.yaml: Ray's own schema (from the installed wheel) and this project's rules."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from study.cluster import is_cluster_config, ray_schema, validate_cluster
from trainables.config import ConfigError

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"


@pytest.fixture
def cluster() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def on_premises(data: dict[str, Any]) -> dict[str, Any]:
    """The documented variant: local provider and auth, node types detected by Ray."""
    out = copy.deepcopy(data)
    out["provider"] = {
        "type": "local",
        "head_ip": "10.0.0.10",
        "worker_ips": ["10.0.0.11", "10.0.0.12"],
    }
    out["auth"] = {"ssh_user": "me", "ssh_private_key": "~/.ssh/id_ed25519"}
    del out["available_node_types"], out["head_node_type"]
    return out


def test_the_shipped_cluster_yaml_passes_rays_schema(cluster: dict[str, Any]) -> None:
    schema = ray_schema()
    assert schema["$schema"].startswith("http://json-schema.org/draft-07")
    jsonschema.Draft7Validator(schema).validate(cluster)


def test_the_shipped_cluster_is_aws_with_integer_gpu_workers(cluster: dict[str, Any]) -> None:
    summary = validate_cluster(cluster)
    assert summary.provider == "aws"
    assert summary.node_types["gpu_worker"]["GPU"] == 1
    for node in cluster["available_node_types"].values():
        assert all(isinstance(v, int) for v in node["resources"].values())


def test_the_on_premises_variant_validates(cluster: dict[str, Any]) -> None:
    variant = on_premises(cluster)
    jsonschema.Draft7Validator(ray_schema()).validate(variant)
    assert validate_cluster(variant).provider == "local"


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


def _replace_in(key: str, old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data[key] = [c.replace(old, new) for c in data[key]]

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            _set(("available_node_types", "gpu_worker", "resources", "GPU"), 0.5),
            r"^available_node_types\.gpu_worker\.resources\.GPU=0\.5 is not allowed: 0\.5 is not "
            r"of type 'integer'",
        ),
        (
            _set(("provider",), {"region": "us-west-2"}),
            r"^provider=\{'region': 'us-west-2'\} is not allowed: 'type' is a required property",
        ),
        (
            _set(("max_workers",), "four"),
            r"^max_workers='four' is not allowed: 'four' is not of "
            r"type 'integer'",
        ),
        (
            _replace_in(
                "head_start_ray_commands", "--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0"
            ),
            r"^head_start_ray_commands='.*--dashboard-host=0\.0\.0\.0' is not allowed: must pass "
            r"--dashboard-host=127\.0\.0\.1",
        ),
        (
            _replace_in("head_start_ray_commands", " --dashboard-host=127.0.0.1", ""),
            r"^head_start_ray_commands=.* is not allowed: must pass --dashboard-host=127\.0\.0\.1",
        ),
        (
            _set(("head_start_ray_commands",), ["ray stop"]),
            r"^head_start_ray_commands=\['ray stop'\] is not allowed: must start the head",
        ),
        (
            _replace_in("worker_start_ray_commands", "RAY_AUTH_MODE=token ", ""),
            r"^worker_start_ray_commands='.*ray start --address.*' is not allowed: must run ray "
            r"start with RAY_AUTH_MODE=token",
        ),
        (
            _replace_in("head_start_ray_commands", "RAY_AUTH_MODE=token ", ""),
            r"^head_start_ray_commands=.* is not allowed: must run ray start with RAY_AUTH_MODE",
        ),
        (
            _set(("setup_commands",), ["pip install torch"]),
            r"^setup_commands=\['pip install torch'\] is not allowed: must install this project",
        ),
    ],
)
def test_a_broken_cluster_config_is_refused_naming_the_field(
    cluster: dict[str, Any], change: Callable[[dict[str, Any]], None], message: str
) -> None:
    change(cluster)
    with pytest.raises(ConfigError, match=message) as info:
        validate_cluster(cluster)
    assert "\n" not in str(info.value)


def test_an_exported_auth_mode_covers_the_later_ray_start(cluster: dict[str, Any]) -> None:
    starts = cluster["worker_start_ray_commands"]
    cluster["worker_start_ray_commands"] = [
        "export RAY_AUTH_MODE=token",
        *[c.replace("RAY_AUTH_MODE=token ", "") for c in starts],
    ]
    validate_cluster(cluster)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"cluster_name": "x"}, True),
        ({"provider": {}}, True),
        ({"task": {"K": 4}}, False),
        ([1], False),
    ],
)
def test_cluster_configs_are_told_apart_from_study_specs(data: Any, expected: bool) -> None:
    assert is_cluster_config(data) is expected
