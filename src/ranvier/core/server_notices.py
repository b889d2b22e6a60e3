"""Server notices: the operators' messages to a local user (the spec's
"Server Notices" module, in the shape Synapse gives it).

A system user (``[server_notices] system_mxid_localpart``) sends each notice
into a room of the user's own that it made: the user is invited, and sees the
notice once they accept, as on Synapse and as the spec asks ("invite the
target user rather than automatically join them"). The room is tagged
``m.server_notice`` in the user's account data, so that clients show it
apart, and its power levels let only the system user send anything.

Invariants
----------

* **One room per user at a time.** A notice goes into the room kept for the
  user (:mod:`ranvier.storage.server_notices`) while the user is invited to
  it or joined, and the system user joined; otherwise (the user left, or
  was never sent one) a new room is made and kept in its place. In a
  process, notices are sent one at a time, so two notices never make two
  rooms; two processes sending to one user at once may, and the later kept
  room wins.
* **Declining is refused.** The spec lets no client decline the invite:
  a leave while invited to the kept room is answered 403
  ``M_CANNOT_LEAVE_SERVER_NOTICE_ROOM``. A user who joined may leave, and
  the next notice comes in a new room.
* **The system user cannot log in.** Its account has no password and no
  device; it acts only through this module.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final, Literal, Protocol

import msgspec
import trio

from ranvier.errors import MatrixError
from ranvier.protocol.auth import is_valid_user_id

from .builder import Clock, wall_clock_ms
from .interfaces import Leaves
from .notifier import StreamNotifier
from .room_tags import TAG_TYPE

__all__ = [
    "SERVER_NOTICE_MSGTYPE",
    "SERVER_NOTICE_TAG",
    "NoticeGuardedLeaves",
    "ServerNotices",
    "notice_content",
]

_log: Final = logging.getLogger(__name__)

SERVER_NOTICE_TAG: Final = "m.server_notice"
SERVER_NOTICE_MSGTYPE: Final = "m.server_notice"
_TAG_CONTENT: Final = msgspec.json.encode({"tags": {SERVER_NOTICE_TAG: {}}})
#: Every power a room has, at the system user's level: the user may join,
#: read and leave, and nothing else.
_ONLY_THE_SYSTEM_USER: Final = 100


class NoticeRoomStore(Protocol):
    """(:class:`ranvier.storage.server_notices.ServerNoticeStorage`)"""

    async def get_server_notice_room(self, user_id: str) -> str | None: ...

    async def set_server_notice_room(self, user_id: str, room_id: str, created_ts: int) -> None: ...


class TagStore(Protocol):
    """Where the room's tag is written (account data storage)."""

    async def put_account_data(
        self, user_id: str, room_id: str, data_type: str, content: bytes
    ) -> int: ...


class SystemAccounts(Protocol):
    """(:class:`ranvier.core.accounts.Accounts`)"""

    async def user_exists(self, user_id: str) -> bool: ...

    async def register(
        self, localpart: str | None, password: str | None, *, login: bool
    ) -> Any: ...


class SystemProfile(Protocol):
    """(:class:`ranvier.core.profiles.Profiles`)"""

    async def local_profile(self, user_id: str) -> dict[str, str] | None: ...

    async def set_field(
        self,
        requester: str,
        user_id: str,
        field: Literal["displayname", "avatar_url"],
        value: object,
    ) -> None: ...


class NoticeSender(Protocol):
    """(:class:`ranvier.core.creation.EventCreator`)"""

    async def create_room(
        self,
        creator: str,
        *,
        name: str | None = None,
        invite: Any = (),
        power_level_content_override: Mapping[str, Any] | None = None,
    ) -> str: ...

    async def send_event(
        self,
        sender: str,
        room_id: str,
        event_type: str,
        content: Mapping[str, Any],
        *,
        state_key: str | None = None,
    ) -> str: ...


class Memberships(Protocol):
    """(:class:`ranvier.core.rooms.RoomReader`)"""

    async def membership(self, user_id: str, room_id: str) -> str | None: ...


def notice_content(body: str, *, server_notice_type: str | None = None) -> dict[str, Any]:
    """A notice's ``m.room.message`` content, as the spec shapes it."""
    content: dict[str, Any] = {"msgtype": SERVER_NOTICE_MSGTYPE, "body": body}
    if server_notice_type is not None:
        content["server_notice_type"] = server_notice_type
    return content


def _bad(message: str, errcode: str = "M_INVALID_PARAM") -> MatrixError:
    return MatrixError(message, errcode=errcode, http_status=400)


