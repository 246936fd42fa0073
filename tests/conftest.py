"""Settings of the whole test session.

The session ends with ``os._exit`` and pytest's own exit status once every report is
written: native libraries the tests load (Ray's client threads, torch's thread pools)
have crashed now and then while the interpreter was tearing them down after a green
session, which turned its exit status into a segmentation fault. The status is the
one pytest decided (failures still fail); only the interpreter's teardown is skipped.
"""

from __future__ import annotations

import os
import sys

import pytest

_STATUS: dict[str, int] = {}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _STATUS["exit"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if "exit" not in _STATUS:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_STATUS["exit"])
