"""storage.timestamps: the nearest timeline event to a time, through one
index seek however long the room, and whether an event sits next to a gap."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from ranvier.storage import Storage
from ranvier.storage.backfill import _persist_backfilled_events
from ranvier.storage.connections import open_writer
from ranvier.storage.records import EventToPersist, StoredEvent
from ranvier.storage.schema import MIGRATIONS, migrate
from ranvier.storage.state_groups import store_state_group
from ranvier.storage.timestamps import nearest_events
from ranvier.storage.writes import persist_events

ROOM = "!room:example.org"
BASE = 1_700_000_000_000  # the factory's origin_server_ts is BASE + depth
EventFactory = Callable[..., EventToPersist]


def _ids(events: list[StoredEvent]) -> list[str]:
    return [event.event_id for event in events]


def _room(conn: sqlite3.Connection, make_event: EventFactory) -> None:
    """$a at 1, $b and $c at 2 (written in that order), $d at 4; around
    them an outlier, a rejected and a soft-failed event at 3, none of the
    timeline."""
    group = store_state_group(conn, ROOM, None, {})
    persist_events(
        conn,
        [
            make_event("$a", before=group, depth=1),
            make_event("$b", before=group, prev=("$a",), depth=2),
            make_event("$c", before=group, prev=("$a",), depth=2),
            make_event("$outlier", outlier=True, depth=3),
            make_event("$rejected", before=group, prev=("$c",), depth=3, rejected="auth"),
            make_event("$soft", before=group, prev=("$c",), depth=3, soft_failed=True),
            make_event("$d", before=group, prev=("$b", "$c"), depth=4),
        ],
    )


def test_nearest_either_way_with_ties_in_written_order(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    _room(conn, make_event)

    def near(ts: int, backwards: bool, limit: int = 1) -> list[str]:
        found = nearest_events(conn, ROOM, BASE + ts, backwards=backwards, upto=2**62, limit=limit)
        return _ids(found)

    assert near(2, backwards=True) == ["$c"]
    assert near(2, backwards=False) == ["$b"]
    assert near(2, backwards=True, limit=3) == ["$c", "$b", "$a"]
    assert near(2, backwards=False, limit=3) == ["$b", "$c", "$d"]
    # What lies at 3 is not of the timeline.
    assert near(3, backwards=True) == ["$c"]
    assert near(3, backwards=False) == ["$d"]
    assert near(0, backwards=True) == []
    assert near(0, backwards=False) == ["$a"]
    assert near(5, backwards=True) == ["$d"]
    assert near(5, backwards=False) == []
    assert (
        nearest_events(conn, "!other:example.org", BASE, backwards=False, upto=2**62, limit=1) == []
    )


def test_nothing_above_the_stream_position_asked(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    _room(conn, make_event)
    (b_ordering,) = conn.execute(
        "SELECT stream_ordering FROM events WHERE event_id = '$b'"
    ).fetchone()
    found = nearest_events(conn, ROOM, BASE + 5, backwards=True, upto=b_ordering, limit=5)
    assert _ids(found) == ["$b", "$a"]


def test_the_nearest_event_of_a_long_room_is_one_index_seek(
    conn: sqlite3.Connection, make_event: EventFactory
) -> None:
    group = store_state_group(conn, ROOM, None, {})
    events = [make_event(f"$e{n}", before=group, depth=n + 1) for n in range(10_000)]
    persist_events(conn, events)
    for backwards in (True, False):
        comparison = "<" if backwards else ">"
        order = "DESC" if backwards else "ASC"
        sql = (
            "SELECT * FROM events INDEXED BY events_room_timestamp WHERE room_id = ?1"
            f" AND origin_server_ts {comparison}= ?2"
            " AND outlier = 0 AND soft_failed = 0 AND rejected_reason IS NULL"
            f" AND stream_ordering <= ?3 ORDER BY origin_server_ts {order},"
            f" stream_ordering {order} LIMIT 1"
        )
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, (ROOM, 0, 0))]
        assert len(plan) == 1, plan
        assert plan[0].startswith("SEARCH events USING INDEX events_room_timestamp"), plan
        assert f"origin_server_ts{comparison}?" in plan[0], plan
        # The read itself agrees with the plan's answer.
        found = nearest_events(conn, ROOM, BASE + 5_000, backwards=backwards, upto=2**62, limit=1)
        assert _ids(found) == ["$e4999"]


async def test_next_to_gap_before_or_after(storage: Storage, make_event: EventFactory) -> None:
    """$first cites an event not held, $third one held only as an outlier;
    $lone follows $second, but nothing follows it and it is no tip; $tip
    follows $third and is the room's forward extremity."""

    def write(conn: sqlite3.Connection) -> None:
        group = store_state_group(conn, ROOM, None, {})
        persist_events(
            conn,
            [
                make_event("$held-outlier", outlier=True, depth=1),
                make_event("$first", before=group, prev=("$missing",), depth=2),
                make_event("$second", before=group, prev=("$first",), depth=3),
                make_event("$third", before=group, prev=("$second", "$held-outlier"), depth=4),
                make_event("$tip", before=group, prev=("$third",), depth=5),
            ],
        )
        _persist_backfilled_events(
            conn, [make_event("$lone", before=group, prev=("$second",), depth=4)]
        )

    await storage.writer.submit(write)
    assert await storage.get_forward_extremities(ROOM) == {"$tip"}
    names = ["$first", "$second", "$third", "$tip", "$lone"]
    events = await storage.get_events(names)
    gaps = {name: await storage.timestamps.next_to_gap(events[name]) for name in names}
    assert gaps == {"$first": True, "$second": False, "$third": True, "$tip": False, "$lone": True}


def test_the_index_comes_with_its_migration(tmp_path: Path) -> None:
    version = [migration.__name__ for migration in MIGRATIONS].index("_events_by_timestamp") + 1
    conn = open_writer(tmp_path / "old.db")
    try:
        migrate(conn, target=version - 1)

        def indexes() -> set[str]:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
            return {str(row[0]) for row in rows}

        before = indexes()
        assert migrate(conn, target=version) == version
        assert "events_room_timestamp" not in before
        assert "events_room_timestamp" in indexes()
    finally:
        conn.close()
