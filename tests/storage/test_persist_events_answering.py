"""Events written with the answer to the federation transaction that brought
them (:meth:`Storage.persist_events_answering`): one request, one commit,
and neither written when the events are refused."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

from ranvier.errors import PartialStateConflictError
from ranvier.storage import Storage
from ranvier.storage.records import EventToPersist, ReceivedTransaction

ROOM = "!room:example.org"
EventFactory = Callable[..., EventToPersist]


def _answer(transaction_id: str, *event_ids: str) -> ReceivedTransaction:
    return ReceivedTransaction(
        origin="remote.example",
        transaction_id=transaction_id,
        response_code=200,
        response_json=msgspec.json.encode({"pdus": {event_id: {} for event_id in event_ids}}),
        received_ts=1_700_000_000_000,
    )


async def test_the_events_and_the_answer_take_one_request(
    storage: Storage, make_event: EventFactory
) -> None:
    base = await storage.store_state_group(ROOM, None, {("m.room.create", ""): "$create"})
    requests = storage.actor.stats.requests
    events = [make_event("$a", before=base), make_event("$b", before=base, prev=("$a",))]
    orderings = await storage.persist_events_answering(events, _answer("t1", "$a", "$b"))
    assert storage.actor.stats.requests == requests + 1
    assert sorted(orderings) == ["$a", "$b"]
    assert set(await storage.get_events(["$a", "$b"])) == {"$a", "$b"}
    assert await storage.get_forward_extremities(ROOM) == {"$b"}
    assert await storage.get_received_transaction("remote.example", "t1") == _answer(
        "t1", "$a", "$b"
    )


async def test_a_refused_write_records_no_answer(
    storage: Storage, make_event: EventFactory
) -> None:
    base = await storage.store_state_group(ROOM, None, {("m.room.create", ""): "$create"})
    # The room has no partial state (any more): an event with it is refused.
    with pytest.raises(PartialStateConflictError):
        await storage.persist_events_answering(
            [make_event("$a", before=base), make_event("$b", before=base, partial=True)],
            _answer("t1", "$a", "$b"),
        )
    assert storage.partial_state_conflicts == 1
    assert await storage.get_events(["$a", "$b"]) == {}
    # Nothing answers a resend from a record, so the transaction is handled again.
    assert await storage.get_received_transaction("remote.example", "t1") is None


async def test_the_current_state_named_is_taken(storage: Storage, make_event: EventFactory) -> None:
    base = await storage.store_state_group(ROOM, None, {("m.room.create", ""): "$create"})
    named = await storage.store_state_group(ROOM, base, {("m.room.name", ""): "$name"})
    await storage.persist_events_answering(
        [make_event("$a", before=base)], _answer("t1", "$a"), current_state_groups={ROOM: named}
    )
    assert await storage.get_current_state_ids(ROOM) == {
        ("m.room.create", ""): "$create",
        ("m.room.name", ""): "$name",
    }
