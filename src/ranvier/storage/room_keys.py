"""Server-side key backups: users' backup versions and the encrypted room
keys stored in them.

Tables (the schema's ``_room_key_backups`` migration)
-----------------------------------------------------

``room_key_backup_versions`` holds each user's backup versions, numbered
from 1 per user, with the ``auth_data`` JSON the client gave and an etag
counter; ``room_key_backup_keys`` the keys of a version per room and
session, ``session_data`` as the client's JSON.

Invariants
----------

* **A version number is handed out once per user.** Deleting a version
  marks it and deletes its keys; the row stays, so the next version is
  numbered above it and a client holding the old number is told it is
  gone.
* **The current version is the newest one not deleted**, and keys are
  written to it alone: an upload naming another version writes nothing.
* **A stored key is replaced only by a better one**, by the
  specification's order: a verified key beats an unverified one; between
  keys alike in that, the lower ``first_message_index`` wins; then the
  lower ``forwarded_count``. A key no better than the one held leaves it.
* **The etag moves exactly when the version's keys change**: in the write
  that changed them, once per write. An upload that replaces nothing or a
  delete that finds nothing leaves it.
* **A write is one transaction**: an upload of many keys stores all that
  win or none, and each write survives being run twice (a worker's write
  repeated after the main process restarted, see docs/decisions.md): a
  version's creation recognises its own row, the rest leave the database
  as the first run did.
"""

from __future__ import annotations

import functools
import sqlite3
from dataclasses import dataclass
from typing import Literal

from .readers import ReaderPool
from .write_backend import WriteBackend, registered_write

__all__ = ["BackupKeysWrite", "BackupVersion", "RoomKey", "RoomKeyStorage"]


@dataclass(frozen=True, slots=True)
class RoomKey:
    """One session's key in a backup."""

    room_id: str
    session_id: str
    first_message_index: int
    forwarded_count: int
    is_verified: bool
    #: The client's ``session_data`` object as JSON.
    session_data: bytes


@dataclass(frozen=True, slots=True)
class BackupVersion:
    """A backup version as ``GET /room_keys/version`` shows it."""

    version: int
    algorithm: str
    #: The client's ``auth_data`` object as JSON.
    auth_data: bytes
    etag: int
    #: How many keys the version holds.
    count: int


@dataclass(frozen=True, slots=True)
class BackupKeysWrite:
    """What a write of a version's keys found and left.

    ``outcome`` is ``written`` when the write ran (``etag`` and ``count``
    are then the version's after it), ``unknown`` when the user has no such
    version (or it was deleted), ``not current`` when keys were uploaded to
    a version other than the current one (``current_version``). Only
    ``written`` wrote anything.
    """

    outcome: Literal["written", "unknown", "not current"]
    etag: int = 0
    count: int = 0
    current_version: int | None = None


class RoomKeyStorage:
    """Backup versions and their keys over the write backend and the reader pool."""

    def __init__(self, writer: WriteBackend, readers: ReaderPool) -> None:
        self._writer = writer
        self._readers = readers

    async def create_version(
        self, user_id: str, *, algorithm: str, auth_data: bytes, creation_id: str
    ) -> int:
        """A new version of ``user_id``'s backup, which becomes the current
        one; its number. ``creation_id`` is a random string drawn for this
        creation: the write run again with it answers the version it made.
        """
        return await self._writer.submit(
            functools.partial(
                _create_version,
                user_id=user_id,
                algorithm=algorithm,
                auth_data=auth_data,
                creation_id=creation_id,
            )
        )

    async def version(self, user_id: str, version: int | None = None) -> BackupVersion | None:
        """``user_id``'s backup ``version`` (the current one when None), or
        None when there is no such version or it was deleted.
        """
        return await self._readers.read(
            functools.partial(_read_version, user_id=user_id, version=version)
        )

    async def update_version(
        self, user_id: str, version: int, *, algorithm: str, auth_data: bytes
    ) -> str | None:
        """Replace the ``auth_data`` of a version whose algorithm is
        ``algorithm``. Returns the version's algorithm (when it differs from
        ``algorithm``, nothing was written), or None when there is no such
        version or it was deleted.
        """
        return await self._writer.submit(
            functools.partial(
                _update_version,
                user_id=user_id,
                version=version,
                algorithm=algorithm,
                auth_data=auth_data,
            )
        )

    async def delete_version(self, user_id: str, version: int) -> bool:
        """Delete a version and its keys; whether the user ever had it (a
        version deleted before is deleted still).
        """
        return await self._writer.submit(
            functools.partial(_delete_version, user_id=user_id, version=version)
        )

    async def upload_keys(self, user_id: str, version: int, keys: list[RoomKey]) -> BackupKeysWrite:
        """Store ``keys`` in the current version, each where it beats the
        key held for its session (see the module's invariants).
        """
        return await self._writer.submit(
            functools.partial(_upload_keys, user_id=user_id, version=version, keys=keys)
        )

    async def delete_keys(
        self,
        user_id: str,
        version: int,
        *,
        room_id: str | None = None,
        session_id: str | None = None,
    ) -> BackupKeysWrite:
        """Delete a version's keys: all of them, a room's (``room_id``) or
        one session's (``room_id`` and ``session_id``). Any version not
        deleted may lose keys, the current one or an older one.
        """
        return await self._writer.submit(
            functools.partial(
                _delete_keys,
                user_id=user_id,
                version=version,
                room_id=room_id,
                session_id=session_id,
            )
        )

    async def keys(
        self,
        user_id: str,
        version: int,
        *,
        room_id: str | None = None,
        session_id: str | None = None,
    ) -> list[RoomKey] | None:
        """A version's keys (all, a room's or one session's), in room and
        session order; None when there is no such version or it was deleted.
        """
        return await self._readers.read(
            functools.partial(
                _read_keys, user_id=user_id, version=version, room_id=room_id, session_id=session_id
            )
        )


