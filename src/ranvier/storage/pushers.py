"""Pushers: where a user's devices want push notifications sent.

Tables (the schema's ``_pushers`` migration)
--------------------------------------------

``pushers(user_id, app_id, pushkey, kind, app_display_name,
device_display_name, profile_tag, lang, data_json, pushkey_ts, device_id)``,
keyed by ``(app_id, pushkey, user_id)`` as the spec keys them, and
``push_position(id = 1, stream_ordering)``: how far the push sender has
looked at the event stream, so that a restart neither pushes old events
again nor skips new ones.

Invariants
----------

* **Every write can run twice.** Writes may reach the main process from a
  worker and be repeated across a restart (``registered_write``): setting
  a pusher replaces its row, deleting deletes what is there, and the
  position only moves forward.
* **One app and pushkey, one user, unless appended.** Setting a pusher
  without ``append`` removes the pushers of other users with the same app
  ID and pushkey in the same write, as the spec asks.
* **A pusher ends with the session that set it.** ``device_id`` is the
  device whose access token set the pusher (NULL for one set before
  devices were recorded, or by an application service). The writes that
  delete devices (logging out, deleting devices, a password change that
  ends the other sessions) delete those devices' pushers in the same
  transaction, through :func:`delete_device_pushers`, so no notification
  goes to a device its user has signed out of.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from .event_stream import newest_stream_ordering
from .ignored_users import read_ignoring
from .notification_reads import count_joined, current_state_json
from .readers import ReaderPool
from .redactions import served_events
from .sync_reads import joined_rooms
from .write_backend import WriteBackend, registered_write
from .write_marks import writes_no_room

__all__ = [
    "PushableEvent",
    "PusherRecord",
    "PusherStorage",
    "RoomPushState",
    "delete_device_pushers",
]

_ROOMS_PER_QUERY: Final = 500


@dataclass(frozen=True, slots=True)
class PusherRecord:
    """One pusher, as ``GET /pushers`` shows it (``data_json`` encoded)."""

    user_id: str
    app_id: str
    pushkey: str
    kind: str
    app_display_name: str
    device_display_name: str
    profile_tag: str | None
    lang: str
    data_json: bytes
    pushkey_ts: int
    #: The device whose session set it, if known.
    device_id: str | None = None


@dataclass(frozen=True, slots=True)
class PushableEvent:
    """An accepted event of a room's timeline, as the push sender reads it."""

    stream_ordering: int
    event_id: str
    room_id: str
    sender: str
    json: bytes


_COLUMNS: Final = (
    "user_id, app_id, pushkey, kind, app_display_name, device_display_name,"
    " profile_tag, lang, data_json, pushkey_ts, device_id"
)


def _record(row: tuple[Any, ...]) -> PusherRecord:
    user_id, app_id, pushkey, kind, app_name, device_name, tag, lang, data, ts, device = row
    return PusherRecord(
        str(user_id),
        str(app_id),
        str(pushkey),
        str(kind),
        str(app_name),
        str(device_name),
        None if tag is None else str(tag),
        str(lang),
        bytes(data),
        int(ts),
        None if device is None else str(device),
    )


