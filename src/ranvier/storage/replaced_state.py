"""Which state entry each state event replaced, for the ``unsigned``
``replaces_state`` and ``prev_content`` of events served to clients.

Clients render a state event against the one it replaced ("changed their
display name from A to B", an invite accepted rather than a fresh join),
so every timeline carries the replaced event's ID and content. Working
that out from the state before each event costs a walk of a state-group
chain per event; the state before is known when the event is written, so
the answer is recorded then and a timeline reads it by key.

Invariants:

* ``event_state.replaces_state`` of a state event in the room's DAG is the
  ID of the event that held its ``(type, state_key)`` in the state before
  it (``state_group_before``); NULL when that state had no entry there
  (the event starts the key), for an event that is not a state event, and
  where the entry is the event itself. Rejected and soft-failed events
  have one too: the state before them is as known as any other's.
* It is written in the statement that writes the ``event_state`` row, by
  every path that writes events (:func:`ranvier.storage.writes.persist_events`),
  and rewritten whenever the state before changes: an event written with
  partial state and given its full state later
  (:func:`ranvier.storage.writes.update_state_for_partial_event`) follows
  the new state. Events stored before the column were filled by the
  migration that made it (:func:`fill_replaced_state`).
* Outliers have no ``event_state`` row, so nothing is recorded for them
  (an invite from another server, an event fetched as an auth event); an
  outlier that later takes its place in the DAG gets its row, and its
  entry, then. A purge deletes the rows with the room's other rows.
* The replaced event is read as served
  (:func:`ranvier.storage.redactions.served_events`): redacted where a
  redaction applies, so ``prev_content`` never shows what a redaction
  took away, whether or not housekeeping has rewritten the stored JSON
  yet (:mod:`ranvier.storage.redacted_content`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterator, Sequence
from typing import Final

from .records import ReplacedState, StateKey
from .redactions import served_events

__all__ = [
    "fill_replaced_state",
    "read_replaced_state",
    "replaced_entry",
]

#: The entry of one key in a group's state, walked from the group towards
#: its snapshot and stopping at the first group that mentions the key: a
#: NULL ``event_id`` there is the key removed. One statement, so a key no
#: group of the chain holds (a member's first join) costs the walk in
#: SQLite, not a statement per group.
_ENTRY_SQL: Final = """
WITH RECURSIVE walk(id, prev_group, hit, event_id) AS (
    SELECT g.id, g.prev_group, r.state_group IS NOT NULL, r.event_id
    FROM state_groups AS g
    LEFT JOIN state_group_rows AS r
        ON r.state_group = g.id AND r.type = ?2 AND r.state_key = ?3
    WHERE g.id = ?1
    UNION ALL
    SELECT g.id, g.prev_group, r.state_group IS NOT NULL, r.event_id
    FROM walk
    JOIN state_groups AS g ON g.id = walk.prev_group
    LEFT JOIN state_group_rows AS r
        ON r.state_group = g.id AND r.type = ?2 AND r.state_key = ?3
    WHERE NOT walk.hit
)
SELECT event_id FROM walk WHERE hit
"""
#: The entry of a key in the room's current state, when the group given is
#: the one current state is a copy of: a live event's state before it
#: mostly is, and two look-ups by key spare the walk.
_CURRENT_SQL: Final = """
SELECT g.state_group = ?2, (
    SELECT c.event_id FROM current_state AS c
    WHERE c.room_id = ?1 AND c.type = ?3 AND c.state_key = ?4
)
FROM current_state_groups AS g WHERE g.room_id = ?1
"""
# Stays well under SQLite's limit on bound parameters.
_CHUNK: Final = 500
#: State events the migration reads at a time.
_FILL_PAGE: Final = 10_000


def replaced_entry(
    conn: sqlite3.Connection, room_id: str, state_group_before: int, key: StateKey, event_id: str
) -> str | None:
    """What ``event_id``, a state event of ``key`` in ``room_id``, replaces:
    the entry of ``key`` in the state before it, or None (see the module's
    doc)."""
    current = conn.execute(_CURRENT_SQL, (room_id, state_group_before, *key)).fetchone()
    if current is not None and current[0]:
        replaced = current[1]
    else:
        row = conn.execute(_ENTRY_SQL, (state_group_before, *key)).fetchone()
        replaced = None if row is None else row[0]
    return None if replaced == event_id else replaced


def fill_replaced_state(conn: sqlite3.Connection) -> int:
    """Record what every state event stored in the DAG replaced; the number
    of events found to replace one. For the migration that adds the column,
    a page of events at a time so that a big database is not held in memory.
    """
    found = 0
    after = -(2**63)
    while True:
        rows = conn.execute(
            "SELECT s.event_ordering, e.room_id, s.state_group_before, e.type, e.state_key,"
            " e.event_id FROM event_state AS s"
            " JOIN events AS e ON e.stream_ordering = s.event_ordering"
            " WHERE s.event_ordering > ?1 AND e.state_key IS NOT NULL"
            " ORDER BY s.event_ordering LIMIT ?2",
            (after, _FILL_PAGE),
        ).fetchall()
        if not rows:
            return found
        updates = []
        for ordering, room_id, before, typ, state_key, event_id in rows:
            replaced = replaced_entry(conn, room_id, before, (typ, state_key), event_id)
            if replaced is not None:
                updates.append((replaced, ordering))
        conn.executemany(
            "UPDATE event_state SET replaces_state = ? WHERE event_ordering = ?", updates
        )
        found += len(updates)
        after = rows[-1][0]


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def read_replaced_state(
    conn: sqlite3.Connection, event_ids: Collection[str]
) -> dict[str, ReplacedState]:
    """Per event of ``event_ids`` that replaced a state entry, what it
    replaced: one indexed look-up per 500 events, and one read of the
    replaced events. Events that replaced nothing, outliers and events not
    stored are left out.
    """
    replaced: dict[str, str] = {}
    for chunk in _chunks(sorted(set(event_ids))):
        marks = ",".join("?" * len(chunk))
        replaced.update(
            conn.execute(
                "SELECT e.event_id, s.replaces_state FROM events AS e"
                " JOIN event_state AS s ON s.event_ordering = e.stream_ordering"
                f" WHERE e.event_id IN ({marks}) AND s.replaces_state IS NOT NULL",
                chunk,
            ).fetchall()
        )
    if not replaced:
        return {}
    events = served_events(conn, set(replaced.values()))
    return {
        event_id: ReplacedState(replaced_id, events.get(replaced_id))
        for event_id, replaced_id in replaced.items()
    }
