"""Fixed times for tests.

Matrix timestamps are wall-clock milliseconds, which a test cannot hold
still. Helpers here start from :data:`NOW_MS`, a fixed moment, so that what
a test builds (events, key validity, retry times) is the same on every run
and a test can state the times it expects::

    from ranvier.testing import NOW_MS, ticking_clock

    creator = EventCreator(..., clock=ticking_clock(NOW_MS))
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Final

__all__ = ["NOW_MS", "ticking_clock"]

#: A fixed "now" (November 2023) in milliseconds since the Unix epoch.
NOW_MS: Final = 1_700_000_000_000


def ticking_clock(start: int = NOW_MS) -> Callable[[], int]:
    """A millisecond clock that reads ``start``, then one more at each reading.

    Every timestamp it hands out is distinct, so events it times never tie,
    and the order of readings is the order of the times.
    """
    ticks = itertools.count(start)
    return lambda: next(ticks)
