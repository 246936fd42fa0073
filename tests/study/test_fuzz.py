"""Bad input, generated: random and mutated specs, random and hostile filter expressions.

Whatever a spec holds, the command line answers with a valid study or with exit 2 and
one line on stderr: never a traceback, never a directory left behind, never Ray started
for a spec it refuses. Filter expressions are parsed, never evaluated as Python.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from study.cli import main
from study.query import filter_frame
from trainables.config import ConfigError

BASE: dict[str, Any] = {
    "name": "fuzz",
    "task": {"task": "disambiguation", "K": 4, "D": 400},
    "model": {"model": "gpt2", "size": "tiny"},
    "recipe": {"lr": 3.0e-3, "batch_size": 32, "warmup_steps": 50},
    "budget": {"max_steps": 600, "eval_every": 50, "checkpoint_every": 2},
    "stop": {"escape_fraction": 0.5, "escape_confirm": 2},
    "seeds": {"num_seeds": 1},
    "sweep": {
        "grid": {"seed": [0, 1]},
        "cases": [{"name": "a", "set": {"lr": 1e-3}, "grid": {"batch_size": [16, 32]}}],
    },
    "resources": {"cpu": 1},
    "max_concurrent": 2,
    "max_failures": 1,
}

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["gpt2", "mlp", "adamw", "sgd", "auto", "cuda", "tiny", "inverse", "1e-3"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
KEYS = st.one_of(
    st.sampled_from(
        [
            "K",
            "D",
            "bases",
            "lr",
            "batch_size",
            "lora_rank",
            "seed",
            "num_seeds",
            "grid",
            "cases",
            "sample",
            "search",
            "objective",
            "name",
            "set",
            "cpu",
            "gpu",
            "optimizer",
            "max_steps",
            "eval_every",
            "uniform",
            "loguniform",
            "choice",
            "int",
            "num_samples",
        ]
    ),  # fmt: skip
    st.text(max_size=8),
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside nested dicts and lists."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


@st.composite
def mutated_specs(draw: st.DrawFn) -> Any:
    """The base spec with a few values replaced, keys removed or keys added."""
    spec = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(spec)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = spec
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(VALUES)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(KEYS)] = draw(VALUES)
        else:
            parent.append(draw(VALUES))
    return spec


def _yaml(spec: Any) -> str:
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)


DOCUMENTS = st.one_of(
    mutated_specs().map(_yaml),
    VALUES.map(_yaml),
    st.text(max_size=80),  # anything at all, malformed YAML included
)


def _cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def _assert_refused(code: int, out: str, err: str) -> None:
    assert code == 2, (code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert " is not allowed: " in err and "Traceback" not in err, err


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(document=DOCUMENTS)
def test_any_spec_is_a_valid_study_or_a_one_line_refusal(document: str) -> None:
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "spec.yaml"
        file.write_text(document, encoding="utf-8")
        code, out, err = _cli("validate", str(file))
        if code == 0:
            assert out.startswith("ok: study ") and err == ""
            return
        _assert_refused(code, out, err)
        # the refusal comes before Ray starts or the study directory is made
        storage = Path(tmp) / "study"
        again = _cli("run", str(file), "--storage", str(storage), "--no-dashboard")
        assert again == (code, out, err)
        assert not storage.exists() and not ray.is_initialized()


def test_the_mutations_reach_both_outcomes() -> None:
    """The generator is not vacuous: the base spec is valid, a typical mutation is not."""
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "spec.yaml"
        file.write_text(_yaml(BASE))
        assert _cli("validate", str(file))[0] == 0
        file.write_text(_yaml({**BASE, "task": {**BASE["task"], "K": 0}}))
        code, out, err = _cli("validate", str(file))
        _assert_refused(code, out, err)
        assert err.startswith("error: task.K=0 is not allowed")


# filters ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "trial_id": ["a", "b", "c"],
            "status": ["escaped", "censored", "diverged"],
            "lr": [1e-3, 2e-3, math.nan],
            "escape_step": pd.array([500, None, None], dtype="Int64"),
        }
    )


FILTER_TOKENS = st.sampled_from(
    ["status", "lr", "escape_step", "==", "!=", "<", ">=", "and", "or", "not", "in", "(",
     ")", ",", "'escaped'", "1e-3", "null", "true", "__class__", ".", "lambda", ":", "[",
     "]", "+", "*", "os", "__import__", "'", '"', "=", "!"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(expr=st.one_of(st.lists(FILTER_TOKENS, max_size=8).map(" ".join), st.text(max_size=30)))
def test_any_filter_selects_rows_or_is_a_one_line_refusal(table: pd.DataFrame, expr: str) -> None:
    try:
        rows = filter_frame(table, expr)
    except ConfigError as err:
        message = str(err)
        assert message.startswith(f"where={expr!r} is not allowed: ") and "\n" not in message
    else:
        assert set(rows["trial_id"]) <= {"a", "b", "c"}


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("__import__('os').system('touch {marker}')", "unexpected character '.'"),
        ("status.__class__ == 'x'", "unexpected character '.'"),
        ("lr.real > 0", "unexpected character '.'"),
        ("(lambda: 1)() == 1", "unexpected character ':'"),
        ("len(status) > 1", "expected a comparison"),
        ("__class__ == 1", "unknown column '__class__'"),
        ("status == eval('1')", "expected 'and', 'or' or the end at '('"),
        ("status == '{marker}' or open('{marker}', 'w')", "expected a comparison"),
        ("[x for x in ()] == 1", "unexpected character '['"),
        ("lr + 1 > 0", "unexpected character '+'"),
    ],
)
def test_a_filter_cannot_run_code(
    table: pd.DataFrame, tmp_path: Path, expr: str, message: str
) -> None:
    marker = tmp_path / "pwned"
    expr = expr.format(marker=marker)
    with pytest.raises(ConfigError, match=r"^where=.* is not allowed: ") as info:
        filter_frame(table, expr)
    assert message in str(info.value)
    assert not marker.exists()
