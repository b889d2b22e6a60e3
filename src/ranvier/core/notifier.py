"""The stream notifier: the newest stream position, and waiting for a newer one.

A ``/sync`` long-poll with nothing to report waits here until something is
committed past the position it answered from, or its timeout ends. Storage
tells the notifier after every commit that adds timeline events or clears
a room's partial state, whichever path wrote (federation ingest, local
sends, joins, the un-partial-state task), so a waiter never misses a write
by having asked the wrong component.

Invariants
----------

* **Positions only grow.** :meth:`StreamNotifier.advance` keeps the larger
  of what it holds and what it is told, per stream, so writes reported out
  of order, or a report lost with a cancelled writer, never move it back;
  the next report covers the lost one.
* **No polling.** Waiters sleep on one :class:`trio.Event`, replaced each
  time the position moves: every waiter wakes, checks its own condition,
  and sleeps again on the new event if it is not met.
* **A lower bound.** The notifier starts at zero and learns positions from
  writes, so it may lag what storage holds until the first write after a
  start; a waiter compares against positions read from storage, which are
  never beyond what storage holds, and so is woken by that first write.
"""

from __future__ import annotations

from typing import NamedTuple

import trio

__all__ = ["StreamNotifier", "StreamPosition"]


class StreamPosition(NamedTuple):
    """A position in both streams a sync follows."""

    #: The newest event's stream ordering.
    events: int
    #: The newest position of the stream of rooms whose state became complete.
    un_partial: int

    def is_beyond(self, other: StreamPosition) -> bool:
        """Whether either stream is further on than in ``other``."""
        return self.events > other.events or self.un_partial > other.un_partial


class StreamNotifier:
    """The newest positions storage has reported, and a way to wait for more."""

    def __init__(self) -> None:
        self._position = StreamPosition(0, 0)
        self._advanced = trio.Event()

    @property
    def position(self) -> StreamPosition:
        return self._position

    def advance(self, events: int | None = None, un_partial: int | None = None) -> None:
        """Note positions a commit reached (None: that stream did not move);
        wake every waiter if either grew. Synchronous, so storage may call it
        from anywhere on the Trio thread.
        """
        current = self._position
        moved = StreamPosition(
            max(current.events, events or 0), max(current.un_partial, un_partial or 0)
        )
        if moved == current:
            return
        self._position = moved
        woken, self._advanced = self._advanced, trio.Event()
        woken.set()

    async def wait_beyond(self, position: StreamPosition) -> None:
        """Return once the position is beyond ``position`` in either stream;
        bound the wait with a cancel scope.
        """
        while not self._position.is_beyond(position):
            await self._advanced.wait()

    @property
    def waiting(self) -> int:
        """How many tasks wait right now; for tests and metrics."""
        return self._advanced.statistics().tasks_waiting
