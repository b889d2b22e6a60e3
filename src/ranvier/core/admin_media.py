"""Media as the server's admins see, quarantine and delete it (Synapse's
media admin API, and the user admin API's media endpoints).

Quarantined media is no longer served, to clients or to other servers,
and other servers' media quarantined is not fetched again (see
:mod:`ranvier.core.media`); its files stay, so it can be given back.
Media an admin protected is never quarantined, by these calls one at a
time or by the room and user sweeps. Deletion removes files, thumbnails
and rows (:mod:`ranvier.core.media_deletion`); quarantined and protected
media are spared by the deletions chosen by date, not by those naming
media or a user.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from ranvier.errors import MatrixError
from ranvier.protocol.auth import is_valid_user_id
from ranvier.protocol.media import is_media_id
from ranvier.protocol.x_matrix import is_server_name
from ranvier.storage.media import MediaRecord
from ranvier.storage.media_admin import (
    USER_MEDIA_ORDERS,
    DeletionRule,
    MediaKey,
    UserMediaOrder,
)

from .admin_rooms import check_room_id
from .media_deletion import MediaDeleter

__all__ = ["AdminMedia", "AdminMediaStore", "UserMediaPage"]

# Timestamps before this are seconds given where milliseconds are asked:
# taken as they are, they would be in 1970 and match nothing, or all.
_EARLIEST_MS: Final = 30_000_000_000


class AdminMediaStore(Protocol):
    """:class:`ranvier.storage.media_admin.MediaAdminStorage`."""

    async def room_exists(self, room_id: str) -> bool: ...

    async def user_exists(self, user_id: str) -> bool: ...

    async def room_media_uris(self, room_id: str) -> list[str]: ...

    async def user_media(
        self,
        user_id: str,
        origin: str,
        *,
        order_by: UserMediaOrder,
        backwards: bool,
        offset: int,
        limit: int,
    ) -> tuple[list[MediaRecord], int]: ...

    async def quarantine(
        self, items: Sequence[MediaKey], *, server_name: str, quarantined_by: str, ts: int
    ) -> int: ...

    async def quarantine_uploads(
        self, user_id: str, *, server_name: str, quarantined_by: str, ts: int
    ) -> int: ...

    async def unquarantine(self, origin: str, media_id: str) -> None: ...

    async def set_protected(self, origin: str, media_id: str, protected: bool) -> bool: ...


class MediaReader(Protocol):
    """:class:`ranvier.storage.media.MediaStorage`."""

    async def media(self, origin: str, media_id: str) -> MediaRecord | None: ...


@dataclass(frozen=True, slots=True)
class UserMediaPage:
    """A page of a user's media as ``GET /users/{userId}/media`` asks.

    ``order_by`` and ``backwards`` None are the defaults: newest first
    when neither is given, ascending when only the order is.
    """

    offset: int = 0
    limit: int = 100
    order_by: str | None = None
    backwards: bool | None = None


def _invalid(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_INVALID_PARAM", http_status=400)


def _not_found(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_NOT_FOUND", http_status=404)


def _media_json(record: MediaRecord) -> dict[str, Any]:
    return {
        "media_id": record.media_id,
        "media_type": record.content_type,
        "media_length": record.size,
        "upload_name": record.upload_name,
        "created_ts": record.created_ts,
        "last_access_ts": record.last_access_ts,
        "quarantined_by": record.quarantined_by,
        "safe_from_quarantine": record.safe_from_quarantine,
    }


class AdminMedia:
    """The media admin operations of ``server_name``."""

    def __init__(
        self,
        *,
        server_name: str,
        store: AdminMediaStore,
        media: MediaReader,
        deleter: MediaDeleter,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self._server_name = server_name
        self._store = store
        self._media = media
        self._deleter = deleter
        self._clock_ms = clock_ms

    # Checks.

    def _checked_key(self, server_name: str, media_id: str) -> MediaKey:
        if not is_server_name(server_name):
            raise _invalid(f"{server_name[:255]!r} is not a server name")
        if not is_media_id(media_id):
            raise _invalid(f"{media_id[:255]!r} is not a media ID")
        return server_name, media_id

    def check_local_server(self, server_name: str) -> None:
        """400 ``M_INVALID_PARAM`` unless ``server_name`` is this server's."""
        if server_name != self._server_name:
            raise _invalid("only this server's media can be deleted")

    def _checked_local_user(self, user_id: str) -> None:
        if not is_valid_user_id(user_id):
            raise _invalid(f"{user_id[:255]!r} is not a user ID")
        if user_id.partition(":")[2] != self._server_name:
            raise _invalid(f"{user_id} is not a user of this server: only local users have media")

    async def _existing_local_user(self, user_id: str) -> None:
        self._checked_local_user(user_id)
        if not await self._store.user_exists(user_id):
            raise _not_found(f"user {user_id} not found")

    async def _existing_room(self, room_id: str) -> None:
        check_room_id(room_id)
        if not await self._store.room_exists(room_id):
            raise _not_found(f"room {room_id} not found")

    # Reading.

    async def details(self, server_name: str, media_id: str) -> dict[str, Any]:
        """``media_info`` of media stored here; 404 for the rest."""
        record = None
        if is_server_name(server_name) and is_media_id(media_id):
            record = await self._media.media(server_name, media_id)
        if record is None or record.deleting or not record.uploaded:
            raise _not_found(f"no media mxc://{server_name}/{media_id} here")
        local = record.origin == self._server_name
        return {
            "media_info": {
                "media_origin": record.origin,
                "user_id": record.user_id,
                "media_id": record.media_id,
                "media_type": record.content_type,
                "media_length": record.size,
                "upload_name": record.upload_name,
                "created_ts": record.created_ts,
                "filesystem_id": record.media_id,
                "url_cache": None,
                "last_access_ts": record.last_access_ts,
                "quarantined_by": record.quarantined_by,
                # Served on the unauthenticated endpoints too.
                "authenticated": False,
                "safe_from_quarantine": record.safe_from_quarantine if local else None,
                "sha256": None,
            }
        }

    async def room_media(self, room_id: str) -> dict[str, Any]:
        """The mxc URIs the room's events name, ours and other servers'."""
        local, remote = await self._room_mxcs(room_id)
        return {
            "local": [f"mxc://{origin}/{media_id}" for origin, media_id in local],
            "remote": [f"mxc://{origin}/{media_id}" for origin, media_id in remote],
        }

    async def _room_mxcs(self, room_id: str) -> tuple[list[MediaKey], list[MediaKey]]:
        await self._existing_room(room_id)
        local: list[MediaKey] = []
        remote: list[MediaKey] = []
        for uri in await self._store.room_media_uris(room_id):
            key = _parse_mxc(uri)
            if key is not None:
                (local if key[0] == self._server_name else remote).append(key)
        return local, remote

    async def user_media(self, user_id: str, page: UserMediaPage) -> dict[str, Any]:
        """A page of the media ``user_id`` uploaded, with ``next_token``
        while more remain."""
        records, total = await self._user_page(user_id, page)
        answer: dict[str, Any] = {"media": [_media_json(r) for r in records], "total": total}
        if page.offset + len(records) < total:
            answer["next_token"] = page.offset + len(records)
        return answer

    async def _user_page(self, user_id: str, page: UserMediaPage) -> tuple[list[MediaRecord], int]:
        await self._existing_local_user(user_id)
        order = page.order_by or "created_ts"
        if order not in USER_MEDIA_ORDERS:
            raise _invalid(
                f"order_by must be one of {', '.join(sorted(USER_MEDIA_ORDERS))},"
                f" not {order[:40]!r}"
            )
        backwards = page.backwards
        if backwards is None:
            backwards = page.order_by is None
        return await self._store.user_media(
            user_id,
            self._server_name,
            order_by=order,  # type: ignore[arg-type]  # checked above
            backwards=backwards,
            offset=page.offset,
            limit=page.limit,
        )

    # Quarantine.

    async def quarantine(self, admin: str, server_name: str, media_id: str) -> dict[str, Any]:
        """Quarantine one piece of media, ours or another server's, stored
        here or not (then it is never fetched)."""
        key = self._checked_key(server_name, media_id)
        await self._quarantine([key], admin)
        return {}

    async def unquarantine(self, server_name: str, media_id: str) -> dict[str, Any]:
        await self._store.unquarantine(*self._checked_key(server_name, media_id))
        return {}

    async def quarantine_room(self, admin: str, room_id: str) -> dict[str, Any]:
        """Quarantine the media the room's events name."""
        local, remote = await self._room_mxcs(room_id)
        return {"num_quarantined": await self._quarantine([*local, *remote], admin)}

    async def quarantine_user(self, admin: str, user_id: str) -> dict[str, Any]:
        """Quarantine the media ``user_id`` uploaded here."""
        self._checked_local_user(user_id)
        count = await self._store.quarantine_uploads(
            user_id, server_name=self._server_name, quarantined_by=admin, ts=self._clock_ms()
        )
        return {"num_quarantined": count}

    async def _quarantine(self, keys: Sequence[MediaKey], admin: str) -> int:
        return await self._store.quarantine(
            keys, server_name=self._server_name, quarantined_by=admin, ts=self._clock_ms()
        )

    async def set_protected(self, media_id: str, protected: bool) -> dict[str, Any]:
        """Protect our media from quarantine, or stop protecting it."""
        origin, media_id = self._checked_key(self._server_name, media_id)
        if not await self._store.set_protected(origin, media_id, protected):
            raise _not_found(f"no media mxc://{origin}/{media_id} here")
        return {}

    # Deletion.

    async def delete_one(self, server_name: str, media_id: str) -> dict[str, Any]:
        """Delete one piece of our media, quarantined or protected or not."""
        key = self._checked_key(server_name, media_id)
        self.check_local_server(server_name)
        deleted = await self._deleter.delete([key])
        if not deleted:
            raise _not_found(f"no media mxc://{server_name}/{media_id} here")
        return _deleted_json(deleted)

    async def delete_user_media(self, user_id: str, page: UserMediaPage) -> dict[str, Any]:
        """Delete the page of ``user_id``'s media that listing would show."""
        records, _ = await self._user_page(user_id, page)
        deleted = await self._deleter.delete([(r.origin, r.media_id) for r in records])
        return _deleted_json(deleted)

    async def delete_local(
        self, *, before_ts: int | None, size_gt: int, keep_profiles: bool
    ) -> dict[str, Any]:
        """Delete our media last used before ``before_ts`` and larger than
        ``size_gt`` bytes, quarantined and protected media apart, and with
        ``keep_profiles`` what profiles and rooms show as avatars."""
        rule = DeletionRule(_checked_before(before_ts), size_gt=size_gt)
        deleted = await self._deleter.delete_unused(
            local=True, rule=rule, keep_profiles=keep_profiles
        )
        return _deleted_json(deleted)

    async def purge_remote(self, *, before_ts: int | None) -> dict[str, Any]:
        """Delete other servers' media kept here and last used before
        ``before_ts``, quarantined media apart."""
        rule = DeletionRule(_checked_before(before_ts))
        deleted = await self._deleter.delete_unused(local=False, rule=rule, keep_profiles=False)
        return {"deleted": len(deleted)}


def _checked_before(before_ts: int | None) -> int:
    if before_ts is None:
        raise MatrixError("before_ts is required", errcode="M_MISSING_PARAM", http_status=400)
    if before_ts < _EARLIEST_MS:
        raise _invalid(f"before_ts {before_ts} is in 1970: give it in milliseconds since the epoch")
    return before_ts


def _deleted_json(deleted: Sequence[MediaKey]) -> dict[str, Any]:
    return {"deleted_media": [media_id for _, media_id in deleted], "total": len(deleted)}


def _parse_mxc(uri: str) -> MediaKey | None:
    """``(server name, media ID)`` of a valid ``mxc://`` URI, else None."""
    if not uri.startswith("mxc://"):
        return None
    server_name, slash, media_id = uri[len("mxc://") :].partition("/")
    if not slash or not is_server_name(server_name) or not is_media_id(media_id):
        return None
    return server_name, media_id
