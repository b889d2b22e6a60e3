"""The reads a sliding sync makes of a user's rooms before choosing which to
send: every room the user has a membership in, with what its lists sort
and filter by, read in one snapshot with the positions of ``/sync``'s
snapshot (:func:`ranvier.storage.sync_reads.sync_snapshot`).

A room costs a handful of index lookups here (its membership event's
sender, its newest timeline event, its newest event of a bump type, its
create event's type, whether it has an encryption event), whatever its
size: the newest events are found walking ``events (room_id,
stream_ordering)`` backwards from the snapshot's position. Given the facts
of an earlier read, only the rooms with events since it are read again.
"""

from __future__ import annotations

import dataclasses
import functools
import sqlite3
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from .forgotten_rooms import forgotten_rooms
from .ignored_users import read_ignored_users
from .readers import ReaderPool
from .records import StateMap
from .state_groups import keys_changed_between, read_state, read_state_for_keys
from .sync_reads import state_before, sync_snapshot

__all__ = ["BUMP_TYPES", "RoomFacts", "RoomList", "SlidingSyncReads"]

#: The event types whose arrival moves a joined room up (the MSC's list).
BUMP_TYPES: Final = (
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
)
_TIMELINE: Final = "outlier = 0 AND soft_failed = 0 AND rejected_reason IS NULL"
_BUMP_MARKS: Final = ", ".join("?" for _ in BUMP_TYPES)


@dataclass(frozen=True, slots=True)
class RoomFacts:
    """What a room's place in the user's lists depends on."""

    room_id: str
    #: The user's membership: join, invite, knock, leave or ban.
    membership: str
    #: The stream ordering of the membership event, and its ID and sender.
    membership_at: int
    membership_event_id: str
    membership_sender: str
    #: The stream ordering of the room's newest timeline event (0: none).
    latest: int
    #: The stream ordering of its newest event of a bump type (0: none).
    bump: int
    #: The ``type`` of its create event's content, when it has one here.
    room_type: str | None
    encrypted: bool
    #: Whether the invite says it is a direct chat (``is_direct``).
    direct_invite: bool
    partial: bool
    #: For a room left or banned from: whether the user was joined just before.
    joined_before: bool = False


@dataclass(frozen=True, slots=True)
class RoomList:
    """A user's rooms, read in one snapshot."""

    #: The newest events and un-partial-state positions.
    events: int
    un_partial: int
    rooms: list[RoomFacts]
    #: The rooms the ``m.direct`` account data names.
    direct_rooms: frozenset[str]
    ignored: frozenset[str]
    #: Each room's tags (its ``m.tag`` account data), where it has some.
    tags: dict[str, frozenset[str]] = field(default_factory=dict)


class _Content(msgspec.Struct):
    content: dict[str, Any] = {}


_decode_content = msgspec.json.Decoder(_Content).decode


class _Tags(msgspec.Struct):
    tags: dict[str, Any] = {}


def _direct_rooms(conn: sqlite3.Connection, user_id: str) -> frozenset[str]:
    """The room IDs of the user's ``m.direct`` account data; a malformed
    entry names none."""
    row = conn.execute(
        "SELECT content FROM account_data WHERE user_id = ? AND room_id = '' AND type = ?",
        (user_id, "m.direct"),
    ).fetchone()
    if row is None:
        return frozenset()
    try:
        content: Any = msgspec.json.decode(bytes(row[0]))
    except msgspec.DecodeError:
        return frozenset()
    if not isinstance(content, dict):
        return frozenset()
    return frozenset(
        room_id
        for rooms in content.values()
        if isinstance(rooms, list)
        for room_id in rooms
        if isinstance(room_id, str)
    )


def _tags(conn: sqlite3.Connection, user_id: str) -> dict[str, frozenset[str]]:
    """The tags of each of the user's rooms with an ``m.tag``, in one read."""
    found: dict[str, frozenset[str]] = {}
    for room_id, content in conn.execute(
        "SELECT room_id, content FROM account_data"
        " WHERE user_id = ? AND type = 'm.tag' AND room_id != ''",
        (user_id,),
    ):
        try:
            tags = msgspec.json.decode(bytes(content), type=_Tags).tags
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        if tags:
            found[room_id] = frozenset(tags)
    return found