class PusherStorage:
    """Pushers and the push sender's position, over the write backend and
    the reader pool.
    """

    def __init__(self, writer: WriteBackend, readers: ReaderPool) -> None:
        self._writer = writer
        self._readers = readers

    async def set_pusher(self, pusher: PusherRecord, *, append: bool) -> None:
        await self._writer.submit(
            functools.partial(
                _set_pusher,
                user_id=pusher.user_id,
                app_id=pusher.app_id,
                pushkey=pusher.pushkey,
                kind=pusher.kind,
                app_display_name=pusher.app_display_name,
                device_display_name=pusher.device_display_name,
                profile_tag=pusher.profile_tag,
                lang=pusher.lang,
                data_json=pusher.data_json,
                pushkey_ts=pusher.pushkey_ts,
                device_id=pusher.device_id,
                append=append,
            )
        )

    async def delete_pusher(self, user_id: str, app_id: str, pushkey: str) -> None:
        await self._writer.submit(
            functools.partial(_delete_pusher, user_id=user_id, app_id=app_id, pushkey=pushkey)
        )

    async def pushers_of(self, user_id: str) -> list[PusherRecord]:
        return await self._readers.read(functools.partial(_pushers_of, user_id=user_id))

    async def pushers_in_rooms(self, room_ids: Collection[str]) -> dict[str, list[PusherRecord]]:
        """The pushers of each room's joined members, by room."""
        rooms = sorted(set(room_ids))
        return await self._readers.read(functools.partial(_pushers_in_rooms, room_ids=rooms))

    async def any_pushers(self) -> bool:
        return await self._readers.read(_any_pushers)

    async def push_position(self) -> int | None:
        """How far the push sender has looked, or None before it first ran."""
        return await self._readers.read(_push_position)

    async def set_push_position(self, stream_ordering: int) -> None:
        await self._writer.submit(
            functools.partial(_set_push_position, stream_ordering=stream_ordering)
        )

    async def events_after(self, after: int, *, limit: int) -> list[PushableEvent]:
        """Accepted events of rooms' timelines after ``after``, oldest first."""
        return await self._readers.read(functools.partial(_events_after, after=after, limit=limit))

    async def newest_stream_ordering(self) -> int:
        return await self._readers.read(newest_stream_ordering)

    async def room_push_state(
        self, room_id: str, user_ids: Collection[str], *, count_cap: int
    ) -> RoomPushState:
        """The room's state the push rules and notifications read, with the
        member events of ``user_ids``.
        """
        return await self._readers.read(
            functools.partial(
                _room_push_state,
                room_id=room_id,
                user_ids=sorted(set(user_ids)),
                count_cap=count_cap,
            )
        )

    async def joined_rooms(self, user_id: str) -> list[str]:
        return await self._readers.read(functools.partial(joined_rooms, user_id=user_id))

    async def ignoring(self, sender: str, user_ids: Collection[str]) -> frozenset[str]:
        """Those of ``user_ids`` who ignore ``sender``."""
        users = frozenset(user_ids)
        return await self._readers.read(
            functools.partial(read_ignoring, sender=sender, user_ids=users)
        )


@registered_write
def _set_pusher(
    conn: sqlite3.Connection,
    *,
    user_id: str,
    app_id: str,
    pushkey: str,
    kind: str,
    app_display_name: str,
    device_display_name: str,
    profile_tag: str | None,
    lang: str,
    data_json: bytes,
    pushkey_ts: int,
    append: bool,
    device_id: str | None = None,
) -> None:
    if not append:
        conn.execute(
            "DELETE FROM pushers WHERE app_id = ? AND pushkey = ? AND user_id != ?",
            (app_id, pushkey, user_id),
        )
    conn.execute(
        f"INSERT OR REPLACE INTO pushers ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            user_id,
            app_id,
            pushkey,
            kind,
            app_display_name,
            device_display_name,
            profile_tag,
            lang,
            data_json,
            pushkey_ts,
            device_id,
        ),
    )


@registered_write
def _delete_pusher(conn: sqlite3.Connection, *, user_id: str, app_id: str, pushkey: str) -> None:
    conn.execute(
        "DELETE FROM pushers WHERE user_id = ? AND app_id = ? AND pushkey = ?",
        (user_id, app_id, pushkey),
    )


def delete_device_pushers(
    conn: sqlite3.Connection,
    *,
    user_id: str,
    device_ids: Collection[str] | None = None,
    keep_device: str | None = None,
) -> None:
    """Delete the pushers that devices of ``user_id`` set: those of
    ``device_ids``, or when None those of every device but ``keep_device``.
    Part of the caller's write, which deletes the devices themselves.
    """
    if device_ids is None:
        conn.execute(
            "DELETE FROM pushers WHERE user_id = ? AND device_id IS NOT NULL"
            " AND device_id IS NOT ?",
            (user_id, keep_device),
        )
        return
    conn.executemany(
        "DELETE FROM pushers WHERE user_id = ? AND device_id = ?",
        [(user_id, device_id) for device_id in device_ids],
    )


@registered_write
@writes_no_room
def _set_push_position(conn: sqlite3.Connection, *, stream_ordering: int) -> None:
    conn.execute(
        "INSERT INTO push_position (id, stream_ordering) VALUES (1, ?)"
        " ON CONFLICT (id) DO UPDATE SET"
        " stream_ordering = max(stream_ordering, excluded.stream_ordering)",
        (stream_ordering,),
    )


def _pushers_of(conn: sqlite3.Connection, *, user_id: str) -> list[PusherRecord]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM pushers WHERE user_id = ? ORDER BY app_id, pushkey", (user_id,)
    ).fetchall()
    return [_record(row) for row in rows]