def _current(conn: sqlite3.Connection, user_id: str) -> int | None:
    (version,) = conn.execute(
        "SELECT MAX(version) FROM room_key_backup_versions WHERE user_id = ? AND deleted = 0",
        (user_id,),
    ).fetchone()
    return None if version is None else int(version)


def _live_etag(conn: sqlite3.Connection, user_id: str, version: int) -> int | None:
    """The etag of a version not deleted, None for any other."""
    row = conn.execute(
        "SELECT etag FROM room_key_backup_versions"
        " WHERE user_id = ? AND version = ? AND deleted = 0",
        (user_id, version),
    ).fetchone()
    return None if row is None else int(row[0])


def _count(conn: sqlite3.Connection, user_id: str, version: int) -> int:
    (count,) = conn.execute(
        "SELECT COUNT(*) FROM room_key_backup_keys WHERE user_id = ? AND version = ?",
        (user_id, version),
    ).fetchone()
    return int(count)


def _bump(conn: sqlite3.Connection, user_id: str, version: int) -> int:
    (etag,) = conn.execute(
        "UPDATE room_key_backup_versions SET etag = etag + 1"
        " WHERE user_id = ? AND version = ? RETURNING etag",
        (user_id, version),
    ).fetchone()
    return int(etag)


def _replaces(key: RoomKey, held: tuple[int, int, int]) -> bool:
    """Whether ``key`` beats the held key's ``(first_message_index,
    forwarded_count, is_verified)``.
    """
    first_message_index, forwarded_count, is_verified = held
    if key.is_verified != bool(is_verified):
        return key.is_verified
    if key.first_message_index != first_message_index:
        return key.first_message_index < first_message_index
    return key.forwarded_count < forwarded_count


@registered_write
def _create_version(
    conn: sqlite3.Connection, *, user_id: str, algorithm: str, auth_data: bytes, creation_id: str
) -> int:
    made = conn.execute(
        "SELECT version FROM room_key_backup_versions WHERE user_id = ? AND creation_id = ?",
        (user_id, creation_id),
    ).fetchone()
    if made is not None:
        # This very creation, run again.
        return int(made[0])
    (newest,) = conn.execute(
        "SELECT MAX(version) FROM room_key_backup_versions WHERE user_id = ?", (user_id,)
    ).fetchone()
    version = 1 if newest is None else int(newest) + 1
    conn.execute(
        "INSERT INTO room_key_backup_versions"
        " (user_id, version, algorithm, auth_data, etag, deleted, creation_id)"
        " VALUES (?, ?, ?, ?, 0, 0, ?)",
        (user_id, version, algorithm, auth_data, creation_id),
    )
    return version


@registered_write
def _update_version(
    conn: sqlite3.Connection, *, user_id: str, version: int, algorithm: str, auth_data: bytes
) -> str | None:
    row = conn.execute(
        "SELECT algorithm FROM room_key_backup_versions"
        " WHERE user_id = ? AND version = ? AND deleted = 0",
        (user_id, version),
    ).fetchone()
    if row is None:
        return None
    held = str(row[0])
    if held == algorithm:
        conn.execute(
            "UPDATE room_key_backup_versions SET auth_data = ? WHERE user_id = ? AND version = ?",
            (auth_data, user_id, version),
        )
    return held


