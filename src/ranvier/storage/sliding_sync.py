"""Sliding sync connections: what each connection has sent of each room.

Tables (the schema's ``_sliding_sync`` migration)
-------------------------------------------------

``sliding_sync_connections`` holds one row per ``(user, device, conn_id)``;
``sliding_sync_positions`` the ``pos`` tokens handed out on a connection,
each with the stream token its response covered; ``sliding_sync_rooms`` per
room of a connection and position, the events position the room was sent
up to at that position and the room config it was sent with.

Invariants
----------

* **A position's room state is the newest row at or below it.** A response
  writes rows only for the rooms it sent; what the connection holds of a
  room at ``pos`` is its row of the greatest position not above ``pos``.
* **Advancing from ``pos`` forgets what came after it and before it.** The
  client names ``pos`` only once it has the response that made ``pos``, and
  never a position older than its latest: positions after ``pos`` were
  never received (a retried request) and are dropped with their rows;
  positions before it are dropped and their rooms' rows folded into
  ``pos``, so a connection keeps at most its two latest positions and a row
  per room sent.
* **A write survives being run twice** (a worker's write repeated after the
  main process restarted): each carries a nonce its position is stored
  under, and a second run finds the position and returns it.
* **A device keeps at most** :data:`MAX_CONNECTIONS_PER_DEVICE` connections;
  opening one more drops the one used longest ago.
"""

from __future__ import annotations

import functools
import sqlite3
from dataclasses import dataclass
from typing import Final

from .readers import ReaderPool
from .sliding_sync_reads import SlidingSyncReads
from .write_backend import WriteBackend, registered_write

__all__ = [
    "MAX_CONNECTIONS_PER_DEVICE",
    "ConnectionState",
    "RoomSent",
    "SlidingSyncStorage",
]

#: Connections one device may hold; an older one is dropped past this.
MAX_CONNECTIONS_PER_DEVICE: Final = 10

#: ``(room ID, events position it was sent up to, its room config)``.
RoomSent = tuple[str, int, str]


@dataclass(frozen=True, slots=True)
class ConnectionState:
    """What a connection held at one of its positions."""

    conn_key: int
    pos: int
    #: The stream token the response that made ``pos`` covered.
    token: str
    #: When ``pos`` was made, in milliseconds since the epoch.
    made_ms: int
    #: Per room sent on the connection: ``(events position, room config)``.
    rooms: dict[str, tuple[int, str]]


def _drop_connection(conn: sqlite3.Connection, conn_key: int) -> None:
    for table in ("sliding_sync_rooms", "sliding_sync_positions", "sliding_sync_connections"):
        conn.execute(f"DELETE FROM {table} WHERE conn_key = ?", (conn_key,))


def _insert_position(
    conn: sqlite3.Connection,
    conn_key: int,
    nonce: str,
    token: str,
    now_ms: int,
    rooms: tuple[RoomSent, ...],
) -> int:
    cursor = conn.execute(
        "INSERT INTO sliding_sync_positions (conn_key, nonce, token, made_ms) VALUES (?, ?, ?, ?)",
        (conn_key, nonce, token, now_ms),
    )
    pos = int(cursor.lastrowid or 0)
    conn.executemany(
        "INSERT INTO sliding_sync_rooms (conn_key, room_id, pos, sent_upto, config)"
        " VALUES (?, ?, ?, ?, ?)",
        [(conn_key, room_id, pos, upto, config) for room_id, upto, config in rooms],
    )
    return pos


def _repeated(conn: sqlite3.Connection, nonce: str) -> int | None:
    row = conn.execute(
        "SELECT pos FROM sliding_sync_positions WHERE nonce = ?", (nonce,)
    ).fetchone()
    return None if row is None else int(row[0])


@registered_write
def open_connection(
    conn: sqlite3.Connection,
    *,
    user_id: str,
    device_id: str,
    conn_id: str,
    nonce: str,
    token: str,
    now_ms: int,
    rooms: tuple[RoomSent, ...],
) -> int:
    """Start the connection afresh (dropping any of the same ``conn_id``)
    with its first position; return that position.
    """
    repeated = _repeated(conn, nonce)
    if repeated is not None:
        return repeated
    old = conn.execute(
        "SELECT conn_key FROM sliding_sync_connections"
        " WHERE user_id = ? AND device_id = ? AND conn_id = ?",
        (user_id, device_id, conn_id),
    ).fetchone()
    if old is not None:
        _drop_connection(conn, int(old[0]))
    others = conn.execute(
        """
        SELECT c.conn_key FROM sliding_sync_connections AS c
        LEFT JOIN sliding_sync_positions AS p ON p.conn_key = c.conn_key
        WHERE c.user_id = ? AND c.device_id = ?
        GROUP BY c.conn_key ORDER BY COALESCE(MAX(p.made_ms), 0) DESC
        """,
        (user_id, device_id),
    ).fetchall()
    for (stale,) in others[MAX_CONNECTIONS_PER_DEVICE - 1 :]:
        _drop_connection(conn, int(stale))
    cursor = conn.execute(
        "INSERT INTO sliding_sync_connections (user_id, device_id, conn_id) VALUES (?, ?, ?)",
        (user_id, device_id, conn_id),
    )
    return _insert_position(conn, int(cursor.lastrowid or 0), nonce, token, now_ms, rooms)


