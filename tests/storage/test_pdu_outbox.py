"""Our users' leaves of a purged room, kept by the purge for the servers
that have not acknowledged them with the events before them they may have
missed (real storage): which events, for whom, in order, exactly as
stored; and the outbox's reads and deletes."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from ranvier.storage import Storage, pdu_outbox
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


async def _room(storage: Storage) -> tuple[str, dict[str, str], dict[str, int], dict[str, bytes]]:
    """A room of ours with four other servers, whose users leave at the
    end: its ID, and by name its last events, their stream orderings and
    their JSON as stored. No position is written for any server."""
    room = RoomBuilder("10", ALICE)
    room.public_room(BOB, DAVE, ERIN, HAL, FRANK)
    events = {
        "invite": room.member(ALICE, "invite", CAROL).event_id,
        "bob leaves": room.member(BOB, "leave").event_id,
        # Another server's user leaving is that server's to send.
        "hal leaves": room.member(HAL, "leave").event_id,
        "said": room.message(ALICE, "before leaving").event_id,
        "alice leaves": room.member(ALICE, "leave").event_id,
    }
    await ingest_all(storage, room.order)
    stored = await storage.get_events(events.values())
    orderings = {name: stored[event_id].stream_ordering for name, event_id in events.items()}
    jsons = {event_id: stored[event_id].json for event_id in events.values()}
    return room.room_id, events, orderings, jsons


async def _kept(storage: Storage, destinations: tuple[str, ...]) -> dict[str, list[str]]:
    return {
        destination: [
            event_id for _, event_id, _ in await storage.pdu_outbox.outbox_pdus(destination, 0, 50)
        ]
        for destination in destinations
    }


async def test_the_purge_keeps_the_leaves_each_server_is_owed(storage: Storage) -> None:
    room_id, events, at, jsons = await _room(storage)
    # other.example took everything; third.example took nothing since
    # before Bob left; fifth.example, no longer in the room, was handed
    # Bob's leave and did not take it; fourth.example has no position
    # written yet (Alice's leave was handed over a moment ago).
    await storage.store_destination_rooms("other.example", {room_id: at["alice leaves"]})
    await storage.mark_destination_rooms_sent("other.example", {room_id: at["alice leaves"]})
    await storage.store_destination_rooms("third.example", {room_id: at["alice leaves"]})
    await storage.mark_destination_rooms_sent("third.example", {room_id: at["bob leaves"] - 1})
    await storage.store_destination_rooms("fifth.example", {room_id: at["hal leaves"]})
    await storage.store_destination_rooms(OURS, {room_id: at["alice leaves"]})

    result = await storage.room_purge.purge_room(
        room_id, origin=OURS, leaves=[events["alice leaves"]]
    )

    assert result is not None
    assert result.owed_destinations == ("fifth.example", "fourth.example", "third.example")
    assert await storage.get_room_version(room_id) is None
    outbox = storage.pdu_outbox
    assert await outbox.pdu_outbox_destinations(None, 10) == list(result.owed_destinations)
    assert await outbox.pdu_outbox_destinations("fifth.example", 1) == ["fourth.example"]
    kept = await _kept(storage, result.owed_destinations)
    names = {event_id: name for name, event_id in events.items()}
    assert {d: [names[e] for e in event_ids] for d, event_ids in kept.items()} == {
        # The leaves it is owed; it has no event in the room to say since when
        # it missed any other.
        "fifth.example": ["bob leaves", "alice leaves"],
        # All since its user joined.
        "fourth.example": ["invite", "bob leaves", "hal leaves", "said", "alice leaves"],
        # All since the last it took, but its own.
        "third.example": ["bob leaves", "said", "alice leaves"],
    }
    # Exactly as stored: signatures and hashes cover every byte.
    for destination in result.owed_destinations:
        for _, event_id, json in await outbox.outbox_pdus(destination, 0, 50):
            assert json == jsons[event_id]

    # Taken up to a position: those go, the rest stay.
    positions = [p for p, _, _ in await outbox.outbox_pdus("third.example", 0, 10)]
    assert await outbox.delete_outbox_pdus("third.example", positions[0]) == 1
    assert [p for p, _, _ in await outbox.outbox_pdus("third.example", 0, 10)] == positions[1:]
    assert await outbox.outbox_pdus("third.example", positions[-1], 10) == []
    assert await outbox.delete_outbox_pdus("third.example", positions[-1]) == 2
    assert await outbox.pdu_outbox_destinations(None, 10) == ["fifth.example", "fourth.example"]


async def test_the_gap_kept_is_the_newest_events_and_every_leave_owed(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pdu_outbox, "MAX_GAP", 2)
    room_id, events, at, _ = await _room(storage)
    await storage.store_destination_rooms("third.example", {room_id: at["alice leaves"]})
    await storage.mark_destination_rooms_sent("third.example", {room_id: at["invite"] - 1})

    result = await storage.room_purge.purge_room(room_id, origin=OURS)

    assert result is not None
    # Without the leaves just made, only those handed over and not taken.
    assert result.owed_destinations == ("third.example",)
    # It missed the invite too, but only two events of the gap are kept:
    # the newest, and Bob's leave all the same.
    (kept,) = (await _kept(storage, ("third.example",))).values()
    assert kept == [events["bob leaves"], events["said"], events["alice leaves"]]


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
