"""What making guests leave rooms reads (:mod:`ranvier.core.guests`).

A room's ``m.room.guest_access`` that stops saying ``can_join`` sends its
local guests out. The task that does it reads here whether any such event
arrived since it last looked, and which local guests are still joined to
rooms that no longer let guests in.
"""

from __future__ import annotations

import functools
import sqlite3
from typing import Final

import msgspec

from .event_stream import newest_stream_ordering
from .readers import ReaderPool

__all__ = ["GuestStorage"]

_GUEST_ACCESS: Final = "m.room.guest_access"
_CAN_JOIN: Final = "can_join"


class GuestStorage:
    """Reads about guest accounts in rooms, through the reader pool."""

    def __init__(self, readers: ReaderPool) -> None:
        self._readers = readers

    async def newest_position(self) -> int:
        """The stream ordering of the newest event stored (0 for none)."""
        return await self._readers.read(newest_stream_ordering)

    async def guest_access_changed_after(self, after: int) -> tuple[bool, int]:
        """Whether an accepted ``m.room.guest_access`` state event was stored
        after stream position ``after``, and the newest position looked at
        (``after`` when nothing was stored since)."""
        return await self._readers.read(functools.partial(_guest_access_changed, after=after))

    async def guests_to_evict(self) -> list[tuple[str, str]]:
        """``(room_id, user_id)`` of each local guest joined to a room whose
        current state does not let guests join."""
        return await self._readers.read(_guests_to_evict)


def _guest_access_changed(conn: sqlite3.Connection, *, after: int) -> tuple[bool, int]:
    newest, changed = conn.execute(
        "SELECT MAX(stream_ordering),"
        " MAX(type = ? AND state_key = '' AND outlier = 0 AND rejected_reason IS NULL)"
        " FROM events WHERE stream_ordering > ?",
        (_GUEST_ACCESS, after),
    ).fetchone()
    return bool(changed), after if newest is None else int(newest)


def _content_field(json: bytes | str, key: str) -> object:
    content = msgspec.json.decode(json).get("content")
    return content.get(key) if isinstance(content, dict) else None


def _guests_to_evict(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    joined: list[tuple[str, str]] = []
    for room_id, user_id, json in conn.execute(
        "SELECT cs.room_id, cs.state_key, e.json FROM users AS u"
        " JOIN current_state AS cs ON cs.type = 'm.room.member' AND cs.state_key = u.user_id"
        " JOIN events AS e ON e.event_id = cs.event_id"
        " WHERE u.is_guest = 1 AND u.deactivated = 0"
    ):
        if _content_field(json, "membership") == "join":
            joined.append((str(room_id), str(user_id)))
    allowed: dict[str, bool] = {}
    for room_id, _ in joined:
        if room_id not in allowed:
            row = conn.execute(
                "SELECT e.json FROM current_state AS cs"
                " JOIN events AS e ON e.event_id = cs.event_id"
                " WHERE cs.room_id = ? AND cs.type = ? AND cs.state_key = ''",
                (room_id, _GUEST_ACCESS),
            ).fetchone()
            allowed[room_id] = (
                row is not None and _content_field(row[0], "guest_access") == _CAN_JOIN
            )
    return [(room_id, user_id) for room_id, user_id in joined if not allowed[room_id]]
