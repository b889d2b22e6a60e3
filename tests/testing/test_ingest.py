"""ingest and ingest_all: a room written into real storage as core writes it."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from ranvier.storage import Storage
from ranvier.testing import RoomBuilder, ingest, ingest_all

ALICE = "@alice:example.org"
BOB = "@bob:example.org"


@pytest.mark.parametrize("version", ["10", "12"])
async def test_a_room_is_stored_with_its_state(
    tmp_path: Path, nursery: trio.Nursery, version: str
) -> None:
    storage = Storage(tmp_path / "test.db", synchronous="OFF")
    await nursery.start(storage.run)
    room = RoomBuilder(version, ALICE)
    room.public_room(BOB)
    message = room.message(BOB)
    contexts = await ingest_all(storage, room.order)
    assert len(contexts) == len(room.order)
    assert all(context.accepted for context in contexts)
    assert await storage.get_current_state_ids(room.room_id) == room.state
    assert await storage.get_forward_extremities(room.room_id) == {message.event_id}


async def test_an_event_the_auth_checks_refuse_is_written_rejected(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    storage = Storage(tmp_path / "test.db", synchronous="OFF")
    await nursery.start(storage.run)
    room = RoomBuilder("10", ALICE)
    room.public_room()
    await ingest_all(storage, room.order)
    stranger = room.message(BOB)
    with pytest.raises(AssertionError, match="failed the auth checks"):
        await ingest_all(storage, [stranger])
    stored = await storage.get_event(stranger.event_id)
    assert stored is not None
    assert stored.rejected_reason is not None
    # ingest says what happened instead of raising.
    again = room.message(BOB, "again")
    outcome = await ingest(storage, again)
    assert outcome.failure is not None
    assert not outcome.context.accepted
