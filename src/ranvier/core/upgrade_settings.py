"""What a user set on a room follows them to the room that replaced it.

The spec's room upgrades ask the server to carry a user's settings of the
old room over to the new one when they join it: their push rules for the
room and their tags. A room replaces another when its create event names
it as ``predecessor``; the settings are carried over when a user of this
server joins the new room (here or through another server) and when the
user who upgrades a room here becomes the new room's first member.

Invariants
----------

* **Only what the user has not set on the new room.** A ``room`` push rule
  whose rule ID is the old room's ID is copied (its actions, enabled or
  not) only when the user has no rule for the new room, and the old room's
  ``m.tag`` account data only when the new room has none: joining again,
  or settings made on the new room first, are never overwritten.
* **After the join.** The copy follows a join already made: a join is
  never refused or undone for its sake.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from ranvier.protocol.auth import CREATE_KEY

from .interfaces import StateReader
from .notifier import StreamNotifier
from .room_tags import TAG_TYPE

__all__ = ["RoomRuleCopier", "TagStore", "UpgradedRoomSettings"]


class RoomRuleCopier(Protocol):
    """The user's push rules (:class:`ranvier.core.push_rules.PushRules`)."""

    async def copy_room_rule(self, user_id: str, old_room_id: str, new_room_id: str) -> bool: ...


class TagStore(Protocol):
    """Room account data in storage
    (:class:`ranvier.storage.client_data.ClientDataStorage`).
    """

    async def get_account_data(
        self, user_id: str, room_id: str, data_type: str
    ) -> bytes | None: ...

    async def replace_account_data(
        self, user_id: str, room_id: str, data_type: str, content: bytes, expected: bytes | None
    ) -> int | None: ...


class UpgradedRoomSettings:
    """Carries a user's settings of a room over to its replacement."""

    def __init__(
        self,
        *,
        state: StateReader,
        rules: RoomRuleCopier,
        tags: TagStore,
        notifier: StreamNotifier | None = None,
    ) -> None:
        self._state = state
        self._rules = rules
        self._tags = tags
        self._notifier = notifier

    async def joined(self, user_id: str, room_id: str) -> None:
        """``user_id`` (of this server) has joined ``room_id``: if it
        replaced a room, copy their settings of that room over.
        """
        old_room_id = await self._predecessor(room_id)
        if old_room_id is None or old_room_id == room_id:
            return
        await self._rules.copy_room_rule(user_id, old_room_id, room_id)
        tags = await self._tags.get_account_data(user_id, old_room_id, TAG_TYPE)
        if tags is None:
            return
        position = await self._tags.replace_account_data(user_id, room_id, TAG_TYPE, tags, None)
        if position is not None and self._notifier is not None:
            self._notifier.advance_account_data(position, user_id)

    async def _predecessor(self, room_id: str) -> str | None:
        """The room ``room_id``'s create event names as the one it replaces."""
        ids = await self._state.get_current_state_ids_for_keys(room_id, [CREATE_KEY])
        create_id = ids.get(CREATE_KEY)
        if create_id is None:
            return None
        create = (await self._state.get_events([create_id])).get(create_id)
        if create is None:
            return None
        event = msgspec.json.decode(create.json)
        content = event.get("content") if isinstance(event, dict) else None
        predecessor = content.get("predecessor") if isinstance(content, dict) else None
        old_room_id = predecessor.get("room_id") if isinstance(predecessor, dict) else None
        return old_room_id if isinstance(old_room_id, str) and old_room_id else None
