"""Which rooms each destination has been sent, and how far: positions only
move forward, unknown rooms are refused, and the rooms and destinations
behind are found through the partial index."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from ranvier.errors import MatrixError
from ranvier.storage import EventToPersist, Storage, reads
from ranvier.storage.reads import UnsentDestinationRoom
from ranvier.storage.state_groups import store_state_group
from ranvier.storage.writes import (
    mark_destination_rooms_sent,
    persist_events,
    store_destination_rooms,
    store_room,
)

ROOM = "!room:example.org"  # the room the conftest's fixtures store
VERSION = "10"
OTHER = "!other:example.org"
DEST = "remote.example"
EventFactory = Callable[..., EventToPersist]


def _rows(conn: sqlite3.Connection) -> list[tuple[str, str, int, int | None]]:
    return conn.execute(
        "SELECT destination, room_id, stream_ordering, sent_stream_ordering"
        " FROM destination_rooms ORDER BY destination, room_id"
    ).fetchall()


def test_positions_only_move_forward(conn: sqlite3.Connection) -> None:
    store_room(conn, OTHER, VERSION)
    store_destination_rooms(conn, DEST, {ROOM: 5, OTHER: 7})
    store_destination_rooms(conn, DEST, {ROOM: 3})
    assert _rows(conn) == [(DEST, OTHER, 7, None), (DEST, ROOM, 5, None)]
    mark_destination_rooms_sent(conn, DEST, {ROOM: 4})
    mark_destination_rooms_sent(conn, DEST, {ROOM: 2})
    assert _rows(conn)[1] == (DEST, ROOM, 5, 4)
    # Sending past the newest noted event raises it too.
    mark_destination_rooms_sent(conn, DEST, {ROOM: 9})
    assert _rows(conn)[1] == (DEST, ROOM, 9, 9)
    store_destination_rooms(conn, DEST, {ROOM: 10})
    assert _rows(conn)[1] == (DEST, ROOM, 10, 9)


def test_marking_a_room_never_noted_adds_it_caught_up(conn: sqlite3.Connection) -> None:
    mark_destination_rooms_sent(conn, DEST, {ROOM: 6})
    assert _rows(conn) == [(DEST, ROOM, 6, 6)]
    assert reads.get_unsent_destination_rooms(conn, DEST, 10) == []


@pytest.mark.parametrize("write", [store_destination_rooms, mark_destination_rooms_sent])
def test_an_unknown_room_is_refused(
    conn: sqlite3.Connection, write: Callable[[sqlite3.Connection, str, dict[str, int]], None]
) -> None:
    with pytest.raises(MatrixError, match=r"room !nowhere:example\.org is not stored") as caught:
        write(conn, DEST, {"!nowhere:example.org": 2, ROOM: 1})
    assert caught.value.errcode == "M_NOT_FOUND"


def test_unsent_rooms_come_with_their_event_longest_waiting_first(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    store_room(conn, OTHER, VERSION)
    base = store_state_group(conn, ROOM, None, {("m.room.create", ""): "$create"})
    other_base = store_state_group(conn, OTHER, None, {("m.room.create", ""): "$c2"})
    orderings = persist_events(
        conn,
        [
            make_event("$a", before=base),
            make_event("$b", room_id=OTHER, before=other_base),
            make_event("$c", before=base, prev=("$a",)),
        ],
    )
    store_destination_rooms(conn, DEST, {OTHER: orderings["$b"], ROOM: orderings["$c"]})
    store_destination_rooms(conn, "third.example", {ROOM: orderings["$a"]})
    mark_destination_rooms_sent(conn, "third.example", {ROOM: orderings["$a"]})
    assert reads.get_unsent_destination_rooms(conn, DEST, 10) == [
        UnsentDestinationRoom(
            room_id=OTHER,
            stream_ordering=orderings["$b"],
            event_id="$b",
            sent_stream_ordering=None,
        ),
        UnsentDestinationRoom(
            room_id=ROOM,
            stream_ordering=orderings["$c"],
            event_id="$c",
            sent_stream_ordering=None,
        ),
    ]
    assert [room.room_id for room in reads.get_unsent_destination_rooms(conn, DEST, 1)] == [OTHER]
    mark_destination_rooms_sent(conn, DEST, {ROOM: orderings["$a"]})
    (behind,) = [r for r in reads.get_unsent_destination_rooms(conn, DEST, 10) if r.room_id == ROOM]
    assert behind.sent_stream_ordering == orderings["$a"]
    # A position whose event is not (or no longer) stored has no event ID.
    store_destination_rooms(conn, DEST, {ROOM: orderings["$c"] + 100})
    (gone,) = [r for r in reads.get_unsent_destination_rooms(conn, DEST, 10) if r.room_id == ROOM]
    assert gone.event_id is None
    assert reads.get_unsent_destination_rooms(conn, "third.example", 10) == []


def test_destinations_behind_are_paged_in_name_order(conn: sqlite3.Connection) -> None:
    names = [f"hs{n:02}.example" for n in range(7)]
    for name in names:
        store_destination_rooms(conn, name, {ROOM: 3})
    mark_destination_rooms_sent(conn, names[2], {ROOM: 3})
    behind = [name for name in names if name != names[2]]
    pages: list[list[str]] = []
    after = None
    while page := reads.get_destinations_with_unsent_rooms(conn, after, 4):
        pages.append(page)
        after = page[-1]
    assert pages == [behind[:4], behind[4:]]


def test_queries_for_rooms_behind_use_the_partial_index(conn: sqlite3.Connection) -> None:
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        reads.get_unsent_destination_rooms(conn, DEST, 10)
        reads.get_destinations_with_unsent_rooms(conn, None, 10)
    finally:
        conn.set_trace_callback(None)
    selects = [sql for sql in statements if "destination_rooms" in sql]
    assert len(selects) == 2
    for sql in selects:
        plan = " ".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
        assert "destination_rooms_unsent" in plan, plan


async def test_through_the_storage_facade(db_path: Path, storage: Storage) -> None:
    await storage.store_destination_rooms(DEST, {ROOM: 4})
    assert await storage.get_destinations_with_unsent_rooms() == [DEST]
    (room,) = await storage.get_unsent_destination_rooms(DEST)
    assert (room.room_id, room.stream_ordering, room.sent_stream_ordering) == (ROOM, 4, None)
    await storage.mark_destination_rooms_sent(DEST, {ROOM: 4})
    assert await storage.get_unsent_destination_rooms(DEST) == []
    assert await storage.get_destinations_with_unsent_rooms() == []
    # A refused write leaves nothing behind, not even its known rooms' rows.
    for write in (storage.store_destination_rooms, storage.mark_destination_rooms_sent):
        with pytest.raises(MatrixError, match="not stored"):
            await write("other.example", {ROOM: 1, "!nowhere:example.org": 2})
    assert await storage.get_destinations_with_unsent_rooms() == []
    assert await storage.get_unsent_destination_rooms("other.example") == []
    await storage.store_destination_rooms("other.example", {ROOM: 1})
    assert await storage.get_destinations_with_unsent_rooms() == ["other.example"]
