"""Receipts in a real SQLite file: positions, replacing, never moving back."""

from __future__ import annotations

from collections.abc import Callable

from ranvier.storage import EventToPersist, Storage

# The room the storage fixture makes.
ROOM = "!room:example.org"
EventFactory = Callable[..., EventToPersist]

ALICE = "@alice:example.org"
BOB = "@bob:remote.example"
OTHER_ROOM = "!other:example.org"


async def _put(storage: Storage, event_id: str, *, user: str = ALICE, **kw: str) -> int | None:
    fields = {"room_id": ROOM, "receipt_type": "m.read", "thread_id": ""} | kw
    return await storage.receipts.put_receipt(
        room_id=fields["room_id"],
        receipt_type=fields["receipt_type"],
        user_id=user,
        thread_id=fields["thread_id"],
        event_id=event_id,
        ts=7,
    )


async def test_a_receipt_replaces_the_one_before_at_a_new_position(
    storage: Storage, make_event: EventFactory
) -> None:
    await storage.persist_events([make_event("$1", outlier=True), make_event("$2", outlier=True)])
    receipts = storage.receipts
    assert await receipts.receipts_position() == 0
    first = await _put(storage, "$1")
    assert first is not None
    assert await receipts.receipts_position() == first
    second = await _put(storage, "$2")
    assert second is not None
    assert second > first
    changes = await receipts.receipt_changes([ROOM], 0, second)
    assert [(r.user_id, r.event_id, r.ts, r.thread_id) for r in changes] == [(ALICE, "$2", 7, "")]
    # Nothing between the two positions is left: the old row went.
    assert await receipts.receipt_changes([ROOM], 0, first) == []
    assert await receipts.receipt_changes([ROOM], second, second) == []


async def test_a_receipt_never_moves_back_or_repeats(
    storage: Storage, make_event: EventFactory
) -> None:
    await storage.persist_events([make_event("$1", outlier=True), make_event("$2", outlier=True)])
    newest = await _put(storage, "$2")
    assert await _put(storage, "$1") is None
    assert await _put(storage, "$2") is None
    assert await storage.receipts.receipts_position() == newest
    # An event not stored here (another server's) still replaces it.
    unknown = await _put(storage, "$elsewhere")
    assert unknown is not None
    assert newest is not None
    assert unknown > newest


async def test_types_threads_users_and_rooms_are_kept_apart(
    storage: Storage, make_event: EventFactory
) -> None:
    await storage.store_room(OTHER_ROOM, "10")
    await storage.persist_events([make_event("$1", outlier=True)])
    await _put(storage, "$1")
    await _put(storage, "$1", receipt_type="m.read.private")
    await _put(storage, "$1", thread_id="main")
    await _put(storage, "$1", user=BOB)
    await _put(storage, "$x", room_id=OTHER_ROOM)
    upto = await storage.receipts.receipts_position()
    in_room = await storage.receipts.receipt_changes([ROOM], 0, upto)
    assert {(r.receipt_type, r.user_id, r.thread_id) for r in in_room} == {
        ("m.read", ALICE, ""),
        ("m.read.private", ALICE, ""),
        ("m.read", ALICE, "main"),
        ("m.read", BOB, ""),
    }
    both = await storage.receipts.receipt_changes([ROOM, OTHER_ROOM], 0, upto)
    assert len(both) == 5
    assert [r.stream_id for r in both] == sorted(r.stream_id for r in both)
