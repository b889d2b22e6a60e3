"""What each state event replaced, recorded as it is written
(:mod:`ranvier.storage.replaced_state`): every write path, partial state
judged again, and the read that serves the replaced events."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from _redactions import redaction_of

from conftest import ROOM, EventFactory
from ranvier.storage import Storage
from ranvier.storage.housekeeping import Prune
from ranvier.storage.redactions import RedactedEvent
from ranvier.storage.replaced_state import read_replaced_state, replaced_entry
from ranvier.storage.room_purge import purge_room
from ranvier.storage.state_groups import MAX_CHAIN_LENGTH, store_state_group
from ranvier.storage.writes import (
    persist_events,
    set_current_state,
    store_partial_join,
    update_state_for_partial_event,
)
from ranvier.testing import RoomBuilder, ingest_all

CREATE = ("m.room.create", "")
TOPIC = ("m.room.topic", "")
ALICE = "@alice:example.org"
BOB = "@bob:example.org"


def _recorded(conn: sqlite3.Connection) -> dict[str, str | None]:
    return dict(
        conn.execute(
            "SELECT e.event_id, s.replaces_state FROM event_state AS s"
            " JOIN events AS e ON e.stream_ordering = s.event_ordering"
        ).fetchall()
    )


def _group(conn: sqlite3.Connection, prev: int | None, delta: dict[Any, str | None]) -> int:
    return store_state_group(conn, ROOM, prev, delta)


def test_a_batch_records_the_entry_each_state_event_replaced(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _group(conn, None, {CREATE: "$create"})
    with_topic = _group(conn, base, {TOPIC: "$topic1"})
    events = [
        make_event("$create", type="m.room.create", state_key="", before=base),
        make_event("$topic1", type="m.room.topic", state_key="", before=base, prev=("$create",)),
        make_event("$msg", before=with_topic, prev=("$topic1",)),
        make_event("$topic2", type="m.room.topic", state_key="", before=with_topic, prev=("$msg",)),
        # Judged rejected, but the state before it is known all the same.
        make_event(
            "$topic3",
            type="m.room.topic",
            state_key="",
            before=with_topic,
            prev=("$msg",),
            rejected="auth",
        ),
        make_event("$soft", type="m.room.topic", state_key="", before=with_topic, soft_failed=True),
    ]
    persist_events(conn, events)
    assert _recorded(conn) == {
        # Its own entry in the state before it (a snapshot that holds it).
        "$create": None,
        "$topic1": None,
        "$msg": None,
        "$topic2": "$topic1",
        "$topic3": "$topic1",
        "$soft": "$topic1",
    }


def test_one_by_one_an_outlier_gets_its_entry_as_it_joins_the_dag(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _group(conn, None, {CREATE: "$create", TOPIC: "$topic1"})
    persist_events(conn, [make_event("$topic2", type="m.room.topic", state_key="", outlier=True)])
    # An outlier has no state, so nothing is recorded for it.
    assert _recorded(conn) == {}
    assert read_replaced_state(conn, ["$topic2"]) == {}
    # The same event again, now with a place in the DAG (the list repeats
    # an event, so it is written one by one).
    placed = make_event("$topic2", type="m.room.topic", state_key="", before=base)
    persist_events(conn, [placed, placed])
    assert _recorded(conn) == {"$topic2": "$topic1"}


def test_a_key_removed_before_the_event_was_replaced_by_nothing(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _group(conn, None, {CREATE: "$create", TOPIC: "$topic1"})
    removed = _group(conn, base, {TOPIC: None})
    persist_events(conn, [make_event("$topic2", type="m.room.topic", state_key="", before=removed)])
    assert _recorded(conn) == {"$topic2": None}


def test_the_entry_is_found_at_the_far_end_of_a_long_chain(conn: sqlite3.Connection) -> None:
    member = ("m.room.member", ALICE)
    group = _group(conn, None, {CREATE: "$create", member: "$join"})
    for number in range(MAX_CHAIN_LENGTH):
        group = _group(conn, group, {("m.room.member", f"@u{number}:example.org"): f"$u{number}"})
    assert replaced_entry(conn, ROOM, group, member, "$profile") == "$join"
    assert replaced_entry(conn, ROOM, group, TOPIC, "$topic") is None
    # A group that is not stored holds nothing.
    assert replaced_entry(conn, ROOM, group + 1000, member, "$profile") is None


def test_the_current_state_answers_for_its_own_group_alone(conn: sqlite3.Connection) -> None:
    base = _group(conn, None, {CREATE: "$create", TOPIC: "$topic1"})
    later = _group(conn, base, {TOPIC: "$topic2", ("m.room.name", ""): "$name"})
    set_current_state(conn, ROOM, later)
    # The group current state is a copy of: read from current state.
    assert replaced_entry(conn, ROOM, later, TOPIC, "$topic3") == "$topic2"
    assert replaced_entry(conn, ROOM, later, ("m.room.avatar", ""), "$avatar") is None
    # Any other group: walked, whatever current state says.
    assert replaced_entry(conn, ROOM, base, TOPIC, "$topic3") == "$topic1"
    assert replaced_entry(conn, ROOM, base, ("m.room.name", ""), "$name2") is None
    # Current state changed under the same group would be believed: it is
    # written only with its group, so the two agree.
    conn.execute("UPDATE current_state SET event_id = '$other' WHERE type = 'm.room.topic'")
    assert replaced_entry(conn, ROOM, later, TOPIC, "$topic3") == "$other"


def test_full_state_for_a_partial_event_moves_what_it_replaced(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    bob = ("m.room.member", BOB)
    partial = _group(conn, None, {CREATE: "$create"})
    full = _group(conn, None, {CREATE: "$create", bob: "$bob-join"})
    store_partial_join(conn, ROOM, "10", "$join", "hs.example", [])
    profile = make_event(
        "$bob-profile", type="m.room.member", state_key=BOB, before=partial, partial=True
    )
    message = make_event("$msg", before=partial, partial=True, prev=("$bob-profile",))
    persist_events(conn, [profile, message])
    # Bob's join was not in the partial state.
    assert _recorded(conn) == {"$bob-profile": None, "$msg": None}

    update_state_for_partial_event(conn, "$bob-profile", full, None, None)
    update_state_for_partial_event(conn, "$msg", full, None, None)
    assert _recorded(conn) == {"$bob-profile": "$bob-join", "$msg": None}

    # And back: a full state without the entry takes it away again.
    update_state_for_partial_event(conn, "$bob-profile", partial, None, None)
    assert _recorded(conn)["$bob-profile"] is None


def test_read_leaves_out_what_replaced_nothing_and_tells_an_unstored_event(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _group(conn, None, {CREATE: "$create", TOPIC: "$elsewhere"})
    persist_events(
        conn,
        [
            make_event("$create", type="m.room.create", state_key="", before=base),
            make_event("$topic", type="m.room.topic", state_key="", before=base),
            make_event("$msg", before=base),
        ],
    )
    found = read_replaced_state(conn, ["$create", "$topic", "$msg", "$unknown"])
    # The state named an event this server never stored.
    assert list(found) == ["$topic"]
    assert (found["$topic"].event_id, found["$topic"].event) == ("$elsewhere", None)


def test_a_purge_takes_the_record_with_the_room(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = _group(conn, None, {CREATE: "$create"})
    after = _group(conn, base, {TOPIC: "$topic1"})
    persist_events(
        conn,
        [
            make_event("$create", type="m.room.create", state_key="", before=base),
            make_event("$topic1", type="m.room.topic", state_key="", before=base),
            make_event("$topic2", type="m.room.topic", state_key="", before=after),
        ],
    )
    assert list(read_replaced_state(conn, ["$topic2"])) == ["$topic2"]
    purge_room(conn, room_id=ROOM)
    assert _recorded(conn) == {}
    assert read_replaced_state(conn, ["$topic2"]) == {}


@pytest.fixture
async def storage(tmp_path: Path, nursery: trio.Nursery) -> Storage:
    store = Storage(tmp_path / "replaced.db", synchronous="OFF")
    await nursery.start(store.run)
    return store


def _content(event: Any) -> Any:
    return msgspec.json.decode(event.json)["content"]


async def test_the_replaced_events_are_read_as_served(storage: Storage) -> None:
    room = RoomBuilder("10", ALICE)
    room.public_room(BOB)
    named = room.member(BOB, "join", content={"displayname": "Bob"})
    renamed = room.member(BOB, "join", content={"displayname": "Robert"})
    topic1 = room.topic(ALICE, "first")
    topic2 = room.topic(ALICE, "second")
    redaction = redaction_of(room, ALICE, topic1.event_id)
    message = room.message(BOB, "hello")
    await ingest_all(storage, room.order)

    ids = [renamed.event_id, topic2.event_id, message.event_id, redaction.event_id]
    found = await storage.sync.get_replaced_state(ids)
    assert found == await storage.get_replaced_state(ids)
    assert set(found) == {renamed.event_id, topic2.event_id}
    assert found[renamed.event_id].event_id == named.event_id
    assert _content(found[renamed.event_id].event) == {"membership": "join", "displayname": "Bob"}
    # The first topic was redacted: what it said is gone from prev_content.
    replaced = found[topic2.event_id].event
    assert found[topic2.event_id].event_id == topic1.event_id
    assert isinstance(replaced, RedactedEvent)
    assert _content(replaced) == {}
    assert replaced.redacted_because.event_id == redaction.event_id


async def test_redacted_content_pruned_is_served_as_before(storage: Storage) -> None:
    room = RoomBuilder("10", ALICE)
    room.public_room(BOB)
    topic1 = room.topic(ALICE, "first")
    topic2 = room.topic(ALICE, "second")
    redaction_of(room, ALICE, topic1.event_id)
    await ingest_all(storage, room.order)
    before = await storage.get_replaced_state([topic2.event_id])

    pruned = await storage.housekeeping.prune(
        Prune.REDACTED_CONTENT, cutoff_ms=time.time_ns() // 1_000_000 + 1, limit=10
    )
    assert pruned == 1
    stored = await storage.get_events([topic1.event_id])
    assert _content(stored[topic1.event_id]) == {}
    assert await storage.get_replaced_state([topic2.event_id]) == before