def _newest(conn: sqlite3.Connection, room_id: str, upto: int, *, bump: bool) -> int:
    types = f" AND type IN ({_BUMP_MARKS})" if bump else ""
    row = conn.execute(
        f"SELECT stream_ordering FROM events WHERE room_id = ? AND stream_ordering <= ?"
        f" AND {_TIMELINE}{types} ORDER BY stream_ordering DESC LIMIT 1",
        (room_id, upto, *(BUMP_TYPES if bump else ())),
    ).fetchone()
    return 0 if row is None else int(row[0])


def _room_type(conn: sqlite3.Connection, room_id: str) -> tuple[str | None, bool]:
    room_type: str | None = None
    encrypted = False
    for event_type, json in conn.execute(
        "SELECT cs.type, e.json FROM current_state AS cs JOIN events AS e"
        " ON e.event_id = cs.event_id WHERE cs.room_id = ? AND cs.state_key = ''"
        " AND cs.type IN ('m.room.create', 'm.room.encryption')",
        (room_id,),
    ):
        if event_type == "m.room.encryption":
            encrypted = True
            continue
        value = _decode_content(json).content.get("type")
        room_type = value if isinstance(value, str) else None
    return room_type, encrypted


def _joined_before(conn: sqlite3.Connection, user_id: str, event_id: str) -> bool:
    """Whether the user's membership in the state before ``event_id`` is join."""
    before = state_before(conn, event_id, [("m.room.member", user_id)])
    held = before.get(("m.room.member", user_id))
    if held is None:
        return False
    row = conn.execute("SELECT json FROM events WHERE event_id = ?", (held,)).fetchone()
    return row is not None and _decode_content(row[0]).content.get("membership") == "join"


def room_list(
    conn: sqlite3.Connection,
    *,
    user_id: str,
    un_partial_after: int,
    detailed: bool = True,
    known: Mapping[str, RoomFacts] | None = None,
    known_at: int = 0,
) -> RoomList:
    """Every room ``user_id`` has a membership in, with its facts, but those
    left and forgotten (``/forget``); without ``detailed``, its membership
    alone (a connection with no lists or subscriptions, which reads the
    rooms only for its extensions).

    ``known`` are facts read before at events position ``known_at``: a
    room with no event since and the same membership event keeps them (its
    partial state read again), so a request reads only the rooms that
    moved.
    """
    events, un_partial, memberships, partial, _, changed = sync_snapshot(
        conn, user_id, un_partial_after, None if known is None else known_at
    )
    rooms: list[RoomFacts] = []
    forgotten = forgotten_rooms(conn, user_id=user_id)
    for room_id, membership, ordering, event_id in memberships:
        if membership in ("leave", "ban") and room_id in forgotten:
            continue
        if not detailed:
            rooms.append(
                RoomFacts(
                    room_id, membership, ordering, event_id, "", 0, 0, None, False, False, False
                )
            )
            continue
        held = None if known is None or changed is None else known.get(room_id)
        if (
            held is not None
            and changed is not None
            and held.membership_event_id == event_id
            and room_id not in changed
        ):
            rooms.append(dataclasses.replace(held, partial=room_id in partial))
            continue
        row = conn.execute(
            "SELECT sender, json FROM events WHERE event_id = ?", (event_id,)
        ).fetchone()
        sender = "" if row is None else str(row[0])
        direct = (
            membership == "invite"
            and row is not None
            and _decode_content(row[1]).content.get("is_direct") is True
        )
        room_type, encrypted = _room_type(conn, room_id)
        joined_before = membership in ("leave", "ban") and _joined_before(conn, user_id, event_id)
        rooms.append(
            RoomFacts(
                room_id=room_id,
                membership=membership,
                membership_at=ordering,
                membership_event_id=event_id,
                membership_sender=sender,
                latest=_newest(conn, room_id, events, bump=False),
                bump=_newest(conn, room_id, events, bump=True),
                room_type=room_type,
                encrypted=encrypted,
                direct_invite=direct,
                partial=room_id in partial,
                joined_before=joined_before,
            )
        )
    return RoomList(
        events,
        un_partial,
        rooms,
        _direct_rooms(conn, user_id) if detailed else frozenset(),
        read_ignored_users(conn, user_id=user_id),
        _tags(conn, user_id) if detailed else {},
    )


