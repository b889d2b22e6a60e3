"""What the client API keeps of users beyond their accounts: profiles,
account data, devices' names, and the rooms published in the room list.

Tables (schema migration 9)
---------------------------

* ``profiles(user_id pk -> users, displayname, avatar_url)``: a local
  user's profile; no row is an empty profile. Its other fields are in
  ``profile_fields`` (:mod:`ranvier.storage.profile_fields`).
* ``account_data(stream_id pk autoincrement, user_id, room_id, type,
  content)``, unique on ``(user_id, room_id, type)``: a user's account
  data, global ones with ``room_id`` ``''``. ``stream_id`` is the account
  data stream's position: a change deletes the old row and inserts a new
  one, so the newest changes have the highest IDs, and AUTOINCREMENT never
  hands out an ID twice, so a change is never filed behind a position a
  sync already reported.
* ``room_list(room_id pk -> rooms, added_ts)``: the rooms whose directory
  visibility is ``public``.
* ``appservice_room_list(appservice_id, network_id, room_id -> rooms,
  added_ts)``, keyed by the first three (schema migration 54): the rooms an
  application service publishes in a third-party network's room list,
  which is not the server's own.

Invariants
----------

* **One write per change.** Each change is one request to the storage
  actor; its new stream position is read back in the same transaction.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import msgspec

from . import profile_fields
from .readers import ReaderPool
from .records import STORED_EVENT_COLUMNS, stored_event_from_row
from .redactions import served, served_events
from .write_backend import WriteBackend, registered_write

__all__ = [
    "PUBLIC_ROOM_STATE",
    "AccountDataChange",
    "ClientDataStorage",
    "DeviceRecord",
    "PublicRoomState",
]


@dataclass(frozen=True, slots=True)
class AccountDataChange:
    """One entry of account data as it is now; ``room_id`` ``''`` is global."""

    stream_id: int
    room_id: str
    type: str
    content: bytes


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A device as ``GET /devices`` shows it."""

    device_id: str
    display_name: str | None
    last_seen_ts: int | None


@dataclass(frozen=True, slots=True)
class PublicRoomState:
    """What the room list shows of a published room: the contents of its
    name, topic, canonical alias, avatar, join rules, history visibility,
    guest access and create events (absent ones left out), and how many
    members it has joined.
    """

    room_id: str
    state: dict[str, dict[str, Any]]
    joined_members: int


_T = TypeVar("_T")

#: The state events (state key "") a public room's entry is made from.
PUBLIC_ROOM_STATE: Final = (
    "m.room.name",
    "m.room.topic",
    "m.room.canonical_alias",
    "m.room.avatar",
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.create",
)


_EVENT_COLUMNS: Final = ", ".join(f"e.{column}" for column in STORED_EVENT_COLUMNS)


class _Event(msgspec.Struct):
    content: dict[str, Any] = {}


_decode_event = msgspec.json.Decoder(_Event).decode


