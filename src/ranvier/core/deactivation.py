"""Deactivating an account: what ``/account/deactivate`` and the admin
API's deactivation undo.

The account is marked first, in one write with everything of it that
storage alone can remove: its devices with their keys and waiting
messages, the dehydrated device, tokens, e-mail addresses, account data
(push rules, ignored users, room tags …), key backups, pushers and the
rest :mod:`ranvier.storage.deactivation` lists, with what it keeps on
purpose (:meth:`ranvier.core.accounts.Accounts.deactivate`). From then on
no token or login of the user's works, nor a password reset, whatever
happens to the rest, and no crash leaves that data half removed. With
``erase`` the account is marked erased in that same write: from then on
users and servers that were not joined to a room at one of the user's
events get it redacted (:mod:`ranvier.core.erasure`). Then the user
leaves every room they are joined to, invited to or knocking on, through
the ordinary leave (so the rooms' other servers hear of it, and an invite
from another server is declined there); then every field of their
profile is erased, once no room is left to carry the change. The profile
goes with or without ``erase``, where Synapse keeps it without: this
server treats the name and avatar as data of the account, which nobody
may change any more.

Deactivating an account again runs every step again: whatever an earlier
run left (a room it could not leave, data a request in flight wrote after
it) is removed then, and nothing else changes.

A room that cannot be left now (its servers unreachable) does not stop the
rest: it is logged, and the others are still left.
"""

from __future__ import annotations

import logging
from typing import Protocol

from ranvier.errors import MatrixError

__all__ = ["Deactivation"]

_log = logging.getLogger(__name__)


class AccountDeactivator(Protocol):
    """Marks the account (:class:`ranvier.core.accounts.Accounts`)."""

    async def deactivate(self, user_id: str, *, erase: bool = False) -> None: ...


class LeavableRooms(Protocol):
    """The rooms a user is in (:class:`ranvier.storage.accounts.AccountStorage`)."""

    async def rooms_to_leave(self, user_id: str) -> list[str]: ...


class RoomLeaver(Protocol):
    """The leave of ``/rooms/{roomId}/leave`` (:class:`ranvier.core.room_leaves.RoomLeaves`)."""

    async def leave(self, user_id: str, room_id: str, *, reason: str | None = None) -> str: ...


class ProfileWriter(Protocol):
    """Local profiles (:class:`ranvier.storage.client_data.ClientDataStorage`)."""

    async def erase_profile(self, user_id: str) -> None: ...


class Deactivation:
    """Deactivates local accounts; see the module's doc."""

    def __init__(
        self,
        *,
        accounts: AccountDeactivator,
        rooms: LeavableRooms,
        leaves: RoomLeaver,
        profiles: ProfileWriter,
    ) -> None:
        self._accounts = accounts
        self._rooms = rooms
        self._leaves = leaves
        self._profiles = profiles

    async def deactivate(self, user_id: str, *, erase: bool = False) -> None:
        """Deactivate ``user_id``, whose password the caller has checked,
        and with ``erase`` mark the account erased.
        """
        await self._accounts.deactivate(user_id, erase=erase)
        for room_id in await self._rooms.rooms_to_leave(user_id):
            try:
                await self._leaves.leave(user_id, room_id)
            except MatrixError as exc:
                _log.warning("deactivated %s could not leave %s: %s", user_id, room_id, exc)
        await self._profiles.erase_profile(user_id)