def space_children(conn: sqlite3.Connection, *, space_ids: Collection[str]) -> frozenset[str]:
    """The rooms the spaces' current ``m.space.child`` events name with a
    ``via`` (an event without one has been taken out of the space)."""
    children: set[str] = set()
    for space_id in space_ids:
        for state_key, json in conn.execute(
            "SELECT cs.state_key, e.json FROM current_state AS cs JOIN events AS e"
            " ON e.event_id = cs.event_id WHERE cs.room_id = ? AND cs.type = 'm.space.child'",
            (space_id,),
        ):
            via = _decode_content(json).content.get("via")
            if isinstance(via, list) and via:
                children.add(state_key)
    return frozenset(children)


def _group_at(conn: sqlite3.Connection, room_id: str, position: int) -> int | None:
    row = conn.execute(
        f"SELECT g.state_group_after FROM events AS e"
        f" JOIN event_to_state_groups AS g ON g.event_id = e.event_id"
        f" WHERE e.room_id = ? AND e.stream_ordering <= ? AND {_TIMELINE}"
        f" ORDER BY e.stream_ordering DESC LIMIT 1",
        (room_id, position),
    ).fetchone()
    return None if row is None else int(row[0])


def state_delta(
    conn: sqlite3.Connection, *, room_id: str, since: int, upto: int
) -> dict[tuple[str, str], str | None]:
    """The room's state entries that differ between events positions
    ``since`` and ``upto``: the new event ID, or None for an entry gone.
    Only the keys the state groups' deltas name are compared, so a small
    change in a big room reads little.
    """
    new_group = _group_at(conn, room_id, upto)
    old_group = _group_at(conn, room_id, since)
    if new_group is None or new_group == old_group:
        return {}
    new_state: StateMap
    old_state: StateMap
    if old_group is None:
        return dict(read_state(conn, new_group))
    keys = keys_changed_between(conn, old_group, new_group)
    if keys is None:
        new_state, old_state = read_state(conn, new_group), read_state(conn, old_group)
    else:
        new_state = read_state_for_keys(conn, new_group, keys)
        old_state = read_state_for_keys(conn, old_group, keys)
    changed: dict[tuple[str, str], str | None] = {
        key: value for key, value in new_state.items() if old_state.get(key) != value
    }
    changed.update((key, None) for key in old_state if key not in new_state)
    return changed


class SlidingSyncReads:
    """The room-list reads of sliding sync."""

    def __init__(self, readers: ReaderPool) -> None:
        self._readers = readers

    async def room_list(
        self,
        user_id: str,
        un_partial_after: int,
        *,
        detailed: bool = True,
        known: Mapping[str, RoomFacts] | None = None,
        known_at: int = 0,
    ) -> RoomList:
        return await self._readers.read(
            functools.partial(
                room_list,
                user_id=user_id,
                un_partial_after=un_partial_after,
                detailed=detailed,
                known=known,
                known_at=known_at,
            )
        )

    async def space_children(self, space_ids: Collection[str]) -> frozenset[str]:
        ids = tuple(space_ids)
        return await self._readers.read(functools.partial(space_children, space_ids=ids))

    async def state_delta(
        self, room_id: str, since: int, upto: int
    ) -> dict[tuple[str, str], str | None]:
        return await self._readers.read(
            functools.partial(state_delta, room_id=room_id, since=since, upto=upto)
        )
