"""analysis runs on a laptop: it never imports Ray or torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

MODULES = [
    "analysis",
    "analysis.escape",
    "analysis.escape_times",
    "analysis.laws",
    "analysis.simulate",
    "analysis.figures",
    "analysis.report",
    "analysis.reference",
]


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_neither_ray_nor_torch(module: str) -> None:
    code = (
        f"import sys, {module}; "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch')); "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
