"""The room event stream as followers read it: accepted timeline events in
stream order, from a position on.

The push sender, the application service sender and embedders following
the stream (:meth:`ranvier.server.HomeServer.event_stream`) each keep a
position of their own and read what lies after it, a page at a time.
Outliers, rejected and soft-failed events are not in any room's timeline,
so no follower sees them.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Collection

from .id_floors import events_top
from .readers import ReaderPool
from .records import STORED_EVENT_COLUMNS, ReplacedState, StoredEvent, stored_event_from_row
from .redactions import served
from .replaced_state import read_replaced_state

__all__ = ["EventStreamReads", "newest_stream_ordering", "timeline_events_after"]

_COLUMNS = ", ".join(STORED_EVENT_COLUMNS)


def timeline_events_after(
    conn: sqlite3.Connection, *, after: int, limit: int, as_served: bool = False
) -> list[StoredEvent]:
    """Accepted timeline events after stream ordering ``after``, oldest
    first, at most ``limit``; ``as_served``, with redactions applied.
    """
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM events WHERE stream_ordering > ? AND outlier = 0"
        " AND soft_failed = 0 AND rejected_reason IS NULL ORDER BY stream_ordering LIMIT ?",
        (after, limit),
    ).fetchall()
    events = [stored_event_from_row(row) for row in rows]
    return served(conn, events) if as_served else events


def newest_stream_ordering(conn: sqlite3.Connection) -> int:
    """The stream ordering of the newest event stored (0 for none)."""
    return events_top(conn)


class EventStreamReads:
    """:func:`timeline_events_after` and :func:`newest_stream_ordering`
    through the reader pool.
    """

    def __init__(self, readers: ReaderPool) -> None:
        self._readers = readers

    async def timeline_events_after(
        self, after: int, *, limit: int, as_served: bool = False
    ) -> list[StoredEvent]:
        return await self._readers.read(
            functools.partial(timeline_events_after, after=after, limit=limit, as_served=as_served)
        )

    async def newest_stream_ordering(self) -> int:
        return await self._readers.read(newest_stream_ordering)

    async def get_replaced_state(self, event_ids: Collection[str]) -> dict[str, ReplacedState]:
        """What each state event of ``event_ids`` replaced, the replaced
        event as served (:mod:`ranvier.storage.replaced_state`)."""
        ids = frozenset(event_ids)
        return await self._readers.read(functools.partial(read_replaced_state, event_ids=ids))
