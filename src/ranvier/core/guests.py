"""Guest accounts (client-server API, "Guest Access"), when the operator
allows them (``[registration] allow_guest_access``).

A guest registers with ``kind=guest`` and no credentials, may call only the
routes of :mod:`ranvier.api.guest_routes` (the auth layer refuses the rest
with 403 ``M_GUEST_ACCESS_FORBIDDEN``), and may join only a room whose
current ``m.room.guest_access`` says ``can_join``.

Invariants
----------

* **Guest IDs are all digits; no one else's are.** A guest's localpart is a
  random number of :data:`_GUEST_DIGITS` digits, and client registration
  refuses an all-digit username, so a guest's ID is never one a person
  chose, and a person never takes the number a guest would have drawn (a
  draw that is taken anyway, by an account an admin made, is drawn again).
* **No guest stays in a room that stopped letting guests in.** A guest's
  join reads the room's current state before it is made and again after it
  is stored, and leaves at once if it no longer says ``can_join``. A change
  stored after the join is seen by :class:`GuestEviction`, which looks at
  every joined local guest once at start and again after each stored
  ``m.room.guest_access`` event, and makes each guest of a room that does
  not say ``can_join`` leave it, the server sending the leave as the
  deactivation of an account does. Between the two, whichever of the join
  and the change is stored last sees the other.
* **Joins through other servers are refused to guests.** The room's state
  is known only once the join is made, and the join event would already
  be in the room; so a guest joins only rooms this server is in, as in
  Synapse, where the guest check reads the local current state.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import Any, Final, Protocol

import trio

from ranvier.errors import MatrixError

from .client_events import event_content
from .interfaces import StateReader
from .notifier import StreamNotifier

__all__ = [
    "CAN_JOIN",
    "EVICTION_REASON",
    "GUEST_ACCESS",
    "GuestEviction",
    "GuestEvictionStore",
    "GuestJoins",
    "RoomLeaver",
    "guest_access_forbidden",
    "guest_join_refused",
    "is_guest_localpart",
    "new_guest_localpart",
]

_log = logging.getLogger(__name__)

GUEST_ACCESS: Final = "m.room.guest_access"
CAN_JOIN: Final = "can_join"

#: How many digits a guest's localpart has: enough that drawing a taken one
#: is rare (it is then drawn again), few enough to read out.
_GUEST_DIGITS: Final = 12

#: The reason each eviction's leave event carries, for the room's members.
EVICTION_REASON: Final = "the room no longer allows guests"


def new_guest_localpart() -> str:
    """A random all-digit localpart for a new guest (no leading zero, so
    that every guest ID has the same length)."""
    low = 10 ** (_GUEST_DIGITS - 1)
    return str(low + secrets.randbelow(9 * low))


def is_guest_localpart(localpart: str) -> bool:
    """Whether ``localpart`` has the shape kept for guests: ASCII digits only."""
    return bool(localpart) and localpart.isascii() and localpart.isdigit()


def guest_access_forbidden(message: str) -> MatrixError:
    """403 ``M_GUEST_ACCESS_FORBIDDEN``, the spec's refusal of a guest."""
    return MatrixError(message, errcode="M_GUEST_ACCESS_FORBIDDEN", http_status=403)


def allows_guests(content: Mapping[str, Any] | None) -> bool:
    """Whether an ``m.room.guest_access`` content (None: no such event) lets
    guests join."""
    return content is not None and content.get("guest_access") == CAN_JOIN


class GuestJoins:
    """Whether a room lets guests join now, from its current state here."""

    def __init__(self, state: StateReader) -> None:
        self._state = state

    async def allows_guests(self, room_id: str) -> bool:
        """Whether ``room_id``'s current state here says ``can_join``; False
        for a room this server holds no state of."""
        key = (GUEST_ACCESS, "")
        found = await self._state.get_current_state_ids_for_keys(room_id, [key])
        event_id = found.get(key)
        if event_id is None:
            return False
        event = (await self._state.get_events([event_id])).get(event_id)
        return event is not None and allows_guests(event_content(event))

    async def check(self, room_id: str) -> None:
        """Raise 403 ``M_FORBIDDEN`` unless guests may join ``room_id``."""
        if not await self.allows_guests(room_id):
            raise guest_join_refused(room_id)


def guest_join_refused(room_id: str) -> MatrixError:
    """403 ``M_FORBIDDEN`` for a guest's join of ``room_id``."""
    return MatrixError(
        f"guests may not join {room_id}: its m.room.guest_access is not"
        f" {CAN_JOIN!r}, or this server is not in the room",
        errcode="M_FORBIDDEN",
        http_status=403,
    )


class RoomLeaver(Protocol):
    """A local user's leave (:class:`ranvier.core.room_leaves.RoomLeaves`)."""

    async def leave(self, user_id: str, room_id: str, *, reason: str | None = None) -> str: ...


class GuestEvictionStore(Protocol):
    """What :class:`GuestEviction` reads (:class:`ranvier.storage.guests.GuestStorage`)."""

    async def newest_position(self) -> int: ...

    async def guest_access_changed_after(self, after: int) -> tuple[bool, int]: ...

    async def guests_to_evict(self) -> list[tuple[str, str]]: ...


class GuestEviction:
    """Makes local guests leave rooms that stopped letting guests in.

    Runs in the main process only, as one task; a worker's writes reach it
    through the stream notifier like everyone else's.
    """

    def __init__(
        self, store: GuestEvictionStore, leaver: RoomLeaver, notifier: StreamNotifier
    ) -> None:
        self._store = store
        self._leaver = leaver
        self._notifier = notifier
        #: The stream position looked at so far.
        self.position = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.position = await self._store.newest_position()
        task_status.started()
        # Changes made while the server was down are found by one look at
        # every joined guest.
        await self.evict()
        while True:
            while self._notifier.position.events <= self.position:
                await self._notifier.wait_beyond(self._notifier.position)
            changed, self.position = await self._store.guest_access_changed_after(self.position)
            if changed:
                await self.evict()

    async def evict(self) -> int:
        """Make every joined local guest of a room that does not let guests
        in leave it; return how many leaves were sent. A leave that fails
        is logged and tried again at the next change, not raised: one
        room's trouble must not stop the others'."""
        sent = 0
        for room_id, user_id in await self._store.guests_to_evict():
            try:
                await self._leaver.leave(user_id, room_id, reason=EVICTION_REASON)
            except MatrixError as exc:
                _log.warning("guest %s could not be made to leave %s: %s", user_id, room_id, exc)
                continue
            sent += 1
        return sent
