"""Which rooms a user has a membership in, read without a scan of every room.

The current state's member rows are indexed by state key (schema 7's
``current_state_members``), so a user's rooms are one index range. A
membership this server holds only as an outlier (an invite from another
server to a room not joined here) is not in any current state, so it is
found among the marked outliers (:mod:`ranvier.storage.local_memberships`).

``GET /members?at=`` reads the state of a room as of a stream position: the
state after the room's last accepted event at or before it, found through
the events' ``(room_id, stream_ordering)`` index.

A resident server answering a join asks two things of a big room's members
that need neither the whole current state nor whole events: whether any
user of a server is joined, and each member event's membership and stream
ordering. Both are read in SQLite, the membership with ``json_extract``
(a non-string membership reads as None, as a decoder wanting a string
would give).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection

from .local_memberships import newest_membership, sent_through
from .membership_sql import MEMBERSHIP
from .readers import ReaderPool
from .write_backend import WriteBackend

__all__ = ["RoomMemberStorage"]

#: Event IDs bound per statement when reading memberships by event ID.
_BATCH = 500


class RoomMemberStorage:
    """Reads of users' memberships across rooms."""

    def __init__(self, actor: WriteBackend, readers: ReaderPool) -> None:
        self._actor = actor
        self._readers = readers

    async def get_current_membership_event_ids(self, user_id: str) -> dict[str, str]:
        """For each room whose current state has a membership of ``user_id``,
        the ID of that member event.
        """

        def select(conn: sqlite3.Connection) -> dict[str, str]:
            rows = conn.execute(
                "SELECT room_id, event_id FROM current_state"
                " WHERE type = 'm.room.member' AND state_key = ?",
                (user_id,),
            ).fetchall()
            return {str(room_id): str(event_id) for room_id, event_id in rows}

        return await self._readers.read(select)

    async def get_latest_membership_event_id(self, user_id: str, room_id: str) -> str | None:
        """The member event of ``user_id``'s newest membership in ``room_id``
        (:mod:`ranvier.storage.local_memberships`), the one ``/sync`` shows;
        None when there is none.
        """

        def select(conn: sqlite3.Connection) -> str | None:
            found = newest_membership(conn, user_id, room_id)
            return None if found is None else found[3]

        return await self._readers.read(select)

    async def get_knock_server(self, event_id: str) -> str | None:
        """The server the out-of-band knock ``event_id`` was sent through
        (:func:`ranvier.storage.local_memberships.sent_through`)."""
        return await self._readers.read(lambda conn: sent_through(conn, event_id))

    async def get_room_event_id_at(self, room_id: str, stream_ordering: int) -> str | None:
        """The room's last accepted event in its DAG at or before
        ``stream_ordering``; None when it had none by then.
        """

        def select(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT event_id FROM events WHERE room_id = ? AND stream_ordering <= ?"
                " AND outlier = 0 AND soft_failed = 0 AND rejected_reason IS NULL"
                " ORDER BY stream_ordering DESC LIMIT 1",
                (room_id, stream_ordering),
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._readers.read(select)

    async def server_has_joined_member(self, room_id: str, server_name: str) -> bool:
        """Whether the room's current state has a user of ``server_name``
        (the part of the user ID after its first colon) with membership
        ``join``.
        """

        def select(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM current_state AS cs JOIN events AS e ON e.event_id = cs.event_id"
                " WHERE cs.room_id = ? AND cs.type = 'm.room.member'"
                " AND instr(cs.state_key, ':') > 0"
                " AND substr(cs.state_key, instr(cs.state_key, ':') + 1) = ?"
                f" AND {MEMBERSHIP} = 'join' LIMIT 1",
                (room_id, server_name),
            ).fetchone()
            return row is not None

        return await self._readers.read(select)

    async def users_sharing_a_room(self, user_id: str, candidates: Collection[str]) -> set[str]:
        """Those of ``candidates`` joined to a room ``user_id`` is joined to:
        who may see ``user_id``'s presence, and whose ``user_id`` may see.
        """
        wanted = list(dict.fromkeys(candidates))
        mine = MEMBERSHIP
        theirs = MEMBERSHIP.replace("e.json", "o.json")

        def select(conn: sqlite3.Connection) -> set[str]:
            rooms = [
                str(room_id)
                for (room_id,) in conn.execute(
                    "SELECT cs.room_id FROM current_state AS cs"
                    " JOIN events AS e ON e.event_id = cs.event_id"
                    f" WHERE cs.type = 'm.room.member' AND cs.state_key = ? AND {mine} = 'join'",
                    (user_id,),
                )
            ]
            found: set[str] = set()
            if not rooms:
                return found
            room_marks = ", ".join("?" * len(rooms))
            for start in range(0, len(wanted), _BATCH):
                batch = wanted[start : start + _BATCH]
                marks = ", ".join("?" * len(batch))
                rows = conn.execute(
                    "SELECT DISTINCT cs.state_key FROM current_state AS cs"
                    " JOIN events AS o ON o.event_id = cs.event_id"
                    f" WHERE cs.type = 'm.room.member' AND cs.state_key IN ({marks})"
                    f" AND cs.room_id IN ({room_marks}) AND {theirs} = 'join'",
                    [*batch, *rooms],
                )
                found.update(str(state_key) for (state_key,) in rows)
            return found

        return await self._readers.read(select)

    async def get_memberships(
        self, event_ids: Collection[str]
    ) -> dict[str, tuple[int, str | None]]:
        """For each stored event of ``event_ids``, its stream ordering and its
        ``content.membership`` (None unless a string).
        """
        wanted = list(dict.fromkeys(event_ids))

        def select(conn: sqlite3.Connection) -> dict[str, tuple[int, str | None]]:
            found: dict[str, tuple[int, str | None]] = {}
            for start in range(0, len(wanted), _BATCH):
                batch = wanted[start : start + _BATCH]
                marks = ", ".join("?" * len(batch))
                rows = conn.execute(
                    f"SELECT e.event_id, e.stream_ordering, {MEMBERSHIP} FROM events AS e"
                    f" WHERE e.event_id IN ({marks})",
                    batch,
                )
                for event_id, ordering, membership in rows:
                    found[str(event_id)] = (
                        int(ordering),
                        membership if isinstance(membership, str) else None,
                    )
            return found

        return await self._readers.read(select)
