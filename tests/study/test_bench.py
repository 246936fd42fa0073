"""The overhead benchmark's accounting of idle slots at the end of a study."""

from __future__ import annotations

import pandas as pd
import pytest

from study.bench import tail_idle_s


def _trials(*intervals: tuple[float, float]) -> pd.DataFrame:
    return pd.DataFrame({"start": [a for a, _ in intervals], "end": [b for _, b in intervals]})


@pytest.mark.parametrize(
    ("intervals", "slots", "idle"),
    [
        # two slots: the last trial starts at 10 and runs alone from 12 to 20
        (((0, 10), (0, 12), (10, 20)), 2, 8.0),
        # both slots busy to the end: nothing idle
        (((0, 10), (0, 10), (10, 20), (10, 20)), 2, 0.0),
        # three slots, last starts at 5: three run to 8, two to 9, one to 12
        (((0, 5), (5, 8), (5, 9), (0, 12)), 3, 0 * 3 + 1 * 1 + 2 * 3),
        # before the last start an idle slot is overhead (worker start), not counted
        (((0, 4), (6, 10), (0, 10)), 2, 0.0),
    ],
)
def test_idle_slots_are_counted_only_once_nothing_is_left_to_start(
    intervals: tuple[tuple[float, float], ...], slots: int, idle: float
) -> None:
    assert tail_idle_s(_trials(*intervals), slots) == pytest.approx(idle)


def test_an_empty_table_has_no_idle_tail() -> None:
    assert tail_idle_s(_trials(), 2) == 0.0
