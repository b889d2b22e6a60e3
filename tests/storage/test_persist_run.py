"""A run's events written with the answer to the federation transaction that
brought them (:meth:`Storage.persist_run`): one request, one commit, and
neither written when the events are refused; and a run judged against what
its room's last write left, written only if nothing changed since."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import msgspec
import pytest

from ranvier.errors import PartialStateConflictError, StaleRunError
from ranvier.storage import Storage
from ranvier.storage.records import EventToPersist, ReceivedTransaction
from ranvier.storage.state_groups import store_state_group
from ranvier.storage.write_marks import WriteMark
from ranvier.storage.writes import PersistRun

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
    written = await storage.persist_run(ROOM, events, answer=_answer("t1", "$a", "$b"))
    assert storage.actor.stats.requests == requests + 1
    assert sorted(written.orderings) == ["$a", "$b"]
    assert written.mark == storage.room_mark(ROOM)
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
        await storage.persist_run(
            ROOM,
            [make_event("$a", before=base), make_event("$b", before=base, partial=True)],
            answer=_answer("t1", "$a", "$b"),
        )
    assert storage.partial_state_conflicts == 1
    assert await storage.get_events(["$a", "$b"]) == {}
    # Nothing answers a resend from a record, so the transaction is handled again.
    assert await storage.get_received_transaction("remote.example", "t1") is None


async def test_the_current_state_named_is_taken(storage: Storage, make_event: EventFactory) -> None:
    base = await storage.store_state_group(ROOM, None, {("m.room.create", ""): "$create"})
    named = await storage.store_state_group(ROOM, base, {("m.room.name", ""): "$name"})
    await storage.persist_run(
        ROOM,
        [make_event("$a", before=base)],
        answer=_answer("t1", "$a"),
        current_state_groups={ROOM: named},
    )
    assert await storage.get_current_state_ids(ROOM) == {
        ("m.room.create", ""): "$create",
        ("m.room.name", ""): "$name",
    }


# --- A run judged against what the room's last write left --------------------------

OTHER = "!other:example.org"


async def _first_run(storage: Storage, make_event: EventFactory) -> tuple[int, WriteMark]:
    """A room with a state group and one event written by a run: the group,
    and the mark that write got back."""
    base = await storage.store_state_group(ROOM, None, {("m.room.create", ""): "$create"})
    written = await storage.persist_run(ROOM, [make_event("$a", before=base)])
    assert written.mark is not None
    return base, written.mark


async def test_a_run_is_written_when_nothing_touched_its_room_since_the_mark(
    storage: Storage, make_event: EventFactory
) -> None:
    base, mark = await _first_run(storage, make_event)
    assert storage.room_mark(ROOM) == mark
    written = await storage.persist_run(
        ROOM,
        [make_event("$b", before=base, prev=("$a",))],
        answer=_answer("t2", "$b"),
        since=mark,
    )
    assert sorted(written.orderings) == ["$b"]
    # Its own write moves the mark, and the next run starts from the new one.
    assert written.mark is not None
    assert written.mark != mark
    assert storage.room_mark(ROOM) == written.mark
    assert await storage.get_forward_extremities(ROOM) == {"$b"}
    assert await storage.get_received_transaction("remote.example", "t2") is not None


async def _refused(
    storage: Storage, make_event: EventFactory, base: int, mark: WriteMark, event_id: str = "$b"
) -> StaleRunError:
    """Check that a run of ``event_id`` since ``mark`` is refused, and that
    neither it nor its answer was written."""
    stored_before = await storage.get_events([event_id])
    with pytest.raises(StaleRunError) as refused:
        await storage.persist_run(
            ROOM,
            [make_event(event_id, before=base, prev=("$a",))],
            answer=_answer("t2", event_id),
            since=mark,
        )
    assert await storage.get_events([event_id]) == stored_before
    assert await storage.get_received_transaction("remote.example", "t2") is None
    return refused.value


async def test_another_write_of_the_room_makes_the_run_stale(
    storage: Storage, make_event: EventFactory
) -> None:
    base, mark = await _first_run(storage, make_event)
    await storage.persist_events([make_event("$local", before=base, prev=("$a",))])
    assert storage.room_mark(ROOM) != mark
    refused = await _refused(storage, make_event, base, mark)
    assert "1 other write(s) of the room" in str(refused)
    assert await storage.get_forward_extremities(ROOM) == {"$local"}


async def test_a_write_that_names_no_room_makes_the_run_stale(
    storage: Storage, make_event: EventFactory
) -> None:
    base, mark = await _first_run(storage, make_event)
    await storage.store_room(OTHER, "10")
    refused = await _refused(storage, make_event, base, mark)
    assert "may touch any room" in str(refused)


async def test_writes_of_another_room_leave_the_mark_alone(
    storage: Storage, make_event: EventFactory
) -> None:
    await storage.store_room(OTHER, "10")
    other = await storage.store_state_group(OTHER, None, {("m.room.create", ""): "$c2"})
    base, mark = await _first_run(storage, make_event)
    await storage.persist_events([make_event("$elsewhere", room_id=OTHER, before=other)])
    await storage.persist_run(OTHER, [make_event("$too", room_id=OTHER, before=other)])
    assert storage.room_mark(ROOM) == mark
    written = await storage.persist_run(
        ROOM, [make_event("$b", before=base, prev=("$a",))], since=mark
    )
    assert sorted(written.orderings) == ["$b"]


async def test_a_run_holding_a_stored_event_is_stale(
    storage: Storage, make_event: EventFactory
) -> None:
    base = await storage.store_state_group(ROOM, None, {("m.room.create", ""): "$create"})
    # Stored before the mark, as an outlier: the run took it for new.
    await storage.persist_events([make_event("$b", outlier=True, prev=("$a",))])
    written = await storage.persist_run(ROOM, [make_event("$a", before=base)])
    assert written.mark is not None
    refused = await _refused(storage, make_event, base, written.mark)
    assert "$b is stored already" in str(refused)
    # Still the outlier it was: the run's write did not touch it.
    (row,) = (await storage.get_events(["$b"])).values()
    assert row.outlier


async def test_a_run_holding_an_event_a_stored_event_cites_is_stale(
    storage: Storage, make_event: EventFactory
) -> None:
    base = await storage.store_state_group(ROOM, None, {("m.room.create", ""): "$create"})
    # $child cites $b, which is not stored: the run would make $b an extremity.
    await storage.persist_events([make_event("$child", outlier=True, prev=("$b",))])
    written = await storage.persist_run(ROOM, [make_event("$a", before=base)])
    assert written.mark is not None
    refused = await _refused(storage, make_event, base, written.mark)
    assert "a stored event cites one of the run's events" in str(refused)


async def test_a_run_holding_an_event_a_stored_redaction_names_is_stale(
    storage: Storage, make_event: EventFactory
) -> None:
    base = await storage.store_state_group(ROOM, None, {("m.room.create", ""): "$create"})
    redaction = make_event("$redaction", type="m.room.redaction", outlier=True, redacts="$b")
    await storage.persist_events([redaction])
    written = await storage.persist_run(ROOM, [make_event("$a", before=base)])
    assert written.mark is not None
    refused = await _refused(storage, make_event, base, written.mark)
    assert "a stored redaction names $b" in str(refused)


async def test_a_mark_of_another_actor_never_matches(
    storage: Storage, make_event: EventFactory
) -> None:
    base, mark = await _first_run(storage, make_event)
    # The same counts under the epoch of an actor started before this one.
    earlier = WriteMark("0" * 16, mark.unscoped, mark.room)
    refused = await _refused(storage, make_event, base, earlier)
    assert "storage restarted" in str(refused)


def test_a_run_since_a_mark_is_refused_outside_the_actor(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = store_state_group(conn, ROOM, None, {("m.room.create", ""): "$create"})
    event = make_event("$a", before=base)
    # Only the actor counts writes: without it, no mark, and none checked.
    assert PersistRun(ROOM, (event,))(conn).mark is None
    with pytest.raises(StaleRunError):
        PersistRun(ROOM, (make_event("$b", before=base),), since=WriteMark("e", 0, 1))(conn)


async def test_writes_of_no_room_leave_the_mark_alone(
    storage: Storage, make_event: EventFactory
) -> None:
    base, mark = await _first_run(storage, make_event)
    # A transaction of EDUs alone, and the federation sender's bookkeeping.
    await storage.record_transaction(_answer("edus only"))
    await storage.store_destination_rooms("remote.example", {ROOM: 1})
    assert storage.room_mark(ROOM) == mark
    written = await storage.persist_run(
        ROOM, [make_event("$b", before=base, prev=("$a",))], since=mark
    )
    assert sorted(written.orderings) == ["$b"]
