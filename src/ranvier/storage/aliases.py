"""Room aliases this server answers for: ``#name:ours`` to a room ID.

Only local aliases live here (those whose server part is this server's
name); other servers' aliases are asked of them each time. The alias is
the primary key, so two requests for one alias cannot both win: the
second insert finds the row and reports it taken.

Each creation draws a ``write_id`` of its own and stores it with the row.
Replication may run a worker's write twice (see docs/decisions.md); the
repeat finds a row with its own ``write_id`` and succeeds again, while a
second request for the alias, even the same user's for the same room in
the same millisecond, draws another and is refused.
"""

from __future__ import annotations

import functools
import secrets
import sqlite3

from .readers import ReaderPool
from .write_backend import WriteBackend, registered_write

__all__ = ["AliasStorage"]


class AliasStorage:
    """The ``room_aliases`` table: alias, room, who made it and when."""

    def __init__(self, actor: WriteBackend, readers: ReaderPool) -> None:
        self._actor = actor
        self._readers = readers

    async def create_alias(self, alias: str, room_id: str, creator: str, created_ts: int) -> bool:
        """Point ``alias`` at ``room_id``; False, changing nothing, if it is taken."""
        return await self._actor.submit(
            functools.partial(
                _insert_alias,
                alias=alias,
                room_id=room_id,
                creator=creator,
                created_ts=created_ts,
                write_id=secrets.token_hex(8),
            )
        )

    async def get_alias(self, alias: str) -> tuple[str, str] | None:
        """``(room_id, creator)`` of ``alias``; None when it is not known."""

        def select(conn: sqlite3.Connection) -> tuple[str, str] | None:
            row = conn.execute(
                "SELECT room_id, creator FROM room_aliases WHERE alias = ?", (alias,)
            ).fetchone()
            return None if row is None else (str(row[0]), str(row[1]))

        return await self._readers.read(select)

    async def delete_alias(self, alias: str) -> bool:
        """Forget ``alias``; False if it was not known."""
        return await self._actor.submit(functools.partial(_delete_alias, alias=alias))

    async def get_room_aliases(self, room_id: str) -> list[str]:
        """The aliases pointing at ``room_id``, oldest first."""

        def select(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT alias FROM room_aliases WHERE room_id = ? ORDER BY created_ts, alias",
                (room_id,),
            ).fetchall()
            return [str(row[0]) for row in rows]

        return await self._readers.read(select)


@registered_write
def _insert_alias(
    conn: sqlite3.Connection,
    *,
    alias: str,
    room_id: str,
    creator: str,
    created_ts: int,
    write_id: str,
) -> bool:
    cursor = conn.execute(
        "INSERT OR IGNORE INTO room_aliases (alias, room_id, creator, created_ts, write_id)"
        " VALUES (?, ?, ?, ?, ?)",
        (alias, room_id, creator, created_ts, write_id),
    )
    if cursor.rowcount == 1:
        return True
    # A row with this write's own ID is this write repeated, not a second
    # request for the alias.
    stored = conn.execute("SELECT write_id FROM room_aliases WHERE alias = ?", (alias,)).fetchone()
    return stored is not None and stored[0] == write_id


@registered_write
def _delete_alias(conn: sqlite3.Connection, *, alias: str) -> bool:
    return conn.execute("DELETE FROM room_aliases WHERE alias = ?", (alias,)).rowcount == 1
