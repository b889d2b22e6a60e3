import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from ranvier.errors import StorageUnavailableError
from ranvier.protocol.room_versions import get_room_version
from ranvier.storage import (
    DestinationRetry,
    EventToPersist,
    ReceivedTransaction,
    ServerKey,
    Storage,
)

ROOM = "!room:example.org"
CREATE = ("m.room.create", "")
EventFactory = Callable[..., EventToPersist]


async def test_a_room_through_the_facade(storage: Storage, make_event: EventFactory) -> None:
    base = await storage.store_state_group(ROOM, None, {CREATE: "$create"})
    named = await storage.store_state_group(ROOM, base, {("m.room.name", ""): "$name"})
    assert await storage.get_state_ids(named) == {CREATE: "$create", ("m.room.name", ""): "$name"}
    orderings = await storage.persist_events(
        [make_event("$a", before=base), make_event("$b", before=base, prev=("$a",))],
        current_state_groups={ROOM: named},
    )
    assert list(orderings) == ["$a", "$b"]
    assert await storage.get_forward_extremities(ROOM) == {"$b"}
    assert await storage.get_current_state_ids(ROOM) == {
        CREATE: "$create",
        ("m.room.name", ""): "$name",
    }
    groups = await storage.get_event_state_groups("$b")
    assert groups is not None
    assert (groups.before, groups.after) == (base, base)
    await storage.set_current_state(ROOM, base)
    assert await storage.get_current_state_ids(ROOM) == {CREATE: "$create"}
    event = await storage.get_event("$a")
    assert event is not None
    assert event.json == make_event("$a", before=base).json
    assert await storage.get_event("$missing") is None


async def test_many_events_at_once(storage: Storage, make_event: EventFactory) -> None:
    events = [make_event(f"$e{n}", outlier=True) for n in range(1_200)]
    await storage.persist_events(events)
    ids = [event.event_id for event in events] + ["$missing"]
    assert await storage.have_seen_events(ids) == {event.event_id for event in events}
    found = await storage.get_events(ids)
    assert len(found) == 1_200
    assert found["$e7"].json == events[7].json


async def test_partial_join_through_the_facade(storage: Storage, make_event: EventFactory) -> None:
    await storage.store_partial_join(
        "!big:example.org", get_room_version("10"), "$join", "hs.example", {"a.example"}
    )
    rooms = await storage.get_partial_state_rooms()
    assert set(rooms) == {"!big:example.org"}
    assert rooms["!big:example.org"].room_version == "10"
    assert rooms["!big:example.org"].servers == {"a.example", "hs.example"}
    assert await storage.is_partial_state_room("!big:example.org")
    assert not await storage.is_partial_state_room(ROOM)
    # The extremities and the partial-state flag read together agree with each.
    assert await storage.get_room_head("!big:example.org") == (
        await storage.get_forward_extremities("!big:example.org"),
        True,
    )
    assert await storage.get_room_head(ROOM) == (
        await storage.get_forward_extremities(ROOM),
        False,
    )
    assert await storage.get_room_version("!big:example.org") == "10"
    assert await storage.clear_partial_state("!big:example.org") is True
    assert await storage.get_partial_state_rooms() == {}


async def test_federation_records_through_the_facade(storage: Storage) -> None:
    txn = ReceivedTransaction(
        origin="hs.example",
        transaction_id="t",
        response_code=200,
        response_json=b"{}",
        received_ts=1,
    )
    await storage.record_transaction(txn)
    assert await storage.get_received_transaction("hs.example", "t") == txn
    key = ServerKey(
        server_name="hs.example",
        key_id="ed25519:k",
        verify_key=b"\x01" * 32,
        valid_until_ts=10,
        from_server="hs.example",
        fetched_ts=2,
        key_json=b"{}",
    )
    await storage.store_server_keys([key])
    assert await storage.get_server_keys("hs.example", {"ed25519:k"}) == {"ed25519:k": key}
    retry = DestinationRetry(
        destination="hs.example", failure_ts=None, retry_last_ts=3, retry_interval_ms=4
    )
    await storage.store_destination_retry("hs.example", retry)
    assert await storage.get_destination_retry("hs.example") == retry


async def test_a_stopped_store_refuses_reads_and_writes(db_path: Path) -> None:
    storage = Storage(db_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(storage.run)
        await storage.store_room(ROOM, get_room_version("11"))
        assert await storage.get_room_version(ROOM) == "11"
        nursery.cancel_scope.cancel()
    with pytest.raises(StorageUnavailableError):
        await storage.get_room_version(ROOM)
    with pytest.raises(StorageUnavailableError):
        await storage.store_room(ROOM, "11")


async def test_reopening_keeps_everything(db_path: Path, make_event: EventFactory) -> None:
    for round_ in range(2):
        storage = Storage(db_path, synchronous="NORMAL")
        async with trio.open_nursery() as nursery:
            await nursery.start(storage.run)
            await storage.store_room(ROOM, "10")
            await storage.persist_events([make_event(f"$r{round_}", outlier=True)])
            seen = await storage.have_seen_events(["$r0", "$r1"])
            nursery.cancel_scope.cancel()
    assert seen == {"$r0", "$r1"}


async def test_a_stopped_store_leaves_everything_in_the_database_file(
    db_path: Path, tmp_path: Path
) -> None:
    storage = Storage(db_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(storage.run)
        await storage.store_room(ROOM, "11")
        # A read leaves a reader connection open until the store stops.
        assert await storage.get_room_version(ROOM) == "11"
        nursery.cancel_scope.cancel()
    assert _rooms_in_the_file_alone(db_path, tmp_path / "alone.db") == [("11",)]


def _rooms_in_the_file_alone(db_path: Path, copy: Path) -> list[tuple[str]]:
    """The rooms a copy of the database file has, made without its write-ahead log."""
    copy.write_bytes(db_path.read_bytes())
    with contextlib.closing(sqlite3.connect(copy)) as conn:
        rows: list[tuple[str]] = conn.execute("SELECT room_version FROM rooms").fetchall()
    return rows