class ClientDataStorage:
    """Profiles, account data, devices and the room list, over the write
    backend (the storage actor) and the reader pool.
    """

    def __init__(self, writer: WriteBackend, readers: ReaderPool) -> None:
        self._writer = writer
        self._readers = readers

    async def _read(self, operation: Callable[[sqlite3.Connection], _T]) -> _T:
        return await self._readers.read(operation)

    async def _write(self, operation: Callable[[sqlite3.Connection], _T]) -> _T:
        return await self._writer.submit(operation)

    # Profiles.

    async def get_profile(self, user_id: str) -> tuple[str | None, str | None] | None:
        """``(displayname, avatar_url)`` of a local user; None if there is
        no such account.
        """
        return await self._read(functools.partial(profile_fields.name_and_avatar, user_id=user_id))

    async def set_profile(
        self, user_id: str, displayname: str | None, avatar_url: str | None
    ) -> None:
        """Replace a local user's profile."""
        await self._write(
            functools.partial(
                _set_profile, user_id=user_id, displayname=displayname, avatar_url=avatar_url
            )
        )

    async def profile_fields(self, user_id: str) -> dict[str, Any] | None:
        """Every set field of a local user's profile, None if there is no
        such account (:mod:`ranvier.storage.profile_fields`).
        """
        return await self._read(functools.partial(profile_fields.profile_fields, user_id=user_id))

    async def set_profile_field(
        self, user_id: str, key: str, value_json: str, *, max_bytes: int
    ) -> bool:
        """Set one field; False, writing nothing, when the profile would
        reach ``max_bytes`` or there is no such account.
        """
        return await self._write(
            functools.partial(
                profile_fields.set_profile_field,
                user_id=user_id,
                key=key,
                value_json=value_json,
                max_bytes=max_bytes,
            )
        )

    async def delete_profile_field(self, user_id: str, key: str) -> None:
        """Remove one field of a profile, if set."""
        await self._write(
            functools.partial(profile_fields.delete_profile_field, user_id=user_id, key=key)
        )

    async def erase_profile(self, user_id: str) -> None:
        """Remove every field of a profile."""
        await self._write(functools.partial(profile_fields.erase_profile, user_id=user_id))

    async def user_directory(self, user_id: str) -> dict[str, str]:
        """Every user who shares a joined room with ``user_id`` or is joined
        to a room with a public join rule or world-readable history, with
        the member event JSON of one such membership (for the display name
        and avatar it carries); deactivated users of this server left out.
        """
        return await self._read(functools.partial(_user_directory, user_id=user_id))

    # Account data.

    async def put_account_data(
        self, user_id: str, room_id: str, data_type: str, content: bytes
    ) -> int:
        """Set one entry of account data; return its new stream position."""
        return await self._write(
            functools.partial(
                _put_account_data,
                user_id=user_id,
                room_id=room_id,
                data_type=data_type,
                content=content,
            )
        )

    async def replace_account_data(
        self, user_id: str, room_id: str, data_type: str, content: bytes, expected: bytes | None
    ) -> int | None:
        """Set one entry of account data if it still holds ``expected``
        (None: no entry), in one write: its new stream position, or None
        when it holds something else (changed since the caller read it).
        """
        return await self._write(
            functools.partial(
                _replace_account_data,
                user_id=user_id,
                room_id=room_id,
                data_type=data_type,
                content=content,
                expected=expected,
            )
        )

    async def get_account_data(self, user_id: str, room_id: str, data_type: str) -> bytes | None:
        return await self._read(
            functools.partial(
                _get_account_data, user_id=user_id, room_id=room_id, data_type=data_type
            )
        )

    async def account_data_position(self) -> int:
        """The account data stream's newest position (0 when empty)."""
        return await self._read(_account_data_position)

    async def account_data_changes(
        self, user_id: str, after: int, upto: int
    ) -> list[AccountDataChange]:
        """``user_id``'s entries whose last change is in ``(after, upto]``,
        oldest first.
        """
        return await self._read(
            functools.partial(_account_data_changes, user_id=user_id, after=after, upto=upto)
        )

    # Devices.

    async def get_devices(self, user_id: str) -> list[DeviceRecord]:
        return await self._readers.read(functools.partial(_get_devices, user_id=user_id))

    async def set_device_display_name(
        self, user_id: str, device_id: str, display_name: str
    ) -> bool:
        """Rename a device; False when the user has no such device."""
        return await self._writer.submit(
            functools.partial(
                _set_device_display_name,
                user_id=user_id,
                device_id=device_id,
                display_name=display_name,
            )
        )

    # The room list.

    async def set_room_listed(self, room_id: str, listed: bool, now_ms: int) -> None:
        await self._write(
            functools.partial(_set_room_listed, room_id=room_id, listed=listed, now_ms=now_ms)
        )

    async def is_room_listed(self, room_id: str) -> bool:
        return await self._read(functools.partial(_is_room_listed, room_id=room_id))

    async def room_exists(self, room_id: str) -> bool:
        return await self._readers.read(functools.partial(_room_exists, room_id=room_id))

    async def set_room_listed_in_network(
        self, appservice_id: str, network_id: str, room_id: str, listed: bool, now_ms: int
    ) -> None:
        """Publish or withdraw a room in a service's network's room list."""
        await self._write(
            functools.partial(
                _set_room_listed_in_network,
                appservice_id=appservice_id,
                network_id=network_id,
                room_id=room_id,
                listed=listed,
                now_ms=now_ms,
            )
        )

    async def listed_rooms(
        self, *, main: bool = True, networks: Sequence[tuple[str, str | None]] = ()
    ) -> list[PublicRoomState]:
        """Every published room this server is in, with what the list
        shows: of the server's own list if ``main``, and of the networks'
        lists named by ``(appservice_id, network_id)`` (a network ID of
        None: every network of that service), each room once.
        """
        return await self._read(
            functools.partial(_listed_rooms, main=main, networks=tuple(networks))
        )


@registered_write
def _set_profile(
    conn: sqlite3.Connection, *, user_id: str, displayname: str | None, avatar_url: str | None
) -> None:
    conn.execute(
        "INSERT INTO profiles (user_id, displayname, avatar_url) VALUES (?, ?, ?)"
        " ON CONFLICT (user_id) DO UPDATE SET displayname = excluded.displayname,"
        " avatar_url = excluded.avatar_url",
        (user_id, displayname, avatar_url),
    )