@registered_write
def _delete_version(conn: sqlite3.Connection, *, user_id: str, version: int) -> bool:
    row = conn.execute(
        "SELECT deleted FROM room_key_backup_versions WHERE user_id = ? AND version = ?",
        (user_id, version),
    ).fetchone()
    if row is None:
        return False
    conn.execute(
        "DELETE FROM room_key_backup_keys WHERE user_id = ? AND version = ?", (user_id, version)
    )
    conn.execute(
        "UPDATE room_key_backup_versions SET deleted = 1 WHERE user_id = ? AND version = ?",
        (user_id, version),
    )
    return True


@registered_write
def _upload_keys(
    conn: sqlite3.Connection, *, user_id: str, version: int, keys: list[RoomKey]
) -> BackupKeysWrite:
    current = _current(conn, user_id)
    if current != version:
        if current is None or _live_etag(conn, user_id, version) is None:
            return BackupKeysWrite("unknown")
        return BackupKeysWrite("not current", current_version=current)
    changed = False
    for key in keys:
        held = conn.execute(
            "SELECT first_message_index, forwarded_count, is_verified FROM room_key_backup_keys"
            " WHERE user_id = ? AND version = ? AND room_id = ? AND session_id = ?",
            (user_id, version, key.room_id, key.session_id),
        ).fetchone()
        if held is not None and not _replaces(key, held):
            continue
        conn.execute(
            "INSERT OR REPLACE INTO room_key_backup_keys (user_id, version, room_id, session_id,"
            " first_message_index, forwarded_count, is_verified, session_data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                user_id,
                version,
                key.room_id,
                key.session_id,
                key.first_message_index,
                key.forwarded_count,
                int(key.is_verified),
                key.session_data,
            ),
        )
        changed = True
    etag = _bump(conn, user_id, version) if changed else _live_etag(conn, user_id, version)
    assert etag is not None  # the current version is not deleted
    return BackupKeysWrite("written", etag=etag, count=_count(conn, user_id, version))


@registered_write
def _delete_keys(
    conn: sqlite3.Connection,
    *,
    user_id: str,
    version: int,
    room_id: str | None,
    session_id: str | None,
) -> BackupKeysWrite:
    etag = _live_etag(conn, user_id, version)
    if etag is None:
        return BackupKeysWrite("unknown")
    where, args = _narrowed(user_id, version, room_id, session_id)
    deleted = conn.execute(f"DELETE FROM room_key_backup_keys WHERE {where}", args).rowcount
    if deleted:
        etag = _bump(conn, user_id, version)
    return BackupKeysWrite("written", etag=etag, count=_count(conn, user_id, version))


def _narrowed(
    user_id: str, version: int, room_id: str | None, session_id: str | None
) -> tuple[str, tuple[str | int, ...]]:
    """The condition picking a version's keys, a room's or a session's."""
    where = "user_id = ? AND version = ?"
    args: tuple[str | int, ...] = (user_id, version)
    if room_id is not None:
        where += " AND room_id = ?"
        args += (room_id,)
        if session_id is not None:
            where += " AND session_id = ?"
            args += (session_id,)
    return where, args


def _read_version(
    conn: sqlite3.Connection, *, user_id: str, version: int | None
) -> BackupVersion | None:
    if version is None:
        version = _current(conn, user_id)
        if version is None:
            return None
    row = conn.execute(
        "SELECT algorithm, auth_data, etag FROM room_key_backup_versions"
        " WHERE user_id = ? AND version = ? AND deleted = 0",
        (user_id, version),
    ).fetchone()
    if row is None:
        return None
    algorithm, auth_data, etag = row
    return BackupVersion(
        version=version,
        algorithm=str(algorithm),
        auth_data=bytes(auth_data),
        etag=int(etag),
        count=_count(conn, user_id, version),
    )


def _read_keys(
    conn: sqlite3.Connection,
    *,
    user_id: str,
    version: int,
    room_id: str | None,
    session_id: str | None,
) -> list[RoomKey] | None:
    if _live_etag(conn, user_id, version) is None:
        return None
    where, args = _narrowed(user_id, version, room_id, session_id)
    return [
        RoomKey(
            room_id=str(room),
            session_id=str(session),
            first_message_index=int(first_message_index),
            forwarded_count=int(forwarded_count),
            is_verified=bool(is_verified),
            session_data=bytes(session_data),
        )
        for room, session, first_message_index, forwarded_count, is_verified, session_data in (
            conn.execute(
                "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified,"
                f" session_data FROM room_key_backup_keys WHERE {where}"
                " ORDER BY room_id, session_id",
                args,
            )
        )
    ]
