"""History from before this server's copy of a room began: events fetched
with ``/backfill`` and the reads that say where to fetch from.

Backfilled events are written as every event in the room's DAG is (state
groups, edges, redaction rows, see :func:`ranvier.storage.writes.persist_events`)
with two differences, both in the same transaction:

* **They are placed before everything the room has.** Their stream
  orderings are negative, below every event written otherwise, so no
  stream a sync or a sender follows ever sees them as new (those look
  above a position), and ordered among themselves by depth. Outliers
  written with them (fetched to fill a gap before them) are placed there
  too, and so is an outlier stored earlier (the prev event of a join,
  fetched with it) that takes its place in the DAG here: left where it was
  written, above the join it came before, a room's timeline would show it
  after the join. Moving it off the top of the stream would let the next
  event take an ordering a sync may hold, so the top is kept first
  (:func:`~ranvier.storage.id_floors.keep_floors`). Ingestion
  writes them one at a time, oldest first, each batch older than the one
  before, so the order they arrive in is not the room's. Depth is: an
  event's depth is above its prev events'. Each depth has a window of
  :data:`_DEPTH_SLOTS` orderings, shared by all rooms, filled in the order
  events arrive; depths past :data:`_DEPTHS` share the last window.
* **They change neither the forward extremities nor current state.** They
  lie behind the events held already, which stay the room's tips and
  decide its state; whatever the ordinary rules moved is put back.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Mapping, Sequence

from ranvier.errors import MatrixError

from . import writes
from .id_floors import events_top, keep_floors
from .readers import ReaderPool
from .reads import get_current_state_group
from .records import EventToPersist
from .write_backend import WriteBackend, registered_write

__all__ = ["BackfillStorage"]

#: The oldest events of a room whose prev events are looked at for a gap.
_OLDEST_LOOKED_AT = 200
#: Backfilled events' stream orderings: ``_BASE + depth * _DEPTH_SLOTS``
#: onwards, below zero for every depth under ``_DEPTHS``.
_DEPTH_SLOTS = 1 << 20
_DEPTHS = 1 << 33
_BASE = -_DEPTHS * _DEPTH_SLOTS


class BackfillStorage:
    """Writes of backfilled events, and where a room's history here stops."""

    def __init__(self, actor: WriteBackend, readers: ReaderPool) -> None:
        self._actor = actor
        self._readers = readers
        #: Events handed here to write, for metrics.
        self.events_persisted = 0

    async def persist_backfilled_events(
        self, events: Sequence[EventToPersist]
    ) -> Mapping[str, int]:
        """Write events fetched from before the room's history here, oldest
        first; return their stream orderings (negative for those placed now).
        """
        orderings = await self._actor.submit(
            functools.partial(_persist_backfilled_events, events=tuple(events))
        )
        self.events_persisted += len(events)
        return orderings

    async def has_room_start(self, room_id: str) -> bool:
        """Whether the room's ``m.room.create`` event is in its DAG here: its
        history here then goes back to the start.
        """

        def select(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM events WHERE room_id = ? AND type = 'm.room.create'"
                " AND state_key = '' AND outlier = 0 LIMIT 1",
                (room_id,),
            ).fetchone()
            return row is not None

        return await self._readers.read(select)

    async def backward_extremities(self, room_id: str, limit: int) -> list[str]:
        """Events the room's oldest events here cite as prev events but this
        server does not hold in the DAG, those cited by the shallowest
        events first: where ``/backfill`` picks up.
        """

        def select(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                """
                WITH oldest AS (
                    SELECT event_id, depth FROM events
                    WHERE room_id = ?1 AND outlier = 0
                    ORDER BY stream_ordering LIMIT ?2
                )
                SELECT edge.prev_event_id FROM oldest
                JOIN event_edges AS edge ON edge.event_id = oldest.event_id
                LEFT JOIN events AS prev ON prev.event_id = edge.prev_event_id
                WHERE prev.event_id IS NULL OR prev.outlier = 1
                GROUP BY edge.prev_event_id
                ORDER BY MIN(oldest.depth), edge.prev_event_id
                LIMIT ?3
                """,
                (room_id, _OLDEST_LOOKED_AT, limit),
            ).fetchall()
            return [str(row[0]) for row in rows]

        return await self._readers.read(select)


@registered_write
def _persist_backfilled_events(
    conn: sqlite3.Connection, events: Sequence[EventToPersist]
) -> dict[str, int]:
    rooms = sorted({event.room_id for event in events})
    extremities = {room_id: _extremities(conn, room_id) for room_id in rooms}
    current = {room_id: get_current_state_group(conn, room_id) for room_id in rooms}
    top = events_top(conn)
    stored_outliers = _stored_outliers(conn, [event.event_id for event in events])
    taking_place = {e.event_id for e in events if e.event_id in stored_outliers and not e.outlier}
    if taking_place:
        # Their orderings (an outlier's, in no timeline) are freed below;
        # the top is kept first, so that freeing it cannot let the next
        # event reuse an ordering a sync token may hold.
        keep_floors(conn)
    orderings = writes.persist_events(conn, events)
    # Placed now: written for the first time (outliers too: those fetched to
    # fill a gap before backfilled events), handed orderings above the old
    # top that nobody has seen; and outliers stored before that take their
    # place in the DAG now.
    placed = [
        (event.event_id, event.depth)
        for event in events
        if orderings[event.event_id] > top or event.event_id in taking_place
    ]
    for event_id, depth in placed:
        orderings[event_id] = _place(conn, event_id, depth)
    for room_id in rooms:
        after = _extremities(conn, room_id)
        conn.executemany(
            "DELETE FROM forward_extremities WHERE room_id = ? AND event_id = ?",
            [(room_id, event_id) for event_id in sorted(after - extremities[room_id])],
        )
        conn.executemany(
            "INSERT INTO forward_extremities (room_id, event_id) VALUES (?, ?)",
            [(room_id, event_id) for event_id in sorted(extremities[room_id] - after)],
        )
        group = current[room_id]
        if group is not None and get_current_state_group(conn, room_id) != group:
            writes.set_current_state(conn, room_id, group)
    return orderings


def _place(conn: sqlite3.Connection, event_id: str, depth: int) -> int:
    """Give ``event_id`` the next free ordering of its depth's window."""
    low = _BASE + min(max(depth, 0), _DEPTHS - 1) * _DEPTH_SLOTS
    (taken,) = conn.execute(
        "SELECT MAX(stream_ordering) FROM events WHERE stream_ordering BETWEEN ? AND ?",
        (low, low + _DEPTH_SLOTS - 1),
    ).fetchone()
    ordering = low if taken is None else int(taken) + 1
    if ordering >= low + _DEPTH_SLOTS:
        raise MatrixError(
            f"no stream ordering is left for {event_id} at depth {depth}",
            errcode="M_UNKNOWN",
            http_status=500,
        )
    conn.execute("UPDATE events SET stream_ordering = ? WHERE event_id = ?", (ordering, event_id))
    return ordering


def _stored_outliers(conn: sqlite3.Connection, event_ids: Sequence[str]) -> set[str]:
    """Those of ``event_ids`` stored already as outliers."""
    found: set[str] = set()
    for event_id in dict.fromkeys(event_ids):
        row = conn.execute("SELECT outlier FROM events WHERE event_id = ?", (event_id,)).fetchone()
        if row is not None and row[0]:
            found.add(event_id)
    return found


def _extremities(conn: sqlite3.Connection, room_id: str) -> set[str]:
    rows = conn.execute("SELECT event_id FROM forward_extremities WHERE room_id = ?", (room_id,))
    return {str(row[0]) for row in rows}