def _user_directory(conn: sqlite3.Connection, *, user_id: str) -> dict[str, str]:
    # The rooms whose members anyone may find, as the spec has them: a
    # public join rule or world-readable history, whether or not the room is
    # published in the room list. Only rooms a user of ours is still joined
    # to count: the state of a room this server left is where it stopped.
    # Both keys survive a redaction, so the stored JSON is read as it is.
    rows = conn.execute(
        "WITH joined AS ("
        "  SELECT s.room_id, s.state_key FROM current_state AS s"
        "  JOIN events AS j ON j.event_id = s.event_id"
        "  WHERE s.type = 'm.room.member'"
        "  AND json_extract(CAST(j.json AS TEXT), '$.content.membership') = 'join'"
        "), public AS ("
        "  SELECT p.room_id FROM current_state AS p JOIN events AS r ON r.event_id = p.event_id"
        "  WHERE p.state_key = '' AND ("
        "   (p.type = 'm.room.join_rules'"
        "    AND json_extract(CAST(r.json AS TEXT), '$.content.join_rule') = 'public')"
        "   OR (p.type = 'm.room.history_visibility'"
        "    AND json_extract(CAST(r.json AS TEXT), '$.content.history_visibility')"
        "     = 'world_readable'))"
        "  AND p.room_id IN (SELECT room_id FROM joined"
        "   WHERE state_key IN (SELECT user_id FROM users))"
        ")"
        f" SELECT {_EVENT_COLUMNS} FROM current_state AS m"
        " JOIN events AS e ON e.event_id = m.event_id"
        " WHERE m.type = 'm.room.member'"
        " AND json_extract(CAST(e.json AS TEXT), '$.content.membership') = 'join'"
        " AND (m.room_id IN (SELECT room_id FROM public)"
        "  OR m.room_id IN (SELECT room_id FROM joined WHERE state_key = ?))"
        # A deactivated user of ours is found no more, as on Synapse, even
        # in a room their deactivation could not leave yet.
        " AND m.state_key NOT IN (SELECT user_id FROM users WHERE deactivated = 1)",
        (user_id,),
    ).fetchall()
    # As served: a display name removed by a redaction is found no more.
    members = served(conn, [stored_event_from_row(row) for row in rows])
    found = {
        str(event.state_key): bytes(event.json).decode()
        for event in members
        if event.state_key is not None
    }
    # A user of this server is shown as their profile has them: a name or
    # avatar set in one room alone stays in that room, whoever searches.
    profiles = conn.execute(
        "SELECT user_id, displayname, avatar_url FROM profiles"
        " WHERE user_id IN (SELECT value FROM json_each(?))",
        (msgspec.json.encode(list(found)).decode(),),
    ).fetchall()
    for member, displayname, avatar_url in profiles:
        content = {"displayname": displayname, "avatar_url": avatar_url}
        found[str(member)] = msgspec.json.encode({"content": content}).decode()
    return found


