"""What a user set on a room follows them to the room that replaced it.

The spec's room upgrades ask the server to carry a user's settings of the
old room over to the new one when they join it: their push rules for the
room, their tags, and their ``m.direct`` account data, so a direct chat
stays one after an upgrade. A room replaces another when its create event names
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
* **``m.direct`` only gains the new room.** Each of its lists that names the
  old room gets the new room beside it, unless it names it already; other
  entries, and values that are not lists of room IDs, stay as they were.
  The write holds only if the entry is unchanged since it was read, so a
  client's change made meanwhile is read again, never overwritten.
* **After the join.** The copy follows a join already made: a join is
  never refused or undone for its sake.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

import msgspec

from ranvier.protocol.auth import CREATE_KEY

from .interfaces import StateReader
from .notifier import StreamNotifier
from .room_tags import TAG_TYPE

__all__ = ["RoomRuleCopier", "TagStore", "UpgradedRoomSettings"]

_DIRECT: Final = "m.direct"
#: How often the ``m.direct`` entry is read again after a client changed it
#: between the read and the write.
_DIRECT_ATTEMPTS: Final = 3


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
        if tags is not None:
            position = await self._tags.replace_account_data(user_id, room_id, TAG_TYPE, tags, None)
            self._advance(position, user_id)
        await self._carry_direct(user_id, old_room_id, room_id)

    async def _carry_direct(self, user_id: str, old_room_id: str, room_id: str) -> None:
        for _ in range(_DIRECT_ATTEMPTS):
            held = await self._tags.get_account_data(user_id, "", _DIRECT)
            if held is None:
                return
            changed = _direct_with(held, old_room_id, room_id)
            if changed is None:
                return
            position = await self._tags.replace_account_data(user_id, "", _DIRECT, changed, held)
            if position is not None:
                self._advance(position, user_id)
                return

    def _advance(self, position: int | None, user_id: str) -> None:
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


def _direct_with(held: bytes, old_room_id: str, room_id: str) -> bytes | None:
    """The ``m.direct`` content ``held`` with ``room_id`` added to every list
    naming ``old_room_id``; None when no list changes."""
    try:
        content: Any = msgspec.json.decode(held)
    except msgspec.DecodeError:
        return None
    if not isinstance(content, dict):
        return None
    changed = False
    for user, rooms in content.items():
        if isinstance(rooms, list) and old_room_id in rooms and room_id not in rooms:
            content[user] = [*rooms, room_id]
            changed = True
    return msgspec.json.encode(content) if changed else None
