"""Presence: whether a user is online, and the status message they set.

``PUT /presence/{userId}/status`` sets a local user's own presence and
status message and counts as activity; ``GET`` answers it with how long
ago the user was last active. Another server's users' presence comes in
``m.presence`` EDUs (:meth:`Presence.on_remote_presence`), taken only for
that server's own users.

Presence is held in memory: after a restart every user is ``offline``
until they set it again, which is what a client shows of a user it has
not heard from. ``/sync``'s ``presence`` section stays empty, and no
``m.presence`` EDUs are sent, for now.

Who may see a user's presence: the user, and anyone sharing a joined room
with them (403 otherwise), as the spec's security considerations have it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import trio

from ranvier.errors import MatrixError
from ranvier.protocol.auth import is_valid_user_id

from .builder import Clock, wall_clock_ms
from .receipts import server_of

__all__ = ["PRESENCE_STATES", "JoinedRooms", "Presence", "PresenceState"]

PRESENCE_STATES: Final = frozenset({"online", "offline", "unavailable"})
_MAX_STATUS_LENGTH: Final = 4096
#: A user last active this recently, and online, is ``currently_active``.
_CURRENTLY_ACTIVE_MS: Final = 60_000


class JoinedRooms(Protocol):
    """The rooms a user is joined to (:class:`ranvier.core.rooms.RoomReader`)."""

    async def joined_rooms(self, user_id: str) -> Collection[str]: ...


@dataclass(frozen=True, slots=True)
class PresenceState:
    """A user's presence as last set."""

    presence: str
    status_msg: str | None
    #: Wall-clock milliseconds of the user's last activity; None if unknown.
    last_active_ts: int | None


def _bad(message: str, errcode: str = "M_INVALID_PARAM") -> MatrixError:
    return MatrixError(message, errcode=errcode, http_status=400)


class Presence:
    """Users' presence, in memory. ``rooms`` decides who may see whose."""

    def __init__(self, *, rooms: JoinedRooms, clock: Clock = wall_clock_ms) -> None:
        self._rooms = rooms
        self._clock = clock
        self._states: dict[str, PresenceState] = {}

    async def set_presence(self, requester: str, user_id: str, body: Mapping[str, Any]) -> None:
        """``PUT /presence/{userId}/status``: only a user's own."""
        if requester != user_id:
            raise MatrixError(
                f"{requester} cannot set the presence of {user_id}",
                errcode="M_FORBIDDEN",
                http_status=403,
            )
        presence = body.get("presence")
        if not isinstance(presence, str):
            raise _bad("presence is required, one of online, offline or unavailable", "M_BAD_JSON")
        if presence not in PRESENCE_STATES:
            raise _bad(f"presence must be online, offline or unavailable, not {presence[:40]!r}")
        status = body.get("status_msg")
        if status is not None and not isinstance(status, str):
            raise _bad("status_msg must be a string", "M_BAD_JSON")
        if status is not None and len(status) > _MAX_STATUS_LENGTH:
            raise _bad(f"status_msg is longer than {_MAX_STATUS_LENGTH} characters")
        await trio.lowlevel.checkpoint()
        self._states[user_id] = PresenceState(presence, status, self._clock())

    async def get_presence(self, requester: str, user_id: str) -> dict[str, Any]:
        """``GET /presence/{userId}/status``."""
        if not is_valid_user_id(user_id):
            raise _bad(f"{user_id[:60]!r} is not a user ID")
        if requester != user_id:
            mine = set(await self._rooms.joined_rooms(requester))
            if mine.isdisjoint(await self._rooms.joined_rooms(user_id)):
                raise MatrixError(
                    f"{requester} shares no room with {user_id}, and may not see their presence",
                    errcode="M_FORBIDDEN",
                    http_status=403,
                )
        state = self._states.get(user_id)
        if state is None:
            return {"presence": "offline"}
        answer: dict[str, Any] = {"presence": state.presence}
        if state.status_msg is not None:
            answer["status_msg"] = state.status_msg
        if state.last_active_ts is not None:
            ago = max(0, self._clock() - state.last_active_ts)
            answer["last_active_ago"] = ago
            answer["currently_active"] = state.presence == "online" and ago < _CURRENTLY_ACTIVE_MS
        return answer

    def on_remote_presence(self, origin: str, pushed: Collection[Mapping[str, Any]]) -> int:
        """The ``push`` list of an ``m.presence`` EDU from ``origin``; return
        how many entries were taken (those of ``origin``'s own users).
        """
        taken = 0
        now = self._clock()
        for entry in pushed:
            user_id = entry.get("user_id")
            presence = entry.get("presence")
            if not isinstance(user_id, str) or server_of(user_id) != origin:
                continue
            if presence not in PRESENCE_STATES:
                continue
            status = entry.get("status_msg")
            ago = entry.get("last_active_ago")
            last_active = (
                now - ago
                if isinstance(ago, int) and not isinstance(ago, bool) and ago >= 0
                else None
            )
            self._states[user_id] = PresenceState(
                str(presence), status if isinstance(status, str) else None, last_active
            )
            taken += 1
        return taken
