"""Other servers' users' device lists, kept here so that ``/keys/query``
need not ask their servers each time.

Tables (the schema's ``_remote_device_lists`` migration)
--------------------------------------------------------

``remote_device_lists`` has a row per user: the ``stream_id`` of the
newest update heard of (applied, unless the row is stale), the master and
self-signing keys, ``filled_at`` (the events stream position read before
the list was fetched) and ``stale``. ``remote_device_keys`` holds each
device's keys as the user's server served them, and the display name it
gave beside them, if any (``display_name``, schema 58; bounded by the
caller, :mod:`ranvier.core.remote_device_lists`).

Invariants
----------

* **A fresh row is the user's list as of its stream_id.** A fetched list
  replaces the row whole; an update is applied only when it follows what
  the row holds: it names ``prev_id`` s and every one is at or below the
  row's ``stream_id``. An update that does not follow marks the row stale, and
  ``stream_id`` then holds the newest update heard of, so that a fetch
  begun before it arrived leaves the row stale.
* **A row is used only while its user has shared a room with this server
  without a break since it was filled**: a room whose current state has
  the user and one of ours joined by member events at or before
  ``filled_at``. After a break, updates may have been missed; the row is
  fetched again. Nothing is written on the event path for this.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .membership_sql import MEMBERSHIP
from .readers import ReaderPool
from .write_backend import WriteBackend, registered_write

__all__ = ["CachedDeviceList", "RemoteDeviceListStorage", "RemoteDeviceLookup", "UpdateOutcome"]


#: What became of an ``m.device_list_update``: applied to a fresh row,
#: ignored as one already heard of, the row marked (or left) stale, or a
#: stale row made for a user with none.
UpdateOutcome = Literal["applied", "repeat", "stale", "placeholder"]


@dataclass(frozen=True, slots=True)
class CachedDeviceList:
    """A user's device list as kept: each device's keys and the
    cross-signing keys, JSON as served, and the display names given of
    the devices that have one.
    """

    stream_id: int
    devices: dict[str, bytes]
    master_key: bytes | None
    self_signing_key: bytes | None
    #: By device ID, only of devices in ``devices``.
    display_names: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RemoteDeviceLookup:
    """What a query needs to know of other servers' users."""

    #: The events stream position, read before any fetch this query makes.
    position: int
    #: The users who share a room with this server now.
    shared: set[str]
    #: The fresh rows usable now, by user.
    usable: dict[str, CachedDeviceList]


class RemoteDeviceListStorage:
    """The kept device lists over the write backend and the reader pool."""

    def __init__(self, writer: WriteBackend, readers: ReaderPool) -> None:
        self._writer = writer
        self._readers = readers

    async def lookup(self, user_ids: Collection[str], server_name: str) -> RemoteDeviceLookup:
        """Of ``user_ids`` (other servers' users), who shares a room with
        ``server_name`` (this server) and whose rows may answer now.
        """
        return await self._readers.read(
            functools.partial(_lookup, user_ids=sorted(set(user_ids)), server_name=server_name)
        )

    async def store(
        self,
        user_id: str,
        listed: CachedDeviceList,
        *,
        filled_at: int,
    ) -> bool:
        """Keep a list fetched from the user's server; whether it is fresh
        (no newer update was heard of while it was fetched).
        """
        return await self._writer.submit(
            functools.partial(
                _store,
                user_id=user_id,
                stream_id=listed.stream_id,
                devices=[
                    (device_id, keys, listed.display_names.get(device_id))
                    for device_id, keys in sorted(listed.devices.items())
                ],
                master_key=listed.master_key,
                self_signing_key=listed.self_signing_key,
                filled_at=filled_at,
            )
        )

    async def apply_update(
        self,
        user_id: str,
        *,
        device_id: str,
        stream_id: int,
        prev_ids: Sequence[int],
        deleted: bool,
        keys: bytes | None,
        display_name: str | None = None,
    ) -> UpdateOutcome:
        """Apply an ``m.device_list_update`` (``keys`` None: a device
        not held has no keys yet and stays out of the list; one held with
        keys makes the row stale, as its keys are not known from it). The
        device's ``display_name`` is replaced with the one it gives, or
        with none.
        """
        return await self._writer.submit(
            functools.partial(
                _apply_update,
                user_id=user_id,
                device_id=device_id,
                stream_id=stream_id,
                prev_ids=list(prev_ids),
                deleted=deleted,
                keys=keys,
                display_name=display_name,
            )
        )

    async def replace_signing_keys(
        self, user_id: str, *, master_key: bytes | None, self_signing_key: bytes | None
    ) -> bool:
        """Replace the keys given of a kept list; False when none is kept."""
        return await self._writer.submit(
            functools.partial(
                _replace_signing_keys,
                user_id=user_id,
                master_key=master_key,
                self_signing_key=self_signing_key,
            )
        )

    async def entry(self, user_id: str) -> tuple[CachedDeviceList, bool] | None:
        """The row kept for ``user_id`` and whether it is stale, shared or
        not: for tests and the admin's eye.
        """
        return await self._readers.read(functools.partial(_entry, user_id=user_id))


