"""What a room upgrade moves in this server's directory: the local aliases
and the room's place in the published room list pass from the old room to
its replacement in one commit, so an alias never points nowhere and the
list never shows both rooms or neither.
"""

from __future__ import annotations

import functools
import sqlite3

from .write_backend import WriteBackend, registered_write

__all__ = ["RoomUpgradeStorage"]


class RoomUpgradeStorage:
    """Moves directory entries from an upgraded room to its replacement."""

    def __init__(self, actor: WriteBackend) -> None:
        self._actor = actor

    async def move_directory_entries(self, old_room_id: str, new_room_id: str) -> list[str]:
        """Point every alias of ``old_room_id`` at ``new_room_id`` and list the
        new room in the old one's place if the old one was listed; return the
        aliases moved.
        """
        return await self._actor.submit(
            functools.partial(
                _move_directory_entries, old_room_id=old_room_id, new_room_id=new_room_id
            )
        )


@registered_write
def _move_directory_entries(
    conn: sqlite3.Connection, *, old_room_id: str, new_room_id: str
) -> list[str]:
    moved = [
        str(row[0])
        for row in conn.execute(
            "SELECT alias FROM room_aliases WHERE room_id = ? ORDER BY created_ts, alias",
            (old_room_id,),
        )
    ]
    conn.execute(
        "UPDATE room_aliases SET room_id = ? WHERE room_id = ?", (new_room_id, old_room_id)
    )
    listed = conn.execute(
        "SELECT added_ts FROM room_list WHERE room_id = ?", (old_room_id,)
    ).fetchone()
    if listed is not None:
        conn.execute("DELETE FROM room_list WHERE room_id = ?", (old_room_id,))
        conn.execute(
            "INSERT INTO room_list (room_id, added_ts) VALUES (?, ?)"
            " ON CONFLICT (room_id) DO NOTHING",
            (new_room_id, listed[0]),
        )
    return moved