@registered_write
def advance_connection(
    conn: sqlite3.Connection,
    *,
    conn_key: int,
    from_pos: int,
    nonce: str,
    token: str,
    now_ms: int,
    rooms: tuple[RoomSent, ...],
) -> int | None:
    """A new position after ``from_pos``, with the rooms its response sent;
    None when ``from_pos`` is gone (the connection was started again
    meanwhile), which the client hears as an unknown position.
    """
    repeated = _repeated(conn, nonce)
    if repeated is not None:
        return repeated
    known = conn.execute(
        "SELECT 1 FROM sliding_sync_positions WHERE pos = ? AND conn_key = ?",
        (from_pos, conn_key),
    ).fetchone()
    if known is None:
        return None
    # Responses after from_pos never reached the client.
    conn.execute(
        "DELETE FROM sliding_sync_rooms WHERE conn_key = ? AND pos > ?", (conn_key, from_pos)
    )
    conn.execute(
        "DELETE FROM sliding_sync_positions WHERE conn_key = ? AND pos > ?", (conn_key, from_pos)
    )
    # Rows older than from_pos that a newer one (not above it) supersedes.
    conn.execute(
        """
        DELETE FROM sliding_sync_rooms AS r
        WHERE r.conn_key = ? AND r.pos < ? AND EXISTS (
            SELECT 1 FROM sliding_sync_rooms AS n
            WHERE n.conn_key = r.conn_key AND n.room_id = r.room_id
              AND n.pos > r.pos AND n.pos <= ?)
        """,
        (conn_key, from_pos, from_pos),
    )
    conn.execute(
        "DELETE FROM sliding_sync_positions WHERE conn_key = ? AND pos < ?", (conn_key, from_pos)
    )
    return _insert_position(conn, conn_key, nonce, token, now_ms, rooms)


def connection_at(
    conn: sqlite3.Connection, *, user_id: str, device_id: str, conn_id: str, pos: int
) -> ConnectionState | None:
    """The connection's state at ``pos``; None when ``pos`` is not a
    position of this user's, device's and ``conn_id``'s connection.
    """
    row = conn.execute(
        """
        SELECT c.conn_key, p.token, p.made_ms FROM sliding_sync_positions AS p
        JOIN sliding_sync_connections AS c ON c.conn_key = p.conn_key
        WHERE p.pos = ? AND c.user_id = ? AND c.device_id = ? AND c.conn_id = ?
        """,
        (pos, user_id, device_id, conn_id),
    ).fetchone()
    if row is None:
        return None
    conn_key = int(row[0])
    rooms: dict[str, tuple[int, str]] = {}
    # SQLite takes the bare columns from the row holding the MAX.
    for room_id, _, sent_upto, config in conn.execute(
        "SELECT room_id, MAX(pos), sent_upto, config FROM sliding_sync_rooms"
        " WHERE conn_key = ? AND pos <= ? GROUP BY room_id",
        (conn_key, pos),
    ):
        rooms[room_id] = (int(sent_upto), str(config))
    return ConnectionState(conn_key, pos, str(row[1]), int(row[2]), rooms)


class SlidingSyncStorage(SlidingSyncReads):
    """Sliding sync connections' positions and what they sent, and the
    room-list reads (:mod:`ranvier.storage.sliding_sync_reads`).
    """

    def __init__(self, actor: WriteBackend, readers: ReaderPool) -> None:
        super().__init__(readers)
        self._actor = actor

    async def connection_at(
        self, user_id: str, device_id: str, conn_id: str, pos: int
    ) -> ConnectionState | None:
        return await self._readers.read(
            functools.partial(
                connection_at, user_id=user_id, device_id=device_id, conn_id=conn_id, pos=pos
            )
        )

    async def open_connection(
        self,
        user_id: str,
        device_id: str,
        conn_id: str,
        *,
        nonce: str,
        token: str,
        now_ms: int,
        rooms: tuple[RoomSent, ...],
    ) -> int:
        return await self._actor.submit(
            functools.partial(
                open_connection,
                user_id=user_id,
                device_id=device_id,
                conn_id=conn_id,
                nonce=nonce,
                token=token,
                now_ms=now_ms,
                rooms=rooms,
            )
        )

    async def advance_connection(
        self,
        conn_key: int,
        from_pos: int,
        *,
        nonce: str,
        token: str,
        now_ms: int,
        rooms: tuple[RoomSent, ...],
    ) -> int | None:
        return await self._actor.submit(
            functools.partial(
                advance_connection,
                conn_key=conn_key,
                from_pos=from_pos,
                nonce=nonce,
                token=token,
                now_ms=now_ms,
                rooms=rooms,
            )
        )