def _pushers_in_rooms(
    conn: sqlite3.Connection, *, room_ids: list[str]
) -> dict[str, list[PusherRecord]]:
    found: dict[str, list[PusherRecord]] = {}
    columns = ", ".join(f"p.{column.strip()}" for column in _COLUMNS.split(","))
    for start in range(0, len(room_ids), _ROOMS_PER_QUERY):
        chunk = room_ids[start : start + _ROOMS_PER_QUERY]
        marks = ", ".join("?" for _ in chunk)
        rows = conn.execute(
            f"SELECT cs.room_id, {columns} FROM pushers AS p"
            " JOIN current_state AS cs ON cs.type = 'm.room.member' AND cs.state_key = p.user_id"
            " JOIN events AS e ON e.event_id = cs.event_id"
            f" WHERE cs.room_id IN ({marks})"
            " AND json_extract(CAST(e.json AS TEXT), '$.content.membership') = 'join'"
            " ORDER BY cs.room_id, p.user_id, p.app_id, p.pushkey",
            chunk,
        ).fetchall()
        for room_id, *pusher in rows:
            found.setdefault(str(room_id), []).append(_record(tuple(pusher)))
    return found


def _any_pushers(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM pushers LIMIT 1").fetchone() is not None


def _push_position(conn: sqlite3.Connection) -> int | None:
    row = conn.execute("SELECT stream_ordering FROM push_position WHERE id = 1").fetchone()
    return None if row is None else int(row[0])


def _events_after(conn: sqlite3.Connection, *, after: int, limit: int) -> list[PushableEvent]:
    rows = conn.execute(
        "SELECT stream_ordering, event_id, room_id, sender, json FROM events"
        " WHERE stream_ordering > ? AND outlier = 0 AND soft_failed = 0"
        " AND rejected_reason IS NULL ORDER BY stream_ordering LIMIT ?",
        (after, limit),
    ).fetchall()
    return [PushableEvent(int(a), str(b), str(c), str(d), bytes(e)) for a, b, c, d, e in rows]


@dataclass(frozen=True, slots=True)
class RoomPushState:
    """What a room's notifications are judged and worded by: its current state."""

    room_version: str | None
    power_levels_json: bytes | None
    create_json: bytes | None
    name: str | None
    #: The room's canonical alias, for a gateway to show when it has no name.
    alias: str | None
    #: Joined members, counted up to the cap asked for.
    joined: int
    #: The current member events of the users asked about who have one.
    members: dict[str, bytes]


def _served_state_json(
    conn: sqlite3.Connection, room_id: str, type_: str, state_key: str
) -> bytes | None:
    """The JSON of a current state event as served: the room's name and
    members' display names go to the push gateway, another party, and a
    redacted one must not.
    """
    row = conn.execute(
        "SELECT event_id FROM current_state WHERE room_id = ? AND type = ? AND state_key = ?",
        (room_id, type_, state_key),
    ).fetchone()
    if row is None:
        return None
    event = served_events(conn, [str(row[0])]).get(str(row[0]))
    return None if event is None else event.json


def _room_push_state(
    conn: sqlite3.Connection, *, room_id: str, user_ids: list[str], count_cap: int
) -> RoomPushState:
    version = conn.execute(
        "SELECT room_version FROM rooms WHERE room_id = ?", (room_id,)
    ).fetchone()
    name_json = _served_state_json(conn, room_id, "m.room.name", "")
    name = None
    if name_json is not None:
        value = msgspec.json.decode(name_json).get("content", {}).get("name")
        name = value if isinstance(value, str) and value else None
    alias_json = _served_state_json(conn, room_id, "m.room.canonical_alias", "")
    alias = None
    if alias_json is not None:
        value = msgspec.json.decode(alias_json).get("content", {}).get("alias")
        alias = value if isinstance(value, str) and value else None
    members = {}
    for user_id in user_ids:
        member = _served_state_json(conn, room_id, "m.room.member", user_id)
        if member is not None:
            members[user_id] = member
    return RoomPushState(
        room_version=None if version is None else str(version[0]),
        power_levels_json=current_state_json(conn, room_id, "m.room.power_levels", ""),
        create_json=current_state_json(conn, room_id, "m.room.create", ""),
        name=name,
        alias=alias,
        joined=count_joined(conn, room_id, count_cap),
        members=members,
    )