def _entry(conn: sqlite3.Connection, *, user_id: str) -> tuple[CachedDeviceList, bool] | None:
    row = conn.execute(
        "SELECT stream_id, master_key, self_signing_key, stale FROM remote_device_lists"
        " WHERE user_id = ?",
        (user_id,),
    ).fetchone()
    if row is None:
        return None
    stream_id, master_key, self_signing_key, stale = row
    devices: dict[str, bytes] = {}
    names: dict[str, str] = {}
    for device_id, key_json, display_name in conn.execute(
        "SELECT device_id, key_json, display_name FROM remote_device_keys WHERE user_id = ?",
        (user_id,),
    ):
        devices[str(device_id)] = bytes(key_json)
        if display_name is not None:
            names[str(device_id)] = str(display_name)
    listed = CachedDeviceList(
        int(stream_id),
        devices,
        None if master_key is None else bytes(master_key),
        None if self_signing_key is None else bytes(self_signing_key),
        names,
    )
    return listed, bool(stale)


def _joined_rooms(conn: sqlite3.Connection, user_id: str) -> list[tuple[str, int]]:
    """The rooms ``user_id`` is joined to now, with the stream ordering of
    the member event that says so.
    """
    return [
        (str(room_id), int(ordering))
        for room_id, ordering in conn.execute(
            "SELECT cs.room_id, e.stream_ordering FROM current_state AS cs"
            " JOIN events AS e ON e.event_id = cs.event_id"
            f" WHERE cs.type = 'm.room.member' AND cs.state_key = ? AND {MEMBERSHIP} = 'join'",
            (user_id,),
        )
    ]


