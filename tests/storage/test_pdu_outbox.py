"""Our users' leaves of a purged room, kept by the purge for the servers
that have not acknowledged them (real storage): which leaves, for whom,
exactly as stored; and the outbox's reads and deletes."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from ranvier.storage import Storage
from ranvier.testing import RoomBuilder, ingest_all

OURS = "example.org"
ALICE = f"@alice:{OURS}"
BOB = f"@bob:{OURS}"
CAROL = f"@carol:{OURS}"
DAVE = "@dave:other.example"
ERIN = "@erin:third.example"
HAL = "@hal:third.example"
FRANK = "@frank:fourth.example"


@pytest.fixture
async def storage(tmp_path: Path, nursery: trio.Nursery) -> Storage:
    store = Storage(tmp_path / "outbox.db", synchronous="OFF")
    await nursery.start(store.run)
    return store


async def test_the_purge_keeps_the_leaves_each_server_is_owed(storage: Storage) -> None:
    room = RoomBuilder("10", ALICE)
    room.public_room(BOB, DAVE, ERIN, HAL, FRANK)
    room.member(ALICE, "invite", CAROL)
    bob_leaves = room.member(BOB, "leave")
    # Another server's user leaving is that server's to send.
    hal_leaves = room.member(HAL, "leave")
    alice_leaves = room.member(ALICE, "leave")
    await ingest_all(storage, room.order)
    room_id = room.room_id
    stored = await storage.get_events([bob_leaves.event_id, alice_leaves.event_id])
    bob_at = stored[bob_leaves.event_id].stream_ordering
    alice_at = stored[alice_leaves.event_id].stream_ordering
    hal_at = (await storage.get_events([hal_leaves.event_id]))[hal_leaves.event_id].stream_ordering

    # other.example took everything; third.example took nothing since
    # before Bob left; fifth.example, no longer in the room, was handed
    # Bob's leave and did not take it; fourth.example has no position
    # written yet (Alice's leave was handed over a moment ago).
    await storage.store_destination_rooms("other.example", {room_id: alice_at})
    await storage.mark_destination_rooms_sent("other.example", {room_id: alice_at})
    await storage.store_destination_rooms("third.example", {room_id: alice_at})
    await storage.mark_destination_rooms_sent("third.example", {room_id: bob_at - 1})
    await storage.store_destination_rooms("fifth.example", {room_id: hal_at})
    await storage.store_destination_rooms(OURS, {room_id: alice_at})

    result = await storage.room_purge.purge_room(
        room_id, origin=OURS, leaves=[alice_leaves.event_id]
    )

    assert result is not None
    assert result.owed_destinations == ("fifth.example", "fourth.example", "third.example")
    assert await storage.get_room_version(room_id) is None
    pdu_outbox = storage.pdu_outbox
    assert await pdu_outbox.pdu_outbox_destinations(None, 10) == list(result.owed_destinations)
    assert await pdu_outbox.pdu_outbox_destinations("fifth.example", 1) == ["fourth.example"]
    owed = {
        destination: await pdu_outbox.outbox_pdus(destination, 0, 10)
        for destination in result.owed_destinations
    }
    assert {d: [event_id for _, event_id, _ in rows] for d, rows in owed.items()} == {
        "fifth.example": [bob_leaves.event_id, alice_leaves.event_id],
        "fourth.example": [alice_leaves.event_id],
        "third.example": [bob_leaves.event_id, alice_leaves.event_id],
    }
    # Exactly as stored: signatures and hashes cover every byte.
    for rows in owed.values():
        for _, event_id, json in rows:
            assert json == stored[event_id].json

    # Taken up to a position: those go, the rest stay.
    (first, _, _), (second, _, _) = owed["third.example"]
    assert await pdu_outbox.delete_outbox_pdus("third.example", first) == 1
    assert [p for p, _, _ in await pdu_outbox.outbox_pdus("third.example", 0, 10)] == [second]
    assert await pdu_outbox.outbox_pdus("third.example", second, 10) == []
    assert await pdu_outbox.delete_outbox_pdus("third.example", second) == 1
    assert await pdu_outbox.pdu_outbox_destinations(None, 10) == [
        "fifth.example",
        "fourth.example",
    ]


async def test_a_purge_keeps_nothing_without_our_name_or_anything_owed(
    storage: Storage,
) -> None:
    room = RoomBuilder("10", ALICE)
    room.public_room(DAVE)
    alice_leaves = room.member(ALICE, "leave")
    await ingest_all(storage, room.order)
    # Without this server's name, nothing is kept, as before.
    copy = RoomBuilder("10", ALICE)
    copy.public_room(DAVE)
    copy_leave = copy.member(ALICE, "leave")
    await ingest_all(storage, copy.order)

    unnamed = await storage.room_purge.purge_room(copy.room_id, leaves=[copy_leave.event_id])
    assert unnamed is not None
    assert unnamed.owed_destinations == ()
    # Every server took the leave already.
    at = (await storage.get_events([alice_leaves.event_id]))[alice_leaves.event_id]
    await storage.store_destination_rooms("other.example", {room.room_id: at.stream_ordering})
    await storage.mark_destination_rooms_sent("other.example", {room.room_id: at.stream_ordering})
    taken = await storage.room_purge.purge_room(
        room.room_id, origin=OURS, leaves=[alice_leaves.event_id]
    )
    assert taken is not None
    assert taken.owed_destinations == ()
    assert await storage.pdu_outbox.pdu_outbox_destinations(None, 10) == []
