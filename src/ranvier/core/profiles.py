"""Users' profiles: display names and avatars.

A local user's profile is kept in storage and shown to everyone (the
client API's ``GET /profile`` and other servers' ``/query/profile``); a
remote user's is asked of their server each time.

A room shows a member's name and avatar from their member event, not from
the profile, so a change to the profile is written into the user's member
event of every room they are joined to, as a new join event sent through
:class:`~ranvier.core.creation.EventCreator` like any other state event.
A room that refuses it (the user may not send state there, say) keeps the
old name; the others still change. A join carries the profile too
(:meth:`Profiles.member_content`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final, Literal, Protocol

from ranvier.errors import MatrixError
from ranvier.protocol.auth import is_valid_user_id

__all__ = [
    "MAX_DISPLAYNAME_LENGTH",
    "JoinedRooms",
    "ProfileField",
    "ProfileStore",
    "Profiles",
    "RemoteProfiles",
    "StateSender",
]

_log: Final = logging.getLogger(__name__)

#: The longest display name taken, in characters (Synapse's limit too).
MAX_DISPLAYNAME_LENGTH: Final = 256
#: The longest avatar URL taken, in characters.
MAX_AVATAR_URL_LENGTH: Final = 1000

ProfileField = Literal["displayname", "avatar_url"]
_FIELDS: Final[tuple[ProfileField, ...]] = ("displayname", "avatar_url")


class ProfileStore(Protocol):
    """Local profiles (:class:`ranvier.storage.client_data.ClientDataStorage`)."""

    async def get_profile(self, user_id: str) -> tuple[str | None, str | None] | None: ...

    async def set_profile(
        self, user_id: str, displayname: str | None, avatar_url: str | None
    ) -> None: ...


class RemoteProfiles(Protocol):
    """Asks another server for one of its users' profile; raises
    ``M_NOT_FOUND`` when that server knows no such user.
    """

    async def query_profile(self, server_name: str, user_id: str) -> Mapping[str, Any]: ...


class UserQueries(Protocol):
    """Asks application services about users
    (:class:`ranvier.core.appservices.AppServiceQueries`).
    """

    async def query_user(self, user_id: str) -> bool: ...


class JoinedRooms(Protocol):
    """The rooms a user is joined to (:class:`ranvier.core.rooms.RoomReader`)."""

    async def joined_rooms(self, user_id: str) -> list[str]: ...


class StateSender(Protocol):
    """Sends a state event (:class:`ranvier.core.creation.EventCreator`)."""

    async def send_event(
        self,
        sender: str,
        room_id: str,
        event_type: str,
        content: Mapping[str, Any],
        *,
        state_key: str | None = None,
        txn_id: str | None = None,
    ) -> str: ...


def _not_found(user_id: str) -> MatrixError:
    return MatrixError(f"{user_id} has no profile", errcode="M_NOT_FOUND", http_status=404)


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
        events: StateSender,
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

    async def get_profile(self, user_id: str) -> dict[str, str]:
        """The profile of ``user_id``, here or on their server; ``M_NOT_FOUND``
        when there is no such user.
        """
        _check_user_id(user_id)
        server = user_id.partition(":")[2]
        if server != self._server_name:
            if self._remote is None:
                raise _not_found(user_id)
            answer = await self._remote.query_profile(server, user_id)
            return {field: answer[field] for field in _FIELDS if isinstance(answer.get(field), str)}
        profile = await self.local_profile(user_id)
        if profile is None and await self._asked_services_about(user_id):
            profile = await self.local_profile(user_id)
        if profile is None:
            raise _not_found(user_id)
        return profile

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
        """The profile of a local user, None when there is no such account:
        what other servers' ``/query/profile`` is answered with.
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
        self, requester: str, user_id: str, field: ProfileField, value: object
    ) -> None:
        """Set ``field`` of ``user_id``'s profile (only their own, and only
        a local user's) and update their member event in every room they
        are joined to. ``value`` None or empty clears the field.
        """
        _check_user_id(user_id)
        if requester != user_id:
            raise MatrixError(
                f"{requester} may not change the profile of {user_id}",
                errcode="M_FORBIDDEN",
                http_status=403,
            )
        checked = _check_value(field, value)
        stored = await self._store.get_profile(user_id)
        if stored is None:
            raise _not_found(user_id)
        displayname, avatar_url = stored
        if field == "displayname":
            displayname = checked
        else:
            avatar_url = checked
        await self._store.set_profile(user_id, displayname, avatar_url)
        content: dict[str, Any] = {"membership": "join"}
        if displayname is not None:
            content["displayname"] = displayname
        if avatar_url is not None:
            content["avatar_url"] = avatar_url
        for room_id in await self._rooms.joined_rooms(user_id):
            try:
                await self._events.send_event(
                    user_id, room_id, "m.room.member", content, state_key=user_id
                )
            except MatrixError as exc:
                # The profile changed; this room keeps the old name.
                _log.info("%s keeps %s's old profile: %s", room_id, user_id, exc)


def _check_user_id(user_id: str) -> None:
    if not is_valid_user_id(user_id):
        raise MatrixError(
            f"{user_id!r} is not a user ID", errcode="M_INVALID_PARAM", http_status=400
        )
