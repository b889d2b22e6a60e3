"""Server-side key backups: ``/room_keys/version`` and ``/room_keys/keys``.

A client backs up the Megolm session keys it holds, encrypted to the
backup's public key, so that a new login can read old messages. The server
cannot read them: it keeps versions of a user's backup and, per session,
the key that the specification's rule prefers (see
:mod:`ranvier.storage.room_keys`).

Invariants
----------

* **A user sees and changes their own backups alone.** Every read and
  write is keyed by the requester; another user's version number is, to
  them, a version that does not exist.
* **A bad request writes nothing.** Bodies are checked whole before the
  one write a request makes, and that write checks the version it names
  in the same transaction as it writes.
* **Versions are opaque strings to clients**: the decimal numbers this
  server hands out. Any other string names no version (404).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from typing import Any, Final, Protocol

import msgspec

from ranvier.errors import BadJsonError, MatrixError
from ranvier.protocol.canonical import CANONICAL_INT_MAX
from ranvier.storage.room_keys import BackupKeysWrite, BackupVersion, RoomKey

__all__ = ["RoomKeyBackups", "RoomKeyStore"]

#: The version numbers this server hands out, as clients see them; SQLite's
#: integers hold any of them.
_VERSION: Final = re.compile(r"[1-9][0-9]{0,17}")

_encoder: Final = msgspec.json.Encoder()


class RoomKeyStore(Protocol):
    """Backup storage (:class:`ranvier.storage.room_keys.RoomKeyStorage`)."""

    async def create_version(
        self, user_id: str, *, algorithm: str, auth_data: bytes, creation_id: str
    ) -> int: ...

    async def version(self, user_id: str, version: int | None = None) -> BackupVersion | None: ...

    async def update_version(
        self, user_id: str, version: int, *, algorithm: str, auth_data: bytes
    ) -> str | None: ...

    async def delete_version(self, user_id: str, version: int) -> bool: ...

    async def upload_keys(
        self, user_id: str, version: int, keys: list[RoomKey]
    ) -> BackupKeysWrite: ...

    async def delete_keys(
        self,
        user_id: str,
        version: int,
        *,
        room_id: str | None = None,
        session_id: str | None = None,
    ) -> BackupKeysWrite: ...

    async def keys(
        self,
        user_id: str,
        version: int,
        *,
        room_id: str | None = None,
        session_id: str | None = None,
    ) -> list[RoomKey] | None: ...


def _unknown_version() -> MatrixError:
    return MatrixError("unknown backup version", errcode="M_NOT_FOUND", http_status=404)


def _version_number(version: str) -> int:
    """The number a version string names; 404 for a string this server
    never handed out."""
    if not _VERSION.fullmatch(version):
        raise _unknown_version()
    return int(version)


def _required_str(body: Mapping[str, Any], name: str) -> str:
    if name not in body:
        raise MatrixError(f"'{name}' is required", errcode="M_MISSING_PARAM", http_status=400)
    value = body[name]
    if not isinstance(value, str) or not value:
        raise BadJsonError(f"'{name}' must be a non-empty string")
    return value


def _required_object(body: Mapping[str, Any], name: str, where: str = "") -> dict[str, Any]:
    if name not in body:
        raise MatrixError(
            f"'{name}' is required{where}", errcode="M_MISSING_PARAM", http_status=400
        )
    value = body[name]
    if not isinstance(value, dict):
        raise BadJsonError(f"'{name}'{where} must be an object")
    return value


def _counter(data: Mapping[str, Any], name: str, where: str) -> int:
    if name not in data:
        raise MatrixError(
            f"'{name}' is required{where}", errcode="M_MISSING_PARAM", http_status=400
        )
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= CANONICAL_INT_MAX:
        raise BadJsonError(f"'{name}'{where} must be an integer from 0 to {CANONICAL_INT_MAX}")
    return value


def _room_key(room_id: str, session_id: str, data: object) -> RoomKey:
    """One session's key data as uploaded, checked."""
    where = f" (room {room_id}, session {session_id})"
    if not isinstance(data, dict):
        raise BadJsonError(f"the key data{where} must be an object")
    if "is_verified" not in data:
        raise MatrixError(
            f"'is_verified' is required{where}", errcode="M_MISSING_PARAM", http_status=400
        )
    verified = data["is_verified"]
    if not isinstance(verified, bool):
        raise BadJsonError(f"'is_verified'{where} must be true or false")
    return RoomKey(
        room_id=room_id,
        session_id=session_id,
        first_message_index=_counter(data, "first_message_index", where),
        forwarded_count=_counter(data, "forwarded_count", where),
        is_verified=verified,
        session_data=_encoder.encode(_required_object(data, "session_data", where)),
    )


def _sessions(room_id: str, backup: object) -> list[RoomKey]:
    """The keys of one room's ``{"sessions": {...}}``."""
    if not isinstance(backup, dict):
        raise BadJsonError(f"the backup of room {room_id} must be an object")
    sessions = _required_object(backup, "sessions", f" for room {room_id}")
    keys = []
    for session_id, data in sessions.items():
        if not session_id:
            raise BadJsonError(f"a session ID of room {room_id} is empty")
        keys.append(_room_key(room_id, session_id, data))
    return keys


