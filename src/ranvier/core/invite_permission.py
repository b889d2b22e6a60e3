"""Invite blocking (client-server API, "Invite permission", spec v1.18,
MSC4380): a user whose global account data ``m.invite_permission_config``
has ``default_action`` ``block`` is invited by nobody.

Their server refuses every invite of them with 403 ``M_INVITE_BLOCKED``:
``/invite``, a membership sent with ``PUT /state``, and ``/createRoom``,
which leaves such an invitee out and creates the room all the same
(:class:`ranvier.core.creation.EventCreator` asks :meth:`check_invite`).
Invites held already, or taken in from another server, are not shown by
``/sync`` and sliding sync while the block lasts (:meth:`blocks_invites`);
the room's state and the application services still see them, as the
spec has it. Lifting the block brings the held ones back on the next
initial sync (the spec's MAY).

The setting is read when an invite comes, not cached: account data is
written by one process and read by all, and an invite is rare beside the
other traffic of a request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

import msgspec

from ranvier.errors import MatrixError

__all__ = ["INVITE_PERMISSION_TYPE", "InvitePermission"]

#: The global account data type that holds the setting.
INVITE_PERMISSION_TYPE: Final = "m.invite_permission_config"


class InviteSettingsStore(Protocol):
    """Account data in storage (:class:`ranvier.storage.client_data.ClientDataStorage`)."""

    async def get_account_data(
        self, user_id: str, room_id: str, data_type: str
    ) -> bytes | None: ...


class InvitePermission:
    """Whether a user blocks invites, and the refusal when they do."""

    def __init__(self, store: InviteSettingsStore, *, is_local: Callable[[str], bool]) -> None:
        self._store = store
        self._is_local = is_local

    async def blocks_invites(self, user_id: str) -> bool:
        """Whether ``user_id`` set ``default_action`` to ``block``; anything
        else stored there (no setting, another value, a malformed entry)
        blocks nothing."""
        stored = await self._store.get_account_data(user_id, "", INVITE_PERMISSION_TYPE)
        if stored is None:
            return False
        try:
            content = msgspec.json.decode(stored)
        except msgspec.DecodeError:
            return False
        return isinstance(content, dict) and content.get("default_action") == "block"

    async def refuses_invite(self, invitee: str) -> bool:
        """Whether this server refuses to invite ``invitee``: a user of its
        own who blocks invites (one of another server is theirs to refuse)."""
        return self._is_local(invitee) and await self.blocks_invites(invitee)

    async def check_invite(self, invitee: str) -> None:
        """Raise 403 ``M_INVITE_BLOCKED`` when :meth:`refuses_invite`."""
        if await self.refuses_invite(invitee):
            raise MatrixError(
                f"{invitee} does not accept invites",
                errcode="M_INVITE_BLOCKED",
                http_status=403,
            )
