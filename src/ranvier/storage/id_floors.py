"""The highest value each of three counters has handed out, where the
counter is its table's largest value plus one.

An event's stream ordering, a state group's ID and the un-partial-state
stream's position are each the next above the largest in their table. A
room's purge (:mod:`ranvier.storage.room_purge`) deletes rows, and may
delete the largest: the next write would then hand out a value someone
already holds (a sync token at that stream position, a state group ID an
in-memory cache keyed on). Before deleting, the purge records each
counter's top in ``id_floors``; whoever hands out the next value, or reads
a stream's position, takes the larger of the table's top and that floor.

Invariant: **a counter never goes back**, whatever is deleted.
"""

from __future__ import annotations

import sqlite3
from typing import Final

__all__ = [
    "events_top",
    "keep_floors",
    "state_groups_top",
    "un_partial_top",
]

# counter -> the query of its table's top.
_TOPS: Final = {
    "events": "SELECT MAX(stream_ordering) FROM events",
    "state_groups": "SELECT MAX(id) FROM state_groups",
    "un_partial": "SELECT MAX(rowid) FROM un_partial_stated_rooms",
}


def _top(conn: sqlite3.Connection, counter: str) -> int:
    try:
        (top,) = conn.execute(
            f"SELECT MAX(COALESCE(({_TOPS[counter]}), 0),"
            " COALESCE((SELECT highest FROM id_floors WHERE counter = ?), 0))",
            (counter,),
        ).fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table: id_floors" not in str(exc):
            raise
        # A database at a schema version before id_floors (a migration's
        # own writes, or a test of one): nothing was purged there.
        (top,) = conn.execute(f"SELECT COALESCE(({_TOPS[counter]}), 0)").fetchone()
    return int(top)


def events_top(conn: sqlite3.Connection) -> int:
    """The highest stream ordering handed out (0 for none): the events
    stream's position."""
    return _top(conn, "events")


def state_groups_top(conn: sqlite3.Connection) -> int:
    """The highest state group ID handed out (0 for none)."""
    return _top(conn, "state_groups")


def un_partial_top(conn: sqlite3.Connection) -> int:
    """The un-partial-state stream's position (0 for none)."""
    return _top(conn, "un_partial")


def keep_floors(conn: sqlite3.Connection) -> None:
    """Record every counter's top, before rows that may hold it are deleted."""
    conn.executemany(
        "INSERT INTO id_floors (counter, highest) VALUES (?, ?)"
        " ON CONFLICT (counter) DO UPDATE SET highest = max(highest, excluded.highest)",
        [(counter, _top(conn, counter)) for counter in _TOPS],
    )
