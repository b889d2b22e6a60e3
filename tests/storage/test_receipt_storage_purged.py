"""Receipts for a room not stored here, in a real SQLite file: refused
with :class:`RoomGoneError`, writing nothing, the receipts stream where
it was."""

from __future__ import annotations

import pytest

from ranvier.errors import RoomGoneError
from ranvier.storage import Storage

# The room the storage fixture makes.
ROOM = "!room:example.org"
ALICE = "@alice:example.org"


async def _put(storage: Storage, room_id: str, event_id: str) -> int | None:
    return await storage.receipts.put_receipt(
        room_id=room_id,
        receipt_type="m.read",
        user_id=ALICE,
        thread_id="",
        event_id=event_id,
        ts=7,
    )


async def test_a_receipt_for_a_purged_room_is_refused(storage: Storage) -> None:
    first = await _put(storage, ROOM, "$1")
    assert first is not None
    assert await storage.room_purge.purge_room(ROOM) is not None
    with pytest.raises(RoomGoneError) as gone:
        await _put(storage, ROOM, "$2")
    assert (gone.value.room_id, gone.value.http_status) == (ROOM, 404)
    # Nor is a room never stored here brought in by one.
    with pytest.raises(RoomGoneError):
        await _put(storage, "!never:example.org", "$3")
    assert await storage.receipts.receipts_position() == first
    assert await storage.receipts.receipt_changes([ROOM, "!never:example.org"], 0, first + 5) == []
    assert await storage.get_room_version(ROOM) is None
