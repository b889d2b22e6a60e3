"""storage.backfill: backfilled events go below everything, by depth, and
move neither the forward extremities nor current state."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from ranvier.storage import reads
from ranvier.storage.backfill import _persist_backfilled_events
from ranvier.storage.records import EventToPersist
from ranvier.storage.state_groups import store_state_group
from ranvier.storage.writes import persist_events

ROOM = "!room:example.org"
EventFactory = Callable[..., EventToPersist]


def _ordering(conn: sqlite3.Connection, event_id: str) -> int:
    return int(
        conn.execute(
            "SELECT stream_ordering FROM events WHERE event_id = ?", (event_id,)
        ).fetchone()[0]
    )


def _current_group(conn: sqlite3.Connection) -> int:
    return int(
        conn.execute(
            "SELECT state_group FROM current_state_groups WHERE room_id = ?", (ROOM,)
        ).fetchone()[0]
    )


def test_backfilled_events_go_below_by_depth_and_move_nothing(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    old = store_state_group(conn, ROOM, None, {("m.room.create", ""): "$create"})
    new = store_state_group(conn, ROOM, old, {("m.room.name", ""): "$name"})
    create = make_event("$create", outlier=True, type="m.room.create", state_key="")
    persist_events(conn, [create])
    held = persist_events(
        conn,
        [make_event("$join", before=new, prev=("$m2",), depth=4)],
    )
    assert held["$join"] > 0
    extremities = reads.get_forward_extremities(conn, ROOM)
    group = _current_group(conn)
    # Written newest first, one at a time, as batches of backfill come in.
    later = make_event("$m2", before=old, prev=("$m1",), depth=3)
    _persist_backfilled_events(conn, [later])
    earlier = make_event("$m1", before=old, prev=("$create",), depth=2)
    placed = make_event("$create", before=old, type="m.room.create", state_key="", depth=1)
    _persist_backfilled_events(conn, [placed])
    _persist_backfilled_events(conn, [earlier])
    orderings = [_ordering(conn, e) for e in ("$create", "$m1", "$m2", "$join")]
    assert orderings == sorted(orderings)
    assert orderings[2] < 0 < orderings[3]
    assert reads.get_forward_extremities(conn, ROOM) == extremities
    assert _current_group(conn) == group
    # The top of the stream did not move: the next event goes above it.
    after = persist_events(conn, [make_event("$next", before=new, prev=("$join",), depth=5)])
    assert after["$next"] == held["$join"] + 1


def test_an_outlier_taking_its_place_goes_below_and_the_top_is_kept(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    # A join's prev event, fetched as an outlier after the join (so at the
    # top of the stream), then reached by backfill: it goes before the join
    # the timeline shows after it, and the ordering it leaves is never
    # handed out again.
    base = store_state_group(conn, ROOM, None, {("m.room.create", ""): "$create"})
    join = persist_events(conn, [make_event("$join", before=base, prev=("$old",), depth=3)])
    top = persist_events(conn, [make_event("$old", outlier=True, depth=2)])["$old"]
    assert top > join["$join"]
    placed = _persist_backfilled_events(
        conn, [make_event("$old", before=base, prev=("$create",), depth=2)]
    )
    assert placed["$old"] == _ordering(conn, "$old") < 0 < join["$join"]
    after = persist_events(conn, [make_event("$next", before=base, prev=("$join",), depth=4)])
    assert after["$next"] == top + 1


def test_an_outlier_below_the_top_taking_its_place_goes_below_too(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    base = store_state_group(conn, ROOM, None, {("m.room.create", ""): "$create"})
    early = persist_events(conn, [make_event("$old", outlier=True, depth=2)])["$old"]
    join = persist_events(conn, [make_event("$join", before=base, prev=("$old",), depth=3)])
    assert early < join["$join"]
    placed = _persist_backfilled_events(
        conn,
        [
            make_event("$older", before=base, prev=("$create",), depth=1),
            make_event("$old", before=base, prev=("$older",), depth=2),
        ],
    )
    assert placed["$older"] < placed["$old"] < 0
    after = persist_events(conn, [make_event("$next", before=base, prev=("$join",), depth=4)])
    assert after["$next"] == join["$join"] + 1
