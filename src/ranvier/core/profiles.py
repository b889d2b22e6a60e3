"""Users' profiles: display names, avatars, time zones and any other field.

A local user's profile is kept in storage and shown to everyone (the
client API's ``GET /profile`` and other servers' ``/query/profile``); a
remote user's is asked of their server each time, one field alone when
one is wanted.

A field's name is ``displayname``, ``avatar_url``, ``m.tz`` or a
namespaced name (``org.example.job_title``) of at most 255 bytes; a custom
field holds any JSON value, null included (kept, not taken as a delete),
``m.tz`` a string. The whole profile, as JSON, stays under 64 KiB, which
the storage write checks against the profile it changes.

A room shows a member's name and avatar from their member event, not from
the profile, so a change to either is written into the user's member
event of every room they are joined to (other fields change no room), as
a new join event sent through :class:`~ranvier.core.creation.EventCreator`
like any other state event.
A room that refuses it (the user may not send state there, say) keeps the
old name; the others still change. A join carries the profile too
(:meth:`Profiles.member_content`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, Final, Literal, Protocol

import msgspec

from ranvier.errors import MatrixError
from ranvier.protocol.auth import is_valid_user_id

from .interfaces import EventSender

__all__ = [
    "MAX_DISPLAYNAME_LENGTH",
    "MAX_KEY_BYTES",
    "MAX_PROFILE_BYTES",
    "JoinedRooms",
    "ProfileField",
    "ProfileStore",
    "Profiles",
    "RemoteProfiles",
]

_log: Final = logging.getLogger(__name__)

#: The longest display name taken, in characters (Synapse's limit too).
MAX_DISPLAYNAME_LENGTH: Final = 256
#: The longest avatar URL taken, in characters.
MAX_AVATAR_URL_LENGTH: Final = 1000

#: The longest field name taken, in bytes (the spec's limit).
MAX_KEY_BYTES: Final = 255
#: The size the whole profile, as JSON, must stay under (the spec's limit).
MAX_PROFILE_BYTES: Final = 64 * 1024

#: The fields a member event carries, and that change it.
ProfileField = Literal["displayname", "avatar_url"]
_FIELDS: Final[tuple[ProfileField, ...]] = ("displayname", "avatar_url")
#: The spec's grammar of a field's name.
_KEY_NAME: Final = re.compile(r"avatar_url|displayname|m\.tz|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")


class ProfileStore(Protocol):
    """Local profiles (:class:`ranvier.storage.client_data.ClientDataStorage`)."""

    async def get_profile(self, user_id: str) -> tuple[str | None, str | None] | None: ...

    async def profile_fields(self, user_id: str) -> dict[str, Any] | None: ...

    async def set_profile_field(
        self, user_id: str, key: str, value_json: str, *, max_bytes: int
    ) -> bool: ...

    async def delete_profile_field(self, user_id: str, key: str) -> None: ...


class RemoteProfiles(Protocol):
    """Asks another server for one of its users' profile, or only ``field``
    of it; raises ``M_NOT_FOUND`` when that server knows no such user.
    """

    async def query_profile(
        self, server_name: str, user_id: str, field: str | None = None
    ) -> Mapping[str, Any]: ...


class UserQueries(Protocol):
    """Asks application services about users
    (:class:`ranvier.core.appservices.AppServiceQueries`).
    """

    async def query_user(self, user_id: str) -> bool: ...


class JoinedRooms(Protocol):
    """The rooms a user is joined to (:class:`ranvier.core.rooms.RoomReader`)."""

    async def joined_rooms(self, user_id: str) -> list[str]: ...


def _not_found(user_id: str) -> MatrixError:
    return MatrixError(f"{user_id} has no profile", errcode="M_NOT_FOUND", http_status=404)


def check_key(key: str) -> None:
    """Refuse a field name the spec does not allow: ``M_KEY_TOO_LARGE``
    past 255 bytes, ``M_INVALID_PARAM`` outside the grammar.
    """
    if len(key.encode()) > MAX_KEY_BYTES:
        raise MatrixError(
            f"a profile field's name may be at most {MAX_KEY_BYTES} bytes",
            errcode="M_KEY_TOO_LARGE",
            http_status=400,
        )
    if _KEY_NAME.fullmatch(key) is None:
        raise MatrixError(
            f"{key!r} is not a profile field's name: displayname, avatar_url, m.tz"
            " or a namespaced name such as org.example.field",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )


def _field_not_found(user_id: str, key: str) -> MatrixError:
    return MatrixError(f"{user_id} has no {key}", errcode="M_NOT_FOUND", http_status=404)


def _check_value(field: ProfileField, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise MatrixError(f"'{field}' must be a string", errcode="M_BAD_JSON", http_status=400)
    if field == "displayname":
        if len(value) > MAX_DISPLAYNAME_LENGTH:
            raise MatrixError(
                f"a display name may be at most {MAX_DISPLAYNAME_LENGTH} characters",
                errcode="M_INVALID_PARAM",
                http_status=400,
            )
        return value or None
    if value == "":
        return None
    if len(value) > MAX_AVATAR_URL_LENGTH or not _is_mxc(value):
        raise MatrixError(
            f"an avatar URL must be an mxc:// URI of at most {MAX_AVATAR_URL_LENGTH}"
            f" characters, not {value[:60]!r}",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
    return value


def _is_mxc(value: str) -> bool:
    server, slash, media_id = value.removeprefix("mxc://").partition("/")
    return value.startswith("mxc://") and bool(server) and bool(slash) and bool(media_id)


class Profiles:
    """Reads and changes profiles; see the module's doc."""

    def __init__(
        self,
        *,
        server_name: str,
        store: ProfileStore,
        rooms: JoinedRooms,
        events: EventSender,
        remote: RemoteProfiles | None = None,
    ) -> None:
        self._server_name = server_name
        self._store = store
        self._rooms = rooms
        self._events = events
        self._remote = remote
        #: Asks application services about unknown users of their
        #: namespaces, which they may make then; set by the server.
        self.app_service_queries: UserQueries | None = None

    async def get_profile(self, user_id: str) -> dict[str, Any]:
        """Every field of ``user_id``'s profile, here or on their server;
        ``M_NOT_FOUND`` when there is no such user.
        """
        _check_user_id(user_id)
        server = user_id.partition(":")[2]
        if server != self._server_name:
            if self._remote is None:
                raise _not_found(user_id)
            return _usable(await self._remote.query_profile(server, user_id))
        profile = await self.local_fields(user_id)
        if profile is None and await self._asked_services_about(user_id):
            profile = await self.local_fields(user_id)
        if profile is None:
            raise _not_found(user_id)
        return profile

    async def get_field(self, user_id: str, key: str) -> Any:
        """The value of ``key`` in ``user_id``'s profile, here or on their
        server (asked for that field alone); ``M_NOT_FOUND`` when the user
        or the field is not there.
        """
        _check_user_id(user_id)
        check_key(key)
        server = user_id.partition(":")[2]
        if server != self._server_name:
            if self._remote is None:
                raise _not_found(user_id)
            profile = _usable(await self._remote.query_profile(server, user_id, key))
        else:
            profile = await self.get_profile(user_id)
        if key not in profile:
            raise _field_not_found(user_id, key)
        return profile[key]

    async def local_fields(self, user_id: str) -> dict[str, Any] | None:
        """Every field of a local user's profile, None when there is no such
        account: what other servers' ``/query/profile`` is answered with.
        """
        return await self._store.profile_fields(user_id)

    async def ask_services_about(self, user_id: str) -> None:
        """Ask the application service whose namespace holds ``user_id`` about
        it when the user has no account here, so that it may make it.
        """
        if await self.local_profile(user_id) is None:
            await self._asked_services_about(user_id)

    async def _asked_services_about(self, user_id: str) -> bool:
        """Whether a service was asked about ``user_id`` and says it made it."""
        queries = self.app_service_queries
        return queries is not None and await queries.query_user(user_id)

    async def local_profile(self, user_id: str) -> dict[str, str] | None:
        """The display name and avatar of a local user, None when there is
        no such account: what a member event carries.
        """
        stored = await self._store.get_profile(user_id)
        if stored is None:
            return None
        displayname, avatar_url = stored
        profile = {}
        if displayname is not None:
            profile["displayname"] = displayname
        if avatar_url is not None:
            profile["avatar_url"] = avatar_url
        return profile

    async def member_content(self, user_id: str) -> dict[str, str]:
        """The profile fields a join of ``user_id`` carries (none for a user
        of another server).
        """
        if user_id.partition(":")[2] != self._server_name:
            return {}
        return await self.local_profile(user_id) or {}

    async def set_field(
        self,
        requester: str,
        user_id: str,
        field: str,
        value: object,
        *,
        is_admin: bool = False,
        to_rooms: bool = True,
    ) -> None:
        """Set ``field`` of ``user_id``'s profile (their own, or any local
        user's for an admin). A display name or avatar None or empty clears
        it and is written into their member event in every room they are
        joined to, unless not ``to_rooms`` (a shadow-banned requester's
        change, :mod:`ranvier.core.shadow_bans`); another field changes no
        room.
        """
        _check_user_id(user_id)
        check_key(field)
        self._check_may_change(requester, user_id, is_admin=is_admin)
        if field in _FIELDS:
            value = _check_value(field, value)
        elif field == "m.tz" and not isinstance(value, str):
            raise MatrixError(
                "'m.tz' must be a string: a time zone's name",
                errcode="M_INVALID_PARAM",
                http_status=400,
            )
        try:
            value_json = msgspec.json.encode(value).decode()
        except (TypeError, OverflowError) as exc:
            raise MatrixError(
                f"'{field}' cannot be kept: {exc}", errcode="M_BAD_JSON", http_status=400
            ) from None
        if await self._store.get_profile(user_id) is None:
            raise _not_found(user_id)
        if not await self._store.set_profile_field(
            user_id, field, value_json, max_bytes=MAX_PROFILE_BYTES
        ):
            if await self._store.get_profile(user_id) is None:
                raise _not_found(user_id)
            raise MatrixError(
                f"the profile would reach {MAX_PROFILE_BYTES} bytes",
                errcode="M_PROFILE_TOO_LARGE",
                http_status=400,
            )
        if field in _FIELDS and to_rooms:
            await self._update_member_events(user_id)

    async def delete_field(
        self,
        requester: str,
        user_id: str,
        field: str,
        *,
        is_admin: bool = False,
        to_rooms: bool = True,
    ) -> None:
        """Remove ``field`` from ``user_id``'s profile (nothing when it is not
        set); a display name or avatar removed changes their member events,
        unless not ``to_rooms``, as for :meth:`set_field`.
        """
        _check_user_id(user_id)
        check_key(field)
        self._check_may_change(requester, user_id, is_admin=is_admin)
        if await self._store.get_profile(user_id) is None:
            raise _not_found(user_id)
        await self._store.delete_profile_field(user_id, field)
        if field in _FIELDS and to_rooms:
            await self._update_member_events(user_id)

    def _check_may_change(self, requester: str, user_id: str, *, is_admin: bool) -> None:
        if requester != user_id and not is_admin:
            raise MatrixError(
                f"{requester} may not change the profile of {user_id}",
                errcode="M_FORBIDDEN",
                http_status=403,
            )
        if user_id.partition(":")[2] != self._server_name:
            raise MatrixError(
                f"{user_id} is not a user of {self._server_name}",
                errcode="M_FORBIDDEN",
                http_status=403,
            )

    async def _update_member_events(self, user_id: str) -> None:
        content: dict[str, Any] = {
            "membership": "join",
            **(await self.local_profile(user_id) or {}),
        }
        for room_id in await self._rooms.joined_rooms(user_id):
            try:
                await self._events.send_event(
                    user_id, room_id, "m.room.member", content, state_key=user_id
                )
            except MatrixError as exc:
                # The profile changed; this room keeps the old name.
                _log.info("%s keeps %s's old profile: %s", room_id, user_id, exc)


def _usable(answer: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of another server's answer that a profile may hold: a
    name the grammar allows, a value not null (the spec's "not set"), and
    a display name and avatar only as strings.
    """
    profile: dict[str, Any] = {}
    for key, value in answer.items():
        if value is None or len(key.encode()) > MAX_KEY_BYTES or _KEY_NAME.fullmatch(key) is None:
            continue
        if key in _FIELDS and not isinstance(value, str):
            continue
        profile[key] = value
    return profile


def _check_user_id(user_id: str) -> None:
    if not is_valid_user_id(user_id):
        raise MatrixError(
            f"{user_id!r} is not a user ID", errcode="M_INVALID_PARAM", http_status=400
        )
