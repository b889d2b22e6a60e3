"""ticking_clock: distinct times, in the order read."""

from __future__ import annotations

from ranvier.testing import NOW_MS, ticking_clock


def test_each_reading_is_one_later() -> None:
    clock = ticking_clock()
    assert [clock(), clock(), clock()] == [NOW_MS, NOW_MS + 1, NOW_MS + 2]
    other = ticking_clock(5)
    assert (other(), clock()) == (5, NOW_MS + 3)
