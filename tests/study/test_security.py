"""What the embedded Ray exposes, and how checkpoints are read.

The cluster config's rules (dashboard on 127.0.0.1, token authentication on every
``ray start``) are checked in test_cluster.py; here: the listening sockets of the
embedded Ray the runner starts, and the checkpoint loader.
"""

from __future__ import annotations

import ast
import ipaddress
from pathlib import Path

import psutil
import pytest

from study.runner import _ray_session, dashboard_available

ROOT = Path(__file__).resolve().parents[2]


def _listening(pids: list[int]) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket of these processes."""
    out = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            sockets = process.net_connections(kind="inet")
            name = process.name()
        except psutil.Error:
            continue
        out += [(name, c.laddr.ip, c.laddr.port) for c in sockets if c.status == "LISTEN"]
    return out


@pytest.fixture(scope="module")
def embedded_sockets() -> tuple[str | None, list[tuple[str, str, int]]]:
    """Starts the embedded Ray as ``phasetune run`` does and lists what it listens on."""
    import ray

    assert not ray.is_initialized()
    with _ray_session(None, dashboard_available()) as url:
        me = psutil.Process()
        pids = [me.pid, *(p.pid for p in me.children(recursive=True))]
        sockets = _listening(pids)
    assert not ray.is_initialized()
    return url, sockets


@pytest.mark.slow
def test_the_embedded_dashboard_listens_on_localhost_only(
    embedded_sockets: tuple[str | None, list[tuple[str, str, int]]],
) -> None:
    url, sockets = embedded_sockets
    assert sockets, "no listening socket found: the Ray processes were not seen"
    if not dashboard_available():
        pytest.skip("the dashboard extra is not installed")
    assert url is not None and url.startswith("127.0.0.1:")
    port = int(url.rpartition(":")[2])
    assert {ip for _, ip, p in sockets if p == port} == {"127.0.0.1"}


@pytest.mark.slow
def test_every_port_of_the_embedded_ray_is_on_loopback(
    embedded_sockets: tuple[str | None, list[tuple[str, str, int]]],
) -> None:
    _, sockets = embedded_sockets
    assert sockets, "no listening socket found: the Ray processes were not seen"
    exposed = [s for s in sockets if not _is_loopback(s[1])]
    assert exposed == []


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is IPv4 loopback
    return (mapped or ip).is_loopback


def _torch_loads(root: Path) -> list[tuple[str, ast.Call]]:
    calls = []
    for file in sorted(root.rglob("*.py")):
        tree = ast.parse(file.read_text(), str(file))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
            ):
                calls.append((f"{file.relative_to(ROOT)}:{node.lineno}", node))
    return calls


def test_checkpoints_are_loaded_with_weights_only() -> None:
    calls = [c for package in ("trainables", "study") for c in _torch_loads(ROOT / package)]
    assert calls, "no torch.load found: the checkpoint reader moved"
    for where, call in calls:
        flags = {k.arg: k.value for k in call.keywords}
        assert "weights_only" in flags, where
        value = flags["weights_only"]
        assert isinstance(value, ast.Constant) and value.value is True, where


def test_the_trainable_resumes_only_from_the_checkpoint_ray_gives_it() -> None:
    """The adapter never takes a checkpoint path from the trial config or elsewhere."""
    source = (ROOT / "study" / "trainable.py").read_text()
    tree = ast.parse(source)
    resumes = [
        k.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for k in node.keywords
        if k.arg == "resume_from"
    ]
    assert resumes and all(isinstance(v, ast.Name) and v.id == "path" for v in resumes)
    assert "with checkpoint.as_directory() as path:" in source
    assert "checkpoint = tune.get_checkpoint()" in source
