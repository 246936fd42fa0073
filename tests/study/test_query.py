"""The filter language: comparisons and boolean logic over columns, never code."""

from __future__ import annotations

import pandas as pd
import pytest

from study.query import filter_frame, parse, select_columns
from trainables.config import ConfigError


@pytest.fixture
def table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "trial_id": ["a", "b", "c", "d"],
            "status": ["escaped", "censored", "escaped", "diverged"],
            "lr": [1e-3, 2e-3, 5e-4, 1e4],
            "batch_size": [32, 64, 32, 32],
            "escape_step": pd.array([500, None, 300, None], dtype="Int64"),
            "model": ["gpt2", "mlp", "gpt2", "gpt2"],
            "stop_on_escape": [True, True, False, True],
        }
    )


@pytest.mark.parametrize(
    ("expr", "rows"),
    [
        ("status == 'escaped'", ["a", "c"]),
        ('status != "escaped"', ["b", "d"]),
        ("lr >= 1e-3", ["a", "b", "d"]),
        ("lr > 1e-3 and lr < 1", ["b"]),
        ("1e-3 <= lr", ["a", "b", "d"]),
        ("batch_size == 32 and not status == 'diverged'", ["a", "c"]),
        ("status == 'censored' or escape_step < 400", ["b", "c"]),
        ("(status == 'censored' or lr < 1e-3) and batch_size == 32", ["c"]),
        ("escape_step == null", ["b", "d"]),
        ("escape_step != null", ["a", "c"]),
        ("escape_step > 0", ["a", "c"]),  # a missing value compares false
        ("escape_step != 500", ["b", "c", "d"]),
        ("model in ('mlp', 'lstm')", ["b"]),
        ("model in ('gpt2',)", ["a", "c", "d"]),
        ("not model in ('gpt2')", ["b"]),
        ("stop_on_escape == false", ["c"]),
        ("stop_on_escape == true and lr < 1e-2", ["a", "b"]),
        ("status == 1", []),  # a string never equals a number
        ("status < 1", []),  # nor orders against one
        ("", ["a", "b", "c", "d"]),
    ],
)
def test_filter_keeps_the_rows_where_the_expression_holds(
    table: pd.DataFrame, expr: str, rows: list[str]
) -> None:
    assert list(filter_frame(table, expr)["trial_id"]) == rows


def test_and_binds_tighter_than_or() -> None:
    tree = parse("a == 1 or b == 2 and c == 3")
    assert tree.op == "or" and tree.operands[1].op == "and"


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("__import__('os')", r"expected a comparison .* at '\('"),
        ("__import__('os').system('true')", r"unexpected character '\.' at position 17"),
        ("lr.__class__ == 1", r"unexpected character '\.' at position 3"),
        ("lr > 1; status == 'x'", r"unexpected character ';'"),
        ("lr >", r"expected a column, number, quoted string, true, false or null at the end"),
        ("lr = 1", r"expected a comparison \(== != < <= > >=\) or 'in' at '='"),
        ("(lr > 1", r"expected '\)' at the end"),
        ("lr > 1 lr", r"expected 'and', 'or' or the end at 'lr'"),
        ("lr in 1", r"expected '\(' after 'in'"),
        ("lr in (1 2)", r"expected ',' or '\)'"),
        ("lr in (batch_size)", r"expected a literal value in the 'in' list"),
        ("1 in (1)", r"expected a column before 'in'"),
        ("and == 1", r"expected a column, number"),
        ("status == 'escaped", r"unexpected character \"'\""),
        ("speed > 1", r"unknown column 'speed' \(text values need quotes\); columns: trial_id"),
        ("status == escaped", r"unknown column 'escaped'"),
    ],
)
def test_a_malformed_filter_is_one_line_naming_the_expression(
    table: pd.DataFrame, expr: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        filter_frame(table, expr)
    assert str(info.value).startswith(f"where={expr!r} is not allowed: ")
    assert "\n" not in str(info.value)


def test_columns_are_selected_in_the_given_order(table: pd.DataFrame) -> None:
    assert list(select_columns(table, ["lr", "trial_id"]).columns) == ["lr", "trial_id"]
    assert select_columns(table, None) is table


def test_an_unknown_column_is_refused(table: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match=r"^columns='speed' is not allowed: must be columns"):
        select_columns(table, ["lr", "speed"])
