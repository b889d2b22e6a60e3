"""Application services' positions and transactions in a real SQLite file:
a transaction and the position past its events written together, writes
run twice, the events and rooms the sender reads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from _twice import run_twice, write_call

from ranvier.storage import EventToPersist, Storage
from ranvier.storage.appservices import (
    AppServicePosition,
    PendingTransaction,
    RoomInterest,
    _add_transaction,
    _complete_transaction,
    _set_position,
    _start_position,
)

EventFactory = Callable[..., EventToPersist]
_TABLES = ("appservice_positions", "appservice_transactions")


async def test_a_transaction_moves_the_position_with_it(storage: Storage) -> None:
    store = storage.appservices
    assert await store.position("irc") is None
    await store.start_position("irc", 10)
    # A service that has a position keeps it.
    await store.start_position("irc", 99)
    assert await store.position("irc") == AppServicePosition(10, 1)
    assert await store.pending_transaction("irc") is None

    await store.add_transaction("irc", 1, through=15, body=b'{"events":[1]}')
    await store.add_transaction("irc", 2, through=20, body=b'{"events":[2]}')
    assert await store.position("irc") == AppServicePosition(20, 3)
    assert await store.pending_transaction("irc") == PendingTransaction(1, b'{"events":[1]}')
    await store.complete_transaction("irc", 1)
    assert await store.pending_transaction("irc") == PendingTransaction(2, b'{"events":[2]}')
    await store.complete_transaction("irc", 2)
    assert await store.pending_transaction("irc") is None

    # Positions only move forward; another service is apart.
    await store.set_position("irc", 5)
    await store.set_position("irc", 30)
    assert await store.position("irc") == AppServicePosition(30, 3)
    assert await store.position("slack") is None


async def test_the_receipts_position_moves_with_the_transaction(storage: Storage) -> None:
    store = storage.appservices
    # A service not sent receipts has no receipts position.
    await store.start_position("irc", 10)
    assert await store.position("irc") == AppServicePosition(10, 1, None)
    await store.add_transaction("irc", 1, through=12, body=b"{}", receipts=7)
    assert await store.position("irc") == AppServicePosition(12, 2, None)

    # Asking for them starts it; a later start keeps it.
    await store.start_position("irc", 10, receipts=3)
    await store.start_position("irc", 10, receipts=50)
    assert await store.position("irc") == AppServicePosition(12, 2, 3)
    await store.add_transaction("irc", 2, through=12, body=b"{}", receipts=8)
    assert await store.position("irc") == AppServicePosition(12, 3, 8)
    # Forward only, with or without a transaction.
    await store.set_position("irc", 13, receipts=5)
    assert await store.position("irc") == AppServicePosition(13, 3, 8)
    await store.set_position("irc", 13, receipts=9)
    assert await store.position("irc") == AppServicePosition(13, 3, 9)
    # No longer asking forgets it: asking again later starts afresh.
    await store.start_position("irc", 10)
    assert await store.position("irc") == AppServicePosition(13, 3, None)


async def test_receipts_of_every_room_in_stream_order(storage: Storage) -> None:
    store = storage.appservices
    assert await store.receipts_after(0, limit=10) == []
    assert await store.receipts_position() == 0
    for room_id in ("!a:x", "!b:x"):
        await storage.store_room(room_id, "10")
    positions = []
    for room_id, user_id in (("!a:x", "@u:x"), ("!b:x", "@v:x"), ("!a:x", "@v:x")):
        position = await storage.receipts.put_receipt(
            room_id=room_id,
            receipt_type="m.read",
            user_id=user_id,
            thread_id="",
            event_id="$e",
            ts=5,
        )
        assert position is not None
        positions.append(position)
    found = await store.receipts_after(0, limit=10)
    assert [(r.room_id, r.user_id, r.stream_id) for r in found] == [
        ("!a:x", "@u:x", positions[0]),
        ("!b:x", "@v:x", positions[1]),
        ("!a:x", "@v:x", positions[2]),
    ]
    assert await store.receipts_after(positions[0], limit=1) == found[1:2]
    assert await store.receipts_position() == positions[2]


async def test_writes_run_twice_change_nothing_more(storage: Storage, db_path: Path) -> None:
    await run_twice(
        storage,
        db_path,
        write_call(_start_position, service_id="irc", stream_ordering=4),
        _TABLES,
    )
    await run_twice(
        storage,
        db_path,
        write_call(_start_position, service_id="irc", stream_ordering=4, receipts=2),
        _TABLES,
    )
    await run_twice(
        storage,
        db_path,
        write_call(_set_position, service_id="irc", stream_ordering=6, receipts=3),
        _TABLES,
    )
    add = write_call(
        _add_transaction, service_id="irc", txn_id=1, through=9, body=b"{}", receipts=4
    )
    await run_twice(storage, db_path, add, _TABLES)
    # The first body stays: a repeated write never changes what was sent.
    await storage.appservices.add_transaction("irc", 1, through=9, body=b'{"other":1}')
    assert await storage.appservices.pending_transaction("irc") == PendingTransaction(1, b"{}")
    await run_twice(
        storage, db_path, write_call(_complete_transaction, service_id="irc", txn_id=1), _TABLES
    )


async def test_events_and_room_interest(storage: Storage, make_event: EventFactory) -> None:
    group = await storage.store_state_group("!room:example.org", None, {})
    await storage.persist_events(
        [
            make_event("$plain", before=group, after=group),
            make_event("$outlier", outlier=True),
            make_event("$soft", before=group, after=group, soft_failed=True),
            make_event("$later", before=group, after=group),
        ]
    )
    store = storage.appservices
    events = await store.events_after(0, limit=10)
    assert [event.event_id for event in events] == ["$plain", "$later"]
    assert await store.events_after(events[0].stream_ordering, limit=10) == events[1:]
    assert await store.newest_stream_ordering() >= events[-1].stream_ordering

    interest = await store.room_interest(["!room:example.org", "!none:x"], "example.org")
    assert interest == {
        "!room:example.org": RoomInterest((), ()),
        "!none:x": RoomInterest((), ()),
    }
    assert await storage.aliases.create_alias("#a:example.org", "!room:example.org", "@u:x", 1)
    interest = await store.room_interest(["!room:example.org"], "example.org")
    assert interest["!room:example.org"].aliases == ("#a:example.org",)
