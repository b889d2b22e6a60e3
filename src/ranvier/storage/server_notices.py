"""Each local user's server notices room (:mod:`ranvier.core.server_notices`).

Invariants
----------

* **One room per user.** A user's row names the room the next notice goes
  to; a new room replaces it (the user left the old one), so the table
  holds one row per user ever sent a notice, found by the user.
* **Writing the same room again changes nothing**, so a worker's write run
  again after the main process restarted answers as the first did.
"""

from __future__ import annotations

import functools
import sqlite3

from .readers import ReaderPool
from .write_backend import WriteBackend, registered_write

__all__ = ["ServerNoticeStorage"]


class ServerNoticeStorage:
    """Notice rooms over the storage actor (writes) and the reader pool (reads)."""

    def __init__(self, actor: WriteBackend, readers: ReaderPool) -> None:
        self._actor = actor
        self._readers = readers

    async def get_server_notice_room(self, user_id: str) -> str | None:
        """The room ``user_id``'s notices go to, None before the first."""
        return await self._readers.read(functools.partial(_notice_room, user_id=user_id))

    async def set_server_notice_room(self, user_id: str, room_id: str, created_ts: int) -> None:
        """Make ``room_id`` the room of ``user_id``'s notices from now on."""
        await self._actor.submit(
            functools.partial(
                _set_notice_room, user_id=user_id, room_id=room_id, created_ts=created_ts
            )
        )


def _notice_room(conn: sqlite3.Connection, *, user_id: str) -> str | None:
    row = conn.execute(
        "SELECT room_id FROM server_notice_rooms WHERE user_id = ?", (user_id,)
    ).fetchone()
    return None if row is None else str(row[0])


@registered_write
def _set_notice_room(
    conn: sqlite3.Connection, *, user_id: str, room_id: str, created_ts: int
) -> None:
    conn.execute(
        "INSERT INTO server_notice_rooms (user_id, room_id, created_ts) VALUES (?, ?, ?)"
        " ON CONFLICT (user_id) DO UPDATE SET room_id = excluded.room_id,"
        " created_ts = excluded.created_ts WHERE room_id != excluded.room_id",
        (user_id, room_id, created_ts),
    )