@registered_write
def _put_account_data(
    conn: sqlite3.Connection, *, user_id: str, room_id: str, data_type: str, content: bytes
) -> int:
    conn.execute(
        "DELETE FROM account_data WHERE user_id = ? AND room_id = ? AND type = ?",
        (user_id, room_id, data_type),
    )
    cursor = conn.execute(
        "INSERT INTO account_data (user_id, room_id, type, content) VALUES (?, ?, ?, ?)",
        (user_id, room_id, data_type, content),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


@registered_write
def _replace_account_data(
    conn: sqlite3.Connection,
    *,
    user_id: str,
    room_id: str,
    data_type: str,
    content: bytes,
    expected: bytes | None,
) -> int | None:
    held = _get_account_data(conn, user_id=user_id, room_id=room_id, data_type=data_type)
    if held != expected:
        return None
    return _put_account_data(
        conn, user_id=user_id, room_id=room_id, data_type=data_type, content=content
    )


def _get_account_data(
    conn: sqlite3.Connection, *, user_id: str, room_id: str, data_type: str
) -> bytes | None:
    row = conn.execute(
        "SELECT content FROM account_data WHERE user_id = ? AND room_id = ? AND type = ?",
        (user_id, room_id, data_type),
    ).fetchone()
    return None if row is None else bytes(row[0])


def _account_data_position(conn: sqlite3.Connection) -> int:
    # The sequence, not max(stream_id): the newest entry may have been
    # replaced since, and positions must not go back.
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'account_data'").fetchone()
    return 0 if row is None else int(row[0])


def _account_data_changes(
    conn: sqlite3.Connection, *, user_id: str, after: int, upto: int
) -> list[AccountDataChange]:
    rows = conn.execute(
        "SELECT stream_id, room_id, type, content FROM account_data"
        " WHERE user_id = ? AND stream_id > ? AND stream_id <= ? ORDER BY stream_id",
        (user_id, after, upto),
    ).fetchall()
    return [AccountDataChange(int(a), str(b), str(c), bytes(d)) for a, b, c, d in rows]


def _get_devices(conn: sqlite3.Connection, *, user_id: str) -> list[DeviceRecord]:
    rows = conn.execute(
        "SELECT device_id, display_name, last_seen_ts FROM devices WHERE user_id = ?"
        " ORDER BY device_id",
        (user_id,),
    ).fetchall()
    return [DeviceRecord(str(a), b, c) for a, b, c in rows]


@registered_write
def _set_device_display_name(
    conn: sqlite3.Connection, *, user_id: str, device_id: str, display_name: str
) -> bool:
    cursor = conn.execute(
        "UPDATE devices SET display_name = ? WHERE user_id = ? AND device_id = ?",
        (display_name, user_id, device_id),
    )
    return cursor.rowcount > 0


@registered_write
def _set_room_listed(conn: sqlite3.Connection, *, room_id: str, listed: bool, now_ms: int) -> None:
    if listed:
        conn.execute(
            "INSERT INTO room_list (room_id, added_ts) VALUES (?, ?)"
            " ON CONFLICT (room_id) DO NOTHING",
            (room_id, now_ms),
        )
    else:
        conn.execute("DELETE FROM room_list WHERE room_id = ?", (room_id,))


@registered_write
def _set_room_listed_in_network(
    conn: sqlite3.Connection,
    *,
    appservice_id: str,
    network_id: str,
    room_id: str,
    listed: bool,
    now_ms: int,
) -> None:
    if listed:
        conn.execute(
            "INSERT INTO appservice_room_list (appservice_id, network_id, room_id, added_ts)"
            " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (appservice_id, network_id, room_id, now_ms),
        )
    else:
        conn.execute(
            "DELETE FROM appservice_room_list"
            " WHERE appservice_id = ? AND network_id = ? AND room_id = ?",
            (appservice_id, network_id, room_id),
        )


def _is_room_listed(conn: sqlite3.Connection, *, room_id: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM room_list WHERE room_id = ?", (room_id,)).fetchone() is not None
    )


def _room_exists(conn: sqlite3.Connection, *, room_id: str) -> bool:
    return conn.execute("SELECT 1 FROM rooms WHERE room_id = ?", (room_id,)).fetchone() is not None


def _listed_room_ids(
    conn: sqlite3.Connection, *, main: bool, networks: tuple[tuple[str, str | None], ...]
) -> list[str]:
    room_ids: dict[str, None] = {}
    if main:
        room_ids.update(
            (str(row[0]), None) for row in conn.execute("SELECT room_id FROM room_list")
        )
    for appservice_id, network_id in networks:
        if network_id is None:
            rows = conn.execute(
                "SELECT room_id FROM appservice_room_list WHERE appservice_id = ?",
                (appservice_id,),
            )
        else:
            rows = conn.execute(
                "SELECT room_id FROM appservice_room_list"
                " WHERE appservice_id = ? AND network_id = ?",
                (appservice_id, network_id),
            )
        room_ids.update((str(row[0]), None) for row in rows)
    return list(room_ids)


def _listed_rooms(
    conn: sqlite3.Connection, *, main: bool, networks: tuple[tuple[str, str | None], ...]
) -> list[PublicRoomState]:
    listed: list[PublicRoomState] = []
    room_ids = _listed_room_ids(conn, main=main, networks=networks)
    marks = ", ".join("?" for _ in PUBLIC_ROOM_STATE)
    for room_id in room_ids:
        state: dict[str, dict[str, Any]] = {}
        rows = conn.execute(
            "SELECT s.type, s.event_id FROM current_state AS s"
            f" WHERE s.room_id = ? AND s.state_key = '' AND s.type IN ({marks})",
            (room_id, *PUBLIC_ROOM_STATE),
        ).fetchall()
        # As served: a redacted name or topic is not listed for anyone to read.
        events = served_events(conn, [str(event_id) for _, event_id in rows])
        for event_type, event_id in rows:
            event = events.get(str(event_id))
            if event is None:
                continue
            try:
                state[str(event_type)] = _decode_event(event.json).content
            except msgspec.ValidationError:
                continue
        (joined,) = conn.execute(
            "SELECT count(*) FROM current_state AS s JOIN events AS e ON e.event_id = s.event_id"
            " WHERE s.room_id = ? AND s.type = 'm.room.member'"
            " AND json_extract(CAST(e.json AS TEXT), '$.content.membership') = 'join'",
            (room_id,),
        ).fetchone()
        if joined:
            listed.append(PublicRoomState(room_id, state, int(joined)))
    return listed
