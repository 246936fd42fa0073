"""Plain-text tables for the terminal: missing values blank, numbers short."""

from __future__ import annotations

from typing import Any

import pandas as pd


def text_table(frame: pd.DataFrame, digits: int = 4, missing: str = "") -> str:
    """Renders a table with aligned columns.

    Args:
        frame: the table.
        digits: significant digits of floats.
        missing: what a missing value (None, NaN, NA) shows as.

    Returns:
        The table, header first, without the index.
    """
    cells = frame.astype(object).map(lambda v: _cell(v, digits, missing))
    return cells.to_string(index=False)


def _cell(value: Any, digits: int, missing: str) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return missing
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)
