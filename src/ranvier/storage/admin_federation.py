"""What the federation admin API reads of outgoing federation, and its
writes: a destination's backoff cleared, and the time it last took a
transaction.

A destination is known here if it has retry state (``destinations``: it
is failing), rooms noted for it (``destination_rooms``: events were meant
for it), a delivery noted (``destination_deliveries``: it took a
transaction, perhaps of EDUs alone), EDUs waiting in the outbox
(``to_device_outbox``) or leaves of a purged room waiting for it
(``pdu_outbox``). The first table loses a destination's row when it
takes a transaction again, so a destination that is well shows no retry
state: ``retry_last_ts`` and ``retry_interval`` 0, ``failure_ts`` None. The
newest stream ordering a destination acknowledged, over its rooms, stands
for the last PDU sent to it (transactions it refused outright count as
acknowledged, see :mod:`ranvier.federation.sender.queue`).
``last_success_ts`` is when it last took a transaction, noted by the
sender at most once a minute per destination and at once on its coming
back from a backoff (:mod:`ranvier.federation.sender.queue`); None if it
has taken none since this was first kept.
"""

from __future__ import annotations

import functools
import sqlite3
from dataclasses import dataclass
from typing import Final

from .readers import ReaderPool
from .write_backend import WriteBackend, registered_write
from .write_marks import writes_no_room

__all__ = [
    "DESTINATION_ORDERS",
    "DestinationQuery",
    "DestinationRoomRow",
    "DestinationRow",
    "FederationAdminStorage",
    "clear_destination_backoff",
    "destination",
    "destination_rooms",
    "list_destinations",
    "note_delivery",
]

#: The orders a destination list may be sorted in, by the column each reads.
DESTINATION_ORDERS: Final = {
    "destination": "destination",
    "retry_last_ts": "retry_last_ts",
    "retry_interval": "retry_interval",
    "failure_ts": "failure_ts",
    "last_successful_stream_ordering": "last_sent",
    "last_success_ts": "last_success_ts",
}

# Every known destination with its retry state and the newest stream
# ordering it acknowledged; the clauses after it filter, sort and page.
_DESTINATIONS: Final = """
    WITH known (destination) AS (
        SELECT destination FROM destinations
        UNION SELECT destination FROM destination_rooms
        UNION SELECT destination FROM destination_deliveries
        UNION SELECT destination FROM to_device_outbox
        UNION SELECT destination FROM pdu_outbox
    )
    SELECT known.destination,
           failing.failure_ts,
           COALESCE(failing.retry_last_ts, 0) AS retry_last_ts,
           COALESCE(failing.retry_interval_ms, 0) AS retry_interval,
           (SELECT MAX(sent_stream_ordering) FROM destination_rooms AS rooms
            WHERE rooms.destination = known.destination) AS last_sent,
           delivered.last_success_ts
    FROM known LEFT JOIN destinations AS failing USING (destination)
    LEFT JOIN destination_deliveries AS delivered USING (destination)
"""


@dataclass(frozen=True, slots=True)
class DestinationRow:
    """One destination's retry state, Synapse's field names aside."""

    destination: str
    failure_ts: int | None
    retry_last_ts: int
    retry_interval_ms: int
    last_sent_stream_ordering: int | None
    last_success_ts: int | None = None


@dataclass(frozen=True, slots=True)
class DestinationRoomRow:
    """A room events were meant for a destination in, and how far."""

    room_id: str
    stream_ordering: int
    sent_stream_ordering: int | None


@dataclass(frozen=True, slots=True)
class DestinationQuery:
    """A page of the destination list; ``order_by`` a key of
    :data:`DESTINATION_ORDERS`, ``name_contains`` matched without regard to
    ASCII case."""

    offset: int = 0
    limit: int = 100
    order_by: str = "destination"
    backwards: bool = False
    name_contains: str | None = None