class ServerNotices:
    """Sends notices to local users from the system user; see the module's doc."""

    def __init__(
        self,
        *,
        server_name: str,
        localpart: str,
        display_name: str | None,
        avatar_url: str | None,
        room_name: str,
        rooms: NoticeRoomStore,
        tags: TagStore,
        accounts: SystemAccounts,
        profiles: SystemProfile,
        sender: NoticeSender,
        memberships: Memberships,
        notifier: StreamNotifier | None = None,
        clock: Clock = wall_clock_ms,
    ) -> None:
        self.server_name = server_name
        self.system_user_id = f"@{localpart}:{server_name}"
        self._localpart = localpart
        self._display_name = display_name
        self._avatar_url = avatar_url
        self._room_name = room_name
        self._rooms = rooms
        self._tags = tags
        self._accounts = accounts
        self._profiles = profiles
        self._sender = sender
        self._memberships = memberships
        self._notifier = notifier
        self._clock = clock
        self._lock = trio.Lock()
        self._system_user_ready = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Make the system user (and its profile) as configured, then wait:
        a start with notices configured leaves the account in place."""
        async with self._lock:
            await self._ensure_system_user()
        task_status.started()
        await trio.sleep_forever()

    async def _ensure_system_user(self) -> None:
        if self._system_user_ready:
            return
        user_id = self.system_user_id
        if not await self._accounts.user_exists(user_id):
            try:
                await self._accounts.register(self._localpart, None, login=False)
            except MatrixError as exc:
                if exc.errcode != "M_USER_IN_USE":
                    raise
                # Made by another process at the same moment.
            _log.info("made %s, the server notices user", user_id)
        profile = await self._profiles.local_profile(user_id) or {}
        wanted: tuple[tuple[Literal["displayname", "avatar_url"], str | None], ...] = (
            ("displayname", self._display_name),
            ("avatar_url", self._avatar_url),
        )
        for field, value in wanted:
            if value is not None and profile.get(field) != value:
                await self._profiles.set_field(user_id, user_id, field, value)
        self._system_user_ready = True

    async def send(
        self,
        user_id: str,
        content: Mapping[str, Any],
        *,
        event_type: str = "m.room.message",
        state_key: str | None = None,
    ) -> str:
        """Send a notice to ``user_id`` in their notices room (made first if
        they have none they are in); return its event ID.

        400 for a user of another server, or the system user itself; 404
        ``M_NOT_FOUND`` for a local user who has no account.
        """
        if type(user_id) is not str or not is_valid_user_id(user_id):
            raise _bad(f"{str(user_id)[:300]!r} is not a user ID")
        if user_id.partition(":")[2] != self.server_name:
            raise _bad("Server notices can only be sent to local users", "M_UNKNOWN")
        if user_id == self.system_user_id:
            raise _bad(f"{user_id} sends the server notices; it cannot be sent one")
        if not await self._accounts.user_exists(user_id):
            raise MatrixError("User not found", errcode="M_NOT_FOUND", http_status=404)
        async with self._lock:
            await self._ensure_system_user()
            room_id = await self._room_for(user_id)
            return await self._sender.send_event(
                self.system_user_id, room_id, event_type, content, state_key=state_key
            )

    async def _room_for(self, user_id: str) -> str:
        kept = await self._rooms.get_server_notice_room(user_id)
        if kept is not None and await self._usable(user_id, kept):
            return kept
        system = self.system_user_id
        room_id = await self._sender.create_room(
            system,
            name=self._room_name,
            invite=[user_id],
            # The creator (the system user) has every power; in room
            # versions from 12 on, without being listed in ``users``.
            power_level_content_override={
                "users_default": 0,
                "events_default": _ONLY_THE_SYSTEM_USER,
                "state_default": _ONLY_THE_SYSTEM_USER,
                "invite": _ONLY_THE_SYSTEM_USER,
                "kick": _ONLY_THE_SYSTEM_USER,
                "ban": _ONLY_THE_SYSTEM_USER,
                "redact": _ONLY_THE_SYSTEM_USER,
                "notifications": {"room": _ONLY_THE_SYSTEM_USER},
            },
        )
        position = await self._tags.put_account_data(user_id, room_id, TAG_TYPE, _TAG_CONTENT)
        if self._notifier is not None:
            self._notifier.advance_account_data(position, user_id)
        await self._rooms.set_server_notice_room(user_id, room_id, self._clock())
        return room_id

    async def _usable(self, user_id: str, room_id: str) -> bool:
        """Whether notices to ``user_id`` may still go into ``room_id``."""
        if await self._memberships.membership(user_id, room_id) not in ("invite", "join"):
            return False
        return await self._memberships.membership(self.system_user_id, room_id) == "join"

    async def check_leave(self, user_id: str, room_id: str) -> None:
        """Refuse ``user_id`` declining the invite to their notices room."""
        if await self._rooms.get_server_notice_room(user_id) != room_id:
            return
        if await self._memberships.membership(user_id, room_id) == "invite":
            raise MatrixError(
                "the invite to the server notices room cannot be declined",
                errcode="M_CANNOT_LEAVE_SERVER_NOTICE_ROOM",
                http_status=403,
            )


class NoticeGuardedLeaves:
    """Users' own leaves, as the client API makes them: ``leaves``, after
    :meth:`ServerNotices.check_leave`. Leaves the server makes for its own
    reasons (deactivation, an admin shutting a room) do not pass here."""

    def __init__(self, leaves: Leaves, notices: ServerNotices) -> None:
        self._leaves = leaves
        self._notices = notices

    async def leave(
        self,
        user_id: str,
        room_id: str,
        *,
        reason: str | None = None,
        content: Mapping[str, Any] | None = None,
        origin_server_ts: int | None = None,
    ) -> str:
        await self._notices.check_leave(user_id, room_id)
        return await self._leaves.leave(
            user_id, room_id, reason=reason, content=content, origin_server_ts=origin_server_ts
        )
