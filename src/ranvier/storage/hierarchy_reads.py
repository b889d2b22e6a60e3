"""What a space hierarchy shows of rooms this server holds, read from their
current state.

One read per room answers everything the walk asks of it: the contents of
the state events a summary shows, its ``m.space.child`` events, how many
members are joined and from which servers, and one user's membership.
Which servers have joined members decides whether this server is still in
the room (and so may answer for it) and whether an asking server is. In a
room joined with partial state, whose state may leave out other servers'
members, an asking server is also counted in when the resident named it
among the servers in the room (``partial_state_rooms_servers``), until the
resync brings the members themselves.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from .client_data import PUBLIC_ROOM_STATE
from .readers import ReaderPool
from .redactions import served_events

__all__ = ["HierarchyReads", "HierarchyRoomState", "SpaceChildEvent"]

#: The state events (state key "") a room's summary is made from: a
#: public room's, and whether it is encrypted.
_SUMMARY_STATE: Final = (*PUBLIC_ROOM_STATE, "m.room.encryption")

#: Room IDs bound per statement.
_BATCH: Final = 400


class _Event(msgspec.Struct):
    content: dict[str, Any] = {}
    sender: str = ""
    origin_server_ts: int = 0


_decode_event = msgspec.json.Decoder(_Event).decode


@dataclass(frozen=True, slots=True)
class SpaceChildEvent:
    """An ``m.space.child`` event of a room's current state, as stored
    (valid or not: the hierarchy decides)."""

    state_key: str
    content: dict[str, Any]
    sender: str
    origin_server_ts: int


@dataclass(frozen=True, slots=True)
class HierarchyRoomState:
    """A room as its summary and the access rules need it."""

    room_id: str
    room_version: str
    #: Contents of the summary's state events, by type; absent ones left out.
    state: dict[str, dict[str, Any]]
    joined_members: int
    #: Servers with at least one joined member.
    joined_servers: frozenset[str]
    #: While the room's state is partial, the servers the resident said
    #: were in it; empty otherwise.
    partial_state_servers: frozenset[str]
    #: The asked user's membership, or None.
    membership: str | None
    children: tuple[SpaceChildEvent, ...]


def _server_of(user_id: str) -> str:
    return user_id.partition(":")[2]


def _room_state(
    conn: sqlite3.Connection, room_id: str, room_version: str, user_id: str | None
) -> HierarchyRoomState:
    marks = ", ".join("?" for _ in _SUMMARY_STATE)
    state: dict[str, dict[str, Any]] = {}
    children: list[SpaceChildEvent] = []
    rows = conn.execute(
        "SELECT s.type, s.state_key, s.event_id FROM current_state AS s WHERE s.room_id = ?"
        f" AND ((s.state_key = '' AND s.type IN ({marks})) OR s.type = 'm.space.child')",
        (room_id, *_SUMMARY_STATE),
    ).fetchall()
    # As served: a redacted name or topic is not shown, and a redacted
    # m.space.child (no "via" left) names no child, as the spec has it.
    events = served_events(conn, [str(event_id) for _, _, event_id in rows])
    for event_type, state_key, event_id in rows:
        stored = events.get(str(event_id))
        if stored is None:
            continue
        try:
            event = _decode_event(stored.json)
        except msgspec.ValidationError:
            continue
        if event_type == "m.space.child":
            children.append(
                SpaceChildEvent(str(state_key), event.content, event.sender, event.origin_server_ts)
            )
        else:
            state[str(event_type)] = event.content
    joined = [
        str(member)
        for (member,) in conn.execute(
            "SELECT s.state_key FROM current_state AS s JOIN events AS e"
            " ON e.event_id = s.event_id WHERE s.room_id = ? AND s.type = 'm.room.member'"
            " AND json_extract(CAST(e.json AS TEXT), '$.content.membership') = 'join'",
            (room_id,),
        )
    ]
    membership = None
    if user_id is not None:
        row = conn.execute(
            "SELECT json_extract(CAST(e.json AS TEXT), '$.content.membership')"
            " FROM current_state AS s JOIN events AS e ON e.event_id = s.event_id"
            " WHERE s.room_id = ? AND s.type = 'm.room.member' AND s.state_key = ?",
            (room_id, user_id),
        ).fetchone()
        if row is not None and isinstance(row[0], str):
            membership = row[0]
    partial_servers = conn.execute(
        "SELECT server_name FROM partial_state_rooms_servers WHERE room_id = ?", (room_id,)
    ).fetchall()
    return HierarchyRoomState(
        room_id=room_id,
        room_version=room_version,
        state=state,
        joined_members=len(joined),
        joined_servers=frozenset(_server_of(member) for member in joined),
        partial_state_servers=frozenset(str(server) for (server,) in partial_servers),
        membership=membership,
        children=tuple(children),
    )


def _room_states(
    conn: sqlite3.Connection, *, room_ids: list[str], user_id: str | None
) -> dict[str, HierarchyRoomState]:
    found: dict[str, HierarchyRoomState] = {}
    for start in range(0, len(room_ids), _BATCH):
        batch = room_ids[start : start + _BATCH]
        marks = ", ".join("?" for _ in batch)
        versions = conn.execute(
            f"SELECT room_id, room_version FROM rooms WHERE room_id IN ({marks})", batch
        ).fetchall()
        for room_id, room_version in versions:
            found[str(room_id)] = _room_state(conn, str(room_id), str(room_version), user_id)
    return found


def _joined_rooms_among(
    conn: sqlite3.Connection, *, room_ids: list[str], user_id: str | None, server: str | None
) -> set[str]:
    joined: set[str] = set()
    for start in range(0, len(room_ids), _BATCH):
        batch = room_ids[start : start + _BATCH]
        marks = ", ".join("?" for _ in batch)
        if user_id is not None:
            who, argument = "s.state_key = ?", user_id
        else:
            assert server is not None
            who = "substr(s.state_key, instr(s.state_key, ':') + 1) = ?"
            argument = server
        rows = conn.execute(
            "SELECT DISTINCT s.room_id FROM current_state AS s JOIN events AS e"
            " ON e.event_id = s.event_id"
            f" WHERE s.room_id IN ({marks}) AND s.type = 'm.room.member' AND {who}"
            " AND json_extract(CAST(e.json AS TEXT), '$.content.membership') = 'join'",
            (*batch, argument),
        ).fetchall()
        joined.update(str(room_id) for (room_id,) in rows)
        if server is not None:
            rows = conn.execute(
                "SELECT room_id FROM partial_state_rooms_servers"
                f" WHERE room_id IN ({marks}) AND server_name = ?",
                (*batch, server),
            ).fetchall()
            joined.update(str(room_id) for (room_id,) in rows)
    return joined


class HierarchyReads:
    """Reads for ``/hierarchy``, here and over federation."""

    def __init__(self, readers: ReaderPool) -> None:
        self._readers = readers

    async def room_states(
        self, room_ids: Collection[str], *, user_id: str | None = None
    ) -> dict[str, HierarchyRoomState]:
        """The rooms of ``room_ids`` this server has a record of, with
        ``user_id``'s membership in each when given."""
        return await self._readers.read(
            functools.partial(_room_states, room_ids=list(room_ids), user_id=user_id)
        )

    async def rooms_joined_by_user(self, user_id: str, room_ids: Collection[str]) -> set[str]:
        """Those of ``room_ids`` ``user_id`` is joined to."""
        return await self._readers.read(
            functools.partial(
                _joined_rooms_among, room_ids=list(room_ids), user_id=user_id, server=None
            )
        )

    async def rooms_joined_by_server(self, server: str, room_ids: Collection[str]) -> set[str]:
        """Those of ``room_ids`` some user of ``server`` is joined to, or,
        in a room whose state is still partial, that its resident named
        ``server`` among the servers in."""
        return await self._readers.read(
            functools.partial(
                _joined_rooms_among, room_ids=list(room_ids), user_id=None, server=server
            )
        )