def _row(found: tuple[str, int | None, int, int, int | None, int | None]) -> DestinationRow:
    return DestinationRow(
        destination=found[0],
        failure_ts=found[1],
        retry_last_ts=found[2],
        retry_interval_ms=found[3],
        last_sent_stream_ordering=found[4],
        last_success_ts=found[5],
    )


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def list_destinations(
    conn: sqlite3.Connection, *, query: DestinationQuery
) -> tuple[list[DestinationRow], int]:
    """One page of the known destinations, and how many match in all."""
    column = DESTINATION_ORDERS[query.order_by]
    direction = "DESC" if query.backwards else "ASC"
    where, params = "", []
    if query.name_contains is not None:
        where = " WHERE destination LIKE ? ESCAPE '\\'"
        params.append(_like_pattern(query.name_contains))
    listed = f"SELECT * FROM ({_DESTINATIONS}){where}"
    total = conn.execute(f"SELECT COUNT(*) FROM ({listed})", params).fetchone()[0]
    rows = conn.execute(
        f"{listed} ORDER BY {column} {direction}, destination {direction} LIMIT ? OFFSET ?",
        (*params, query.limit, query.offset),
    ).fetchall()
    return [_row(found) for found in rows], total


def destination(conn: sqlite3.Connection, *, name: str) -> DestinationRow | None:
    """``name``'s retry state; None if it is not a known destination."""
    found = conn.execute(
        f"SELECT * FROM ({_DESTINATIONS}) WHERE destination = ?", (name,)
    ).fetchone()
    return None if found is None else _row(found)


def destination_rooms(
    conn: sqlite3.Connection, *, name: str, offset: int, limit: int, backwards: bool
) -> tuple[list[DestinationRoomRow], int]:
    """One page of the rooms noted for ``name``, by room ID, and how many
    there are."""
    direction = "DESC" if backwards else "ASC"
    total = conn.execute(
        "SELECT COUNT(*) FROM destination_rooms WHERE destination = ?", (name,)
    ).fetchone()[0]
    rows = conn.execute(
        "SELECT room_id, stream_ordering, sent_stream_ordering FROM destination_rooms"
        f" WHERE destination = ? ORDER BY room_id {direction} LIMIT ? OFFSET ?",
        (name, limit, offset),
    ).fetchall()
    return [DestinationRoomRow(*found) for found in rows], total


@registered_write
def clear_destination_backoff(conn: sqlite3.Connection, *, name: str) -> None:
    """Forget ``name``'s retry state, as a delivery would; the same when
    run again."""
    conn.execute("DELETE FROM destinations WHERE destination = ?", (name,))


@registered_write
@writes_no_room
def note_delivery(conn: sqlite3.Connection, *, name: str, ts_ms: int) -> None:
    """``name`` took a transaction at ``ts_ms``; an older time than the one
    noted changes nothing (two processes' clocks, a late write)."""
    conn.execute(
        "INSERT INTO destination_deliveries (destination, last_success_ts) VALUES (?, ?)"
        " ON CONFLICT (destination) DO UPDATE SET last_success_ts ="
        " MAX(last_success_ts, excluded.last_success_ts)",
        (name, ts_ms),
    )


class FederationAdminStorage:
    """The reads above on the reader pool, the writes through the actor."""

    def __init__(self, writer: WriteBackend, readers: ReaderPool) -> None:
        self._writer = writer
        self._readers = readers

    async def list_destinations(self, query: DestinationQuery) -> tuple[list[DestinationRow], int]:
        return await self._readers.read(functools.partial(list_destinations, query=query))

    async def destination(self, name: str) -> DestinationRow | None:
        return await self._readers.read(functools.partial(destination, name=name))

    async def destination_rooms(
        self, name: str, *, offset: int, limit: int, backwards: bool
    ) -> tuple[list[DestinationRoomRow], int]:
        return await self._readers.read(
            functools.partial(
                destination_rooms, name=name, offset=offset, limit=limit, backwards=backwards
            )
        )

    async def clear_destination_backoff(self, name: str) -> None:
        await self._writer.submit(functools.partial(clear_destination_backoff, name=name))

    async def note_delivery(self, destination: str, ts_ms: int) -> None:
        await self._writer.submit(functools.partial(note_delivery, name=destination, ts_ms=ts_ms))
