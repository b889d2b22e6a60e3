"""Dehydrated devices (MSC3814): each user's one device kept on the server
for a later login to rehydrate, with its keys and the to-device messages
waiting for it.

Table (the schema's ``_dehydrated_devices`` migration)
-------------------------------------------------------

``dehydrated_devices`` holds, per user, the device's ID and the client's
``device_data`` JSON; the device itself is a row of ``devices`` without an
access token, and its keys and messages are those of any device
(:mod:`ranvier.storage.e2e_keys`). ``upload_id``, ``replaced`` and the
two positions record the upload that made the row and what it answered.

Invariants
----------

* **One dehydrated device per user.** Storing one deletes the previous
  one in the same write: its ``devices`` row, keys and waiting messages.
* **A dehydrated device has no access token.** Its ID may not be one of
  the user's other devices; and a device that has come to hold a token
  (a login naming its ID) is no longer treated as dehydrated: it is
  neither returned nor deleted as such.
* **An upload is stored once.** Its ``upload_id``, drawn by the request,
  is kept with the row: the same write run again (a worker's write
  repeated after the main process restarted) finds it and answers as the
  first run did, so one-time keys claimed in between are not put back.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from ranvier.errors import MatrixError

from .e2e_keys import forget_device_keys, store_device_keys
from .readers import ReaderPool
from .write_backend import WriteBackend, registered_write

__all__ = ["DehydratedDeviceStorage", "DehydratedUpload", "StoredDehydration"]

#: The device of a user's ``dehydrated_devices`` row, while it exists and
#: holds no access token.
_CURRENT: Final = (
    "SELECT dd.device_id, dd.device_data FROM dehydrated_devices AS dd"
    " JOIN devices AS d ON d.user_id = dd.user_id AND d.device_id = dd.device_id"
    " WHERE dd.user_id = ? AND NOT EXISTS (SELECT 1 FROM access_tokens AS t"
    " WHERE t.user_id = dd.user_id AND t.device_id = dd.device_id)"
)


@dataclass(frozen=True, slots=True)
class DehydratedUpload:
    """A dehydrated device to store, its keys checked and encoded as
    ``/keys/upload`` stores them."""

    user_id: str
    device_id: str
    display_name: str | None
    #: The client's ``device_data`` object as JSON.
    device_data: bytes
    device_keys: bytes
    #: ``(algorithm, key ID, JSON)`` of each key.
    one_time_keys: Sequence[tuple[str, str, bytes]]
    fallback_keys: Sequence[tuple[str, str, bytes]]
    #: Drawn by the request, so that the write run twice is recognised.
    upload_id: str
    created_ts: int


@dataclass(frozen=True, slots=True)
class StoredDehydration:
    """What storing a dehydrated device changed."""

    #: The previous dehydrated device, deleted (None: none, or the same ID).
    replaced: str | None
    #: The device-list position of the previous device's deletion, if any.
    replaced_position: int | None
    #: The device-list position of the new device's keys.
    position: int


class DehydratedDeviceStorage:
    """Dehydrated devices over the write backend and the reader pool."""

    def __init__(self, writer: WriteBackend, readers: ReaderPool) -> None:
        self._writer = writer
        self._readers = readers

    async def dehydrated_device(self, user_id: str) -> tuple[str, bytes] | None:
        """The user's dehydrated device: its ID and ``device_data`` JSON."""
        return await self._readers.read(functools.partial(_current, user_id=user_id))

    async def store_dehydrated_device(self, upload: DehydratedUpload) -> StoredDehydration:
        """Create the device with its keys, replacing the user's previous
        dehydrated device, in one write. ``M_INVALID_PARAM`` (nothing
        written) when the ID is one of the user's other devices.
        """
        return await self._writer.submit(
            functools.partial(
                _store_dehydrated_device,
                user_id=upload.user_id,
                device_id=upload.device_id,
                display_name=upload.display_name,
                device_data=upload.device_data,
                device_keys=upload.device_keys,
                one_time_keys=list(upload.one_time_keys),
                fallback_keys=list(upload.fallback_keys),
                upload_id=upload.upload_id,
                created_ts=upload.created_ts,
            )
        )

    async def delete_dehydrated_device(self, user_id: str) -> tuple[str, int] | None:
        """Delete the user's dehydrated device with its keys and messages:
        its ID and the device-list position, or None when there was none.
        """
        return await self._writer.submit(
            functools.partial(_delete_dehydrated_device, user_id=user_id)
        )

    async def dehydrated_device_messages(
        self, user_id: str, after: int, limit: int
    ) -> tuple[str, list[tuple[int, bytes]]] | None:
        """The user's dehydrated device's ID and its messages after ``after``
        (``(position, JSON)``, oldest first, at most ``limit``), read
        together; None without a dehydrated device.
        """
        return await self._readers.read(
            functools.partial(_messages, user_id=user_id, after=after, limit=limit)
        )


