"""The rows of a room in every table of a database, for tests of its purge.

The tables are read from ``sqlite_master``, never listed, so that a table
added later is looked at too: a test of the purge then fails until the
purge deletes from it or the test says why the room keeps rows there.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterable, Mapping
from typing import Any

__all__ = ["RoomRows", "Row", "read_tables", "search_index_internals"]

#: One row of a table, as sqlite3 reads it.
Row = tuple[Any, ...]


def read_tables(conn: sqlite3.Connection) -> dict[str, list[Row]]:
    """Every row of every table but SQLite's own, by table."""
    tables = [
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " ORDER BY name"
        )
    ]
    return {table: conn.execute(f'SELECT * FROM "{table}"').fetchall() for table in tables}


def search_index_internals(tables: Iterable[str]) -> set[str]:
    """The full-text index's own structures among ``tables``: their bytes
    move with any change, and hold no rows of their own (its ``_content``
    table, which holds the rows, is not one); with them ``search_scrub``,
    whose counters a delete from the index may move."""
    return {
        table
        for table in tables
        if (table.startswith("event_search_") and not table.endswith("_content"))
        or table == "search_scrub"
    }


class RoomRows:
    """How a room's rows are told apart, read while the room is stored: its
    ID and its events' IDs in any text or bytes, and its events' stream
    orderings and its state groups' IDs in the integer columns that hold
    them (``event_state``, ``state_group_rows``), where no ID would show.

    ``event_ids`` adds events of the room not stored yet when it is read.
    """

    def __init__(
        self, conn: sqlite3.Connection, room_id: str, event_ids: Iterable[str] = ()
    ) -> None:
        events = conn.execute(
            "SELECT event_id, stream_ordering FROM events WHERE room_id = ?", (room_id,)
        ).fetchall()
        groups = conn.execute("SELECT id FROM state_groups WHERE room_id = ?", (room_id,))
        self.room_id = room_id
        self.orderings = {ordering for _, ordering in events}
        self.groups = {group for (group,) in groups}
        self._needles = frozenset([room_id, *(event_id for event_id, _ in events), *event_ids])

    def holds(self, table: str, row: Row, *, also: Collection[str] = ()) -> bool:
        """Whether ``row`` of ``table`` is the room's; ``also``: more of its event IDs."""
        if table == "event_state" and row[0] in self.orderings:
            return True
        if table == "state_group_rows" and row[0] in self.groups:
            return True
        needles = self._needles.union(also)
        for value in row:
            if isinstance(value, str) and any(needle in value for needle in needles):
                return True
            if isinstance(value, bytes) and any(needle.encode() in value for needle in needles):
                return True
        return False

    def left(
        self,
        tables: Mapping[str, list[Row]],
        *,
        skip: Collection[str] = (),
        also: Collection[str] = (),
    ) -> dict[str, list[Row]]:
        """The room's rows in ``tables`` (:func:`read_tables`), by table,
        but in the tables of ``skip``."""
        found: dict[str, list[Row]] = {}
        for table, rows in tables.items():
            if table in skip:
                continue
            mine = [row for row in rows if self.holds(table, row, also=also)]
            if mine:
                found[table] = mine
        return found
