"""A room's events by ``origin_server_ts``, for ``/timestamp_to_event``.

The events looked at are those of the room's timeline here: in its DAG
(not outliers), neither rejected nor soft failed. Schema 20's partial index
``events_room_timestamp`` holds exactly those, by ``(room_id,
origin_server_ts)`` and then stream ordering (the rowid every index entry
ends with), so the nearest event either side of a time is one index seek,
however long the room, and ties at one timestamp come out in stream order.

An event sits next to a gap in the history here when one of its prev
events is not in the DAG here (not stored, or only as an outlier): the
room's history before it is on other servers; or when no event of the DAG
here follows it and it is not one of the room's tips (its forward
extremities): an event fetched alone from the room's older history, whose
successors are elsewhere. The tips are the live edge of the room, which
other servers' new events reach by being sent here.
"""

from __future__ import annotations

import functools
import sqlite3

from .readers import ReaderPool
from .records import STORED_EVENT_COLUMNS, StoredEvent, stored_event_from_row

__all__ = ["TimestampReads", "nearest_events"]

_COLUMNS = ", ".join(STORED_EVENT_COLUMNS)
#: The condition of the partial index (schema 20), repeated word for word
#: so that SQLite sees the reads may use it.
_TIMELINE = "outlier = 0 AND soft_failed = 0 AND rejected_reason IS NULL"


def nearest_events(
    conn: sqlite3.Connection,
    room_id: str,
    ts: int,
    *,
    backwards: bool,
    upto: int,
    limit: int,
) -> list[StoredEvent]:
    """Up to ``limit`` timeline events of the room at ``ts`` or before it
    (``backwards``) or at it or after it, nearest first, among those at or
    below the stream position ``upto``. Of events at one timestamp, the
    last written comes first backwards and the first written forwards.
    """
    if backwards:
        where, order = "origin_server_ts <= ?2", "origin_server_ts DESC, stream_ordering DESC"
    else:
        where, order = "origin_server_ts >= ?2", "origin_server_ts ASC, stream_ordering ASC"
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM events INDEXED BY events_room_timestamp"
        f" WHERE room_id = ?1 AND {where} AND {_TIMELINE} AND stream_ordering <= ?3"
        f" ORDER BY {order} LIMIT ?4",
        (room_id, ts, upto, limit),
    ).fetchall()
    return [stored_event_from_row(row) for row in rows]


def _next_to_gap(conn: sqlite3.Connection, event: StoredEvent) -> bool:
    backward = conn.execute(
        "SELECT 1 FROM event_prev_edges AS edge"
        " LEFT JOIN events AS prev ON prev.event_id = edge.prev_event_id"
        " WHERE edge.event_ordering = ? AND (prev.event_id IS NULL OR prev.outlier = 1)"
        " LIMIT 1",
        (event.stream_ordering,),
    ).fetchone()
    if backward is not None:
        return True
    child = conn.execute(
        "SELECT 1 FROM event_prev_edges AS edge"
        " JOIN events AS child ON child.stream_ordering = edge.event_ordering"
        " WHERE edge.prev_ordering = ? AND child.outlier = 0 LIMIT 1",
        (event.stream_ordering,),
    ).fetchone()
    if child is not None:
        return False
    tip = conn.execute(
        "SELECT 1 FROM forward_extremities WHERE room_id = ? AND event_id = ?",
        (event.room_id, event.event_id),
    ).fetchone()
    return tip is None


class TimestampReads:
    """The reads of ``/timestamp_to_event``, on the reader pool."""

    def __init__(self, readers: ReaderPool) -> None:
        self._readers = readers

    async def nearest_events(
        self, room_id: str, ts: int, *, backwards: bool, upto: int, limit: int
    ) -> list[StoredEvent]:
        """See :func:`nearest_events`."""
        return await self._readers.read(
            functools.partial(
                nearest_events,
                room_id=room_id,
                ts=ts,
                backwards=backwards,
                upto=upto,
                limit=limit,
            )
        )

    async def next_to_gap(self, event: StoredEvent) -> bool:
        """Whether ``event`` sits next to a gap in the room's DAG here (see
        the module's notes).
        """
        return await self._readers.read(functools.partial(_next_to_gap, event=event))