def _current(conn: sqlite3.Connection, *, user_id: str) -> tuple[str, bytes] | None:
    row = conn.execute(_CURRENT, (user_id,)).fetchone()
    return None if row is None else (str(row[0]), bytes(row[1]))


def _delete_device(conn: sqlite3.Connection, user_id: str, device_id: str) -> int | None:
    """Delete a dehydrated device with its keys and messages; the
    device-list position, or None when it is gone or holds a token now.
    """
    deleted = conn.execute(
        "DELETE FROM devices WHERE user_id = ? AND device_id = ? AND NOT EXISTS"
        " (SELECT 1 FROM access_tokens WHERE user_id = ? AND device_id = ?)",
        (user_id, device_id, user_id, device_id),
    ).rowcount
    if not deleted:
        return None
    return forget_device_keys(conn, user_id=user_id, device_ids=[device_id])


@registered_write
def _store_dehydrated_device(
    conn: sqlite3.Connection,
    *,
    user_id: str,
    device_id: str,
    display_name: str | None,
    device_data: bytes,
    device_keys: bytes,
    one_time_keys: list[tuple[str, str, bytes]],
    fallback_keys: list[tuple[str, str, bytes]],
    upload_id: str,
    created_ts: int,
) -> StoredDehydration:
    row = conn.execute(
        "SELECT device_id, upload_id, replaced, replaced_position, position"
        " FROM dehydrated_devices WHERE user_id = ?",
        (user_id,),
    ).fetchone()
    if row is not None and row[1] == upload_id:
        return StoredDehydration(
            None if row[2] is None else str(row[2]),
            None if row[3] is None else int(row[3]),
            int(row[4]),
        )
    previous = None if row is None else str(row[0])
    replaced = replaced_position = None
    if previous is not None:
        replaced_position = _delete_device(conn, user_id, previous)
        if replaced_position is not None and previous != device_id:
            replaced = previous
    taken = conn.execute(
        "SELECT 1 FROM devices WHERE user_id = ? AND device_id = ?", (user_id, device_id)
    ).fetchone()
    if taken is not None:
        raise MatrixError(
            f"{device_id!r} is the ID of another device of {user_id}",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
    conn.execute(
        "INSERT INTO devices (user_id, device_id, display_name, created_ts, last_seen_ts)"
        " VALUES (?, ?, ?, ?, NULL)",
        (user_id, device_id, display_name, created_ts),
    )
    # Keys left by a device of this ID deleted without being forgotten
    # must not be served as the new device's.
    forget_device_keys(conn, user_id=user_id, device_ids=[device_id])
    _, position = store_device_keys(
        conn,
        user_id=user_id,
        device_id=device_id,
        device_keys=device_keys,
        one_time_keys=one_time_keys,
        fallback_keys=fallback_keys,
    )
    assert position is not None  # the keys were just forgotten
    if replaced is None:
        replaced_position = None
    conn.execute(
        "INSERT OR REPLACE INTO dehydrated_devices (user_id, device_id, device_data, upload_id,"
        " replaced, replaced_position, position) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (user_id, device_id, device_data, upload_id, replaced, replaced_position, position),
    )
    return StoredDehydration(replaced, replaced_position, position)


@registered_write
def _delete_dehydrated_device(conn: sqlite3.Connection, *, user_id: str) -> tuple[str, int] | None:
    row = conn.execute(
        "DELETE FROM dehydrated_devices WHERE user_id = ? RETURNING device_id", (user_id,)
    ).fetchone()
    if row is None:
        return None
    device_id = str(row[0])
    position = _delete_device(conn, user_id, device_id)
    return None if position is None else (device_id, position)


def _messages(
    conn: sqlite3.Connection, *, user_id: str, after: int, limit: int
) -> tuple[str, list[tuple[int, bytes]]] | None:
    current = _current(conn, user_id=user_id)
    if current is None:
        return None
    device_id = current[0]
    messages = [
        (int(stream_id), bytes(message))
        for stream_id, message in conn.execute(
            "SELECT stream_id, message FROM to_device_inbox"
            " WHERE user_id = ? AND device_id = ? AND stream_id > ? ORDER BY stream_id LIMIT ?",
            (user_id, device_id, after, limit),
        )
    ]
    return device_id, messages
