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


async def test_writes_run_twice_change_nothing_more(storage: Storage, db_path: Path) -> None:
    await run_twice(
        storage,
        db_path,
        write_call(_start_position, service_id="irc", stream_ordering=4),
        _TABLES,
    )
    add = write_call(_add_transaction, service_id="irc", txn_id=1, through=9, body=b"{}")
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