def _first_local_join(conn: sqlite3.Connection, room_id: str, server_name: str) -> int | None:
    """The lowest stream ordering of the member events of this server's
    users joined to ``room_id`` now; None when none is.
    """
    suffix = f":{server_name}"
    row = conn.execute(
        "SELECT MIN(e.stream_ordering) FROM current_state AS cs"
        " JOIN events AS e ON e.event_id = cs.event_id"
        " WHERE cs.room_id = ? AND cs.type = 'm.room.member'"
        " AND substr(cs.state_key, -?) = ?"
        f" AND {MEMBERSHIP} = 'join'",
        (room_id, len(suffix), suffix),
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _lookup(
    conn: sqlite3.Connection, *, user_ids: list[str], server_name: str
) -> RemoteDeviceLookup:
    (position,) = conn.execute("SELECT COALESCE(MAX(stream_ordering), 0) FROM events").fetchone()
    local_first: dict[str, int | None] = {}
    shared: set[str] = set()
    usable: dict[str, CachedDeviceList] = {}
    for user_id in user_ids:
        rooms: list[tuple[int, int]] = []
        for room_id, ordering in _joined_rooms(conn, user_id):
            if room_id not in local_first:
                local_first[room_id] = _first_local_join(conn, room_id, server_name)
            first = local_first[room_id]
            if first is not None:
                rooms.append((ordering, first))
        if not rooms:
            continue
        shared.add(user_id)
        row = conn.execute(
            "SELECT filled_at FROM remote_device_lists WHERE user_id = ? AND stale = 0",
            (user_id,),
        ).fetchone()
        if row is None:
            continue
        filled_at = int(row[0])
        if any(theirs <= filled_at and ours <= filled_at for theirs, ours in rooms):
            found = _entry(conn, user_id=user_id)
            assert found is not None
            usable[user_id] = found[0]
    return RemoteDeviceLookup(int(position), shared, usable)


@registered_write
def _store(
    conn: sqlite3.Connection,
    *,
    user_id: str,
    stream_id: int,
    devices: list[tuple[str, bytes, str | None]],
    master_key: bytes | None,
    self_signing_key: bytes | None,
    filled_at: int,
) -> bool:
    row = conn.execute(
        "SELECT stream_id FROM remote_device_lists WHERE user_id = ?", (user_id,)
    ).fetchone()
    heard = stream_id if row is None else max(int(row[0]), stream_id)
    fresh = heard == stream_id
    conn.execute(
        "INSERT INTO remote_device_lists"
        " (user_id, stream_id, master_key, self_signing_key, filled_at, stale)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET"
        " stream_id = excluded.stream_id, master_key = excluded.master_key,"
        " self_signing_key = excluded.self_signing_key, filled_at = excluded.filled_at,"
        " stale = excluded.stale",
        (user_id, heard, master_key, self_signing_key, filled_at, 0 if fresh else 1),
    )
    conn.execute("DELETE FROM remote_device_keys WHERE user_id = ?", (user_id,))
    conn.executemany(
        "INSERT INTO remote_device_keys (user_id, device_id, key_json, display_name)"
        " VALUES (?, ?, ?, ?)",
        [(user_id, device_id, key_json, name) for device_id, key_json, name in devices],
    )
    return fresh


def _mark_stale(conn: sqlite3.Connection, user_id: str, stream_id: int) -> None:
    conn.execute(
        "UPDATE remote_device_lists SET stale = 1, stream_id = max(stream_id, ?) WHERE user_id = ?",
        (stream_id, user_id),
    )


@registered_write
def _apply_update(
    conn: sqlite3.Connection,
    *,
    user_id: str,
    device_id: str,
    stream_id: int,
    prev_ids: list[int],
    deleted: bool,
    keys: bytes | None,
    display_name: str | None = None,
) -> UpdateOutcome:
    row = conn.execute(
        "SELECT stream_id, stale FROM remote_device_lists WHERE user_id = ?", (user_id,)
    ).fetchone()
    if row is None:
        # Heard of before the list is fetched: a fetch under way when this
        # arrived must not leave its older list fresh.
        conn.execute(
            "INSERT INTO remote_device_lists"
            " (user_id, stream_id, master_key, self_signing_key, filled_at, stale)"
            " VALUES (?, ?, NULL, NULL, 0, 1)",
            (user_id, stream_id),
        )
        return "placeholder"
    held, stale = int(row[0]), bool(row[1])
    # Updates of several devices made at once share a stream_id, each
    # after the first naming it as prev_id; the same ID otherwise is the
    # update again.
    if stream_id < held or (stream_id == held and prev_ids != [held]):
        return "repeat"
    # A prev_id at or below the row's stream_id is known: the fetched list
    # covers every update up to its stream_id, and an update applied since
    # was checked the same way. None at all starts a new sequence, which
    # nothing here links to what is held.
    follows = bool(prev_ids) and all(prev_id <= held for prev_id in prev_ids)
    # No keys for a device held with keys: a server may leave them out of
    # a rename, so they are fetched again rather than dropped. A device
    # not held (new, with no keys uploaded yet) stays out of the list, as
    # a fetched list leaves it out.
    unknown = keys is None and not deleted and _holds_keys(conn, user_id, device_id)
    if stale or not follows or unknown:
        _mark_stale(conn, user_id, stream_id)
        return "stale"
    if deleted or keys is None:
        conn.execute(
            "DELETE FROM remote_device_keys WHERE user_id = ? AND device_id = ?",
            (user_id, device_id),
        )
    else:
        conn.execute(
            "INSERT INTO remote_device_keys (user_id, device_id, key_json, display_name)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (user_id, device_id) DO UPDATE SET"
            " key_json = excluded.key_json, display_name = excluded.display_name",
            (user_id, device_id, keys, display_name),
        )
    conn.execute(
        "UPDATE remote_device_lists SET stream_id = ? WHERE user_id = ?", (stream_id, user_id)
    )
    return "applied"


def _holds_keys(conn: sqlite3.Connection, user_id: str, device_id: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM remote_device_keys WHERE user_id = ? AND device_id = ?",
        (user_id, device_id),
    ).fetchone()
    return row is not None


@registered_write
def _replace_signing_keys(
    conn: sqlite3.Connection,
    *,
    user_id: str,
    master_key: bytes | None,
    self_signing_key: bytes | None,
) -> bool:
    cursor = conn.execute(
        "UPDATE remote_device_lists SET master_key = coalesce(?, master_key),"
        " self_signing_key = coalesce(?, self_signing_key) WHERE user_id = ?",
        (master_key, self_signing_key, user_id),
    )
    return cursor.rowcount > 0
