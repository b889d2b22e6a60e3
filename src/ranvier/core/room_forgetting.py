"""Forgetting rooms: ``POST /rooms/{roomId}/forget``.

The spec lets a user who left a room forget it: its history and state are
no longer theirs to read (:mod:`ranvier.core.rooms`,
:func:`ranvier.core.pagination.readable_upto`), and it leaves ``/sync``'s
``leave`` section and sliding sync's lists, until the user is invited,
knocks or joins again, which clears the forgetting. A user still joined,
invited or knocking is refused with 400 ``M_UNKNOWN``, as other servers
answer; the check and the write are one transaction in storage, so a join
racing with the forget is never left marked forgotten.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["ForgetStore", "RoomForgetting"]


class ForgetStore(Protocol):
    """:class:`ranvier.storage.forgotten_rooms.ForgottenRoomStorage`."""

    async def forget_room(self, user_id: str, room_id: str) -> None: ...


class RoomForgetting:
    """Forgets rooms for their users; see the module's docstring."""

    def __init__(self, store: ForgetStore) -> None:
        self._store = store

    async def forget(self, user_id: str, room_id: str) -> None:
        await self._store.forget_room(user_id, room_id)