def _key_json(key: RoomKey) -> dict[str, Any]:
    return {
        "first_message_index": key.first_message_index,
        "forwarded_count": key.forwarded_count,
        "is_verified": key.is_verified,
        "session_data": msgspec.Raw(key.session_data),
    }


def _keys_written(written: BackupKeysWrite) -> dict[str, Any]:
    """The answer to a write of keys, or the error for what it found."""
    if written.outcome == "unknown":
        raise _unknown_version()
    if written.outcome == "not current":
        raise MatrixError(
            "keys may only be stored in the current backup version",
            errcode="M_WRONG_ROOM_KEYS_VERSION",
            http_status=403,
            current_version=str(written.current_version),
        )
    return {"etag": str(written.etag), "count": written.count}


class RoomKeyBackups:
    """The key backup endpoints, over backup storage."""

    def __init__(self, store: RoomKeyStore) -> None:
        self._store = store

    # Versions.

    async def create_version(self, user_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """A new backup version, current from now on: ``{"version": ...}``."""
        algorithm = _required_str(body, "algorithm")
        auth_data = _encoder.encode(_required_object(body, "auth_data"))
        version = await self._store.create_version(
            user_id,
            algorithm=algorithm,
            auth_data=auth_data,
            # Tells this creation from any other, should its write run twice.
            creation_id=secrets.token_urlsafe(16),
        )
        return {"version": str(version)}

    async def version_info(self, user_id: str, version: str | None = None) -> dict[str, Any]:
        """A version (the current one when None) with its key count and etag;
        404 when there is none."""
        number = None if version is None else _version_number(version)
        found = await self._store.version(user_id, number)
        if found is None:
            if version is None:
                raise MatrixError(
                    "there is no current backup version", errcode="M_NOT_FOUND", http_status=404
                )
            raise _unknown_version()
        return {
            "algorithm": found.algorithm,
            "auth_data": msgspec.Raw(found.auth_data),
            "count": found.count,
            "etag": str(found.etag),
            "version": str(found.version),
        }

    async def update_version(
        self, user_id: str, version: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Replace a version's ``auth_data``; its algorithm stays as it is."""
        if "version" in body and body["version"] != version:
            raise MatrixError(
                "the version in the body is not the one in the path",
                errcode="M_INVALID_PARAM",
                http_status=400,
            )
        algorithm = _required_str(body, "algorithm")
        auth_data = _encoder.encode(_required_object(body, "auth_data"))
        held = await self._store.update_version(
            user_id, _version_number(version), algorithm=algorithm, auth_data=auth_data
        )
        if held is None:
            raise _unknown_version()
        if held != algorithm:
            raise MatrixError(
                f"the backup's algorithm is {held}, which cannot be changed",
                errcode="M_INVALID_PARAM",
                http_status=400,
            )
        return {}

    async def delete_version(self, user_id: str, version: str) -> dict[str, Any]:
        """Delete a version and its keys; deleting it again succeeds too."""
        if not await self._store.delete_version(user_id, _version_number(version)):
            raise _unknown_version()
        return {}

    # Keys.

    async def put_keys(
        self,
        user_id: str,
        version: str,
        body: Mapping[str, Any],
        *,
        room_id: str | None = None,
        session_id: str | None = None,
    ) -> dict[str, Any]:
        """Store the keys of ``body``: the backup of every room (``{"rooms":
        ...}``), of ``room_id`` (``{"sessions": ...}``) or the key of
        ``session_id`` in ``room_id``. ``{"etag", "count"}`` after.
        """
        if session_id is not None:
            assert room_id is not None
            keys = [_room_key(room_id, session_id, body)]
        elif room_id is not None:
            keys = _sessions(room_id, body)
        else:
            keys = []
            for room, backup in _required_object(body, "rooms").items():
                if not room:
                    raise BadJsonError("a room ID in 'rooms' is empty")
                keys.extend(_sessions(room, backup))
        number = _version_number(version)
        return _keys_written(await self._store.upload_keys(user_id, number, keys))

    async def get_keys(
        self,
        user_id: str,
        version: str,
        *,
        room_id: str | None = None,
        session_id: str | None = None,
    ) -> dict[str, Any]:
        """A version's keys, shaped as they are uploaded at the same path."""
        keys = await self._store.keys(
            user_id, _version_number(version), room_id=room_id, session_id=session_id
        )
        if keys is None:
            raise _unknown_version()
        if session_id is not None:
            if not keys:
                raise MatrixError(
                    "no key of this session is stored", errcode="M_NOT_FOUND", http_status=404
                )
            return _key_json(keys[0])
        rooms: dict[str, dict[str, Any]] = {}
        for key in keys:
            rooms.setdefault(key.room_id, {})[key.session_id] = _key_json(key)
        if room_id is not None:
            return {"sessions": rooms.get(room_id, {})}
        return {"rooms": {room: {"sessions": sessions} for room, sessions in rooms.items()}}

    async def delete_keys(
        self,
        user_id: str,
        version: str,
        *,
        room_id: str | None = None,
        session_id: str | None = None,
    ) -> dict[str, Any]:
        """Delete a version's keys (all, a room's or a session's);
        ``{"etag", "count"}`` after."""
        number = _version_number(version)
        return _keys_written(
            await self._store.delete_keys(user_id, number, room_id=room_id, session_id=session_id)
        )
