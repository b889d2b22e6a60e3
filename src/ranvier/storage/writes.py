"""The write operations, run by the storage actor on its writer thread.

Each takes the write connection and runs inside the actor's transaction: it
never begins, commits or rolls back. If it raises, the actor undoes exactly
its writes and the exception reaches its caller. Each is pure (it touches
only the database and does the same on the same data): the actor may run it
twice, see :mod:`ranvier.storage.actor`.

Current state and forward extremities change in the same transaction as the
events that move them. The rule for current state, for each room an
operation touches:

1. If the caller names the room's current state group (it resolved the
   state of several extremities itself), current state becomes that group.
2. Otherwise, if the room has exactly one forward extremity afterwards,
   current state becomes the state after that event.
3. Otherwise current state becomes the state after the last accepted event
   written. The caller is expected to name the resolved state whenever the
   room has several extremities; this fallback keeps current state a state
   the room really had.

Only accepted events (not outliers, not rejected, not soft-failed) move
extremities and current state, and a write with none leaves both alone.

The rule depends only on the events written and where the extremities end
up, not on how the writes were split into requests: that is what lets the
actor run neighbouring persist requests as one (:class:`PersistEvents`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from ranvier.errors import (
    MatrixError,
    PartialStateConflictError,
    PartialStateEventsRemainError,
    RoomGoneError,
    StaleRunError,
)

from .forgotten_rooms import clear_forgotten
from .id_floors import events_top, un_partial_top
from .local_memberships import record_out_of_band
from .records import (
    DestinationRetry,
    EventToPersist,
    ReceivedTransaction,
    ServerKey,
    StateKey,
)
from .redactions import record_redactions, redaction_targets
from .relations import record_relations
from .replaced_state import replaced_entry
from .search import record_search
from .state_groups import (
    GROUP_STATE_SQL,
    check_group_in_room,
    keys_changed_between,
    read_state_for_keys,
    store_state_group,
)
from .write_backend import registered_write
from .write_marks import WriteMark, WriteMarks, writes_no_room

__all__ = [
    "PersistEvents",
    "PersistRun",
    "RunWritten",
    "clear_partial_state",
    "mark_destination_rooms_sent",
    "persist_events",
    "record_transaction",
    "set_current_state",
    "store_destination_retry",
    "store_destination_rooms",
    "store_partial_join",
    "store_resync_progress",
    "store_room",
    "store_server_keys",
    "store_state_group",
    "update_state_for_partial_event",
]

_EVENT_COLUMNS = (
    "event_id, room_id, type, state_key, sender, depth, origin_server_ts, json,"
    " outlier, soft_failed, rejected_reason"
)
_INSERT_EVENT_SQL = (
    f"INSERT INTO events (stream_ordering, {_EVENT_COLUMNS}) VALUES (?, {', '.join('?' * 11)})"
)
_INSERT_EVENT_IF_NEW_SQL = (
    f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES ({', '.join('?' * 11)})"
    " ON CONFLICT (event_id) DO NOTHING"
)
# An event's edges and state groups are keyed by its stream ordering, so that
# a batch's rows append to the end of their tables (see schema migration 11).
_INSERT_STATE_GROUPS_SQL = (
    "INSERT INTO event_state"
    " (event_ordering, state_group_before, state_group_after, replaces_state)"
    " VALUES (?, ?, ?, ?)"
)
# The prev event's ordering is given when the write knows it (?4: the prev
# event is one of its own), else looked up where it is stored already (see
# schema migration 64); storing it later fills the edges that name it in.
_INSERT_EDGE_SQL = (
    "INSERT OR IGNORE INTO event_prev_edges (event_ordering, prev_event_id, room_id, prev_ordering)"
    " VALUES (?1, ?2, ?3, COALESCE(?4, (SELECT stream_ordering FROM events WHERE event_id = ?2)))"
)
# Edges waiting for prev events just stored, each given its own's ordering;
# through the partial index by ID: by the other, SQLite would go through
# every edge whose prev event is not stored.
_FILL_EDGES_SQL = (
    "UPDATE event_prev_edges INDEXED BY event_prev_edges_unstored_prev"
    " SET prev_ordering = (SELECT e.stream_ordering FROM events AS e"
    " WHERE e.event_id = event_prev_edges.prev_event_id)"
    " WHERE prev_ordering IS NULL AND prev_event_id IN ({marks})"
)
_INSERT_AUTH_EDGE_SQL = (
    "INSERT OR IGNORE INTO event_auth_edges (event_ordering, auth_event_id, room_id)"
    " VALUES (?, ?, ?)"
)
# An event that already has accepted children (it arrived late, say by
# backfill) is not an extremity. ?3 is its stream ordering, which the
# write that stores it knows.
_ADD_EXTREMITY_SQL = """
INSERT OR IGNORE INTO forward_extremities (room_id, event_id)
SELECT ?1, ?2 WHERE NOT EXISTS (
    SELECT 1 FROM event_prev_edges AS edge
    JOIN events AS child ON child.stream_ordering = edge.event_ordering
    WHERE edge.prev_ordering = ?3
      AND child.outlier = 0 AND child.soft_failed = 0 AND child.rejected_reason IS NULL
)
"""
# Stays well under SQLite's limit on bound parameters.
_CHUNK = 500
#: Keys changed between two states from which current state is moved by
#: comparing the whole states in SQL rather than key by key.
_KEYS_COMPARED_ONE_BY_ONE = 1_000
_CREATE_MOVING_STATE_SQL = """
CREATE TEMP TABLE IF NOT EXISTS moving_state (
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (type, state_key)
) WITHOUT ROWID
"""
# When an event's verdict changes, only its own extremity status and that
# of its prev events can change: whether an event is an extremity depends on
# its own verdict and on which accepted events cite it. Both statements
# reach those few events through the edges' keys, never by scanning the
# room (the CROSS JOIN keeps SQLite from starting at the room's events).
_JUDGED_EVENTS_CTE = """
WITH judged (event_id) AS (
    SELECT ?2 UNION SELECT edge.prev_event_id FROM events AS event
    JOIN event_prev_edges AS edge ON edge.event_ordering = event.stream_ordering
    WHERE event.event_id = ?2
)
"""
_FORGET_JUDGED_EXTREMITIES_SQL = f"""{_JUDGED_EVENTS_CTE}
DELETE FROM forward_extremities WHERE room_id = ?1 AND event_id IN judged
"""
_RESTORE_JUDGED_EXTREMITIES_SQL = f"""{_JUDGED_EVENTS_CTE}
INSERT OR IGNORE INTO forward_extremities (room_id, event_id)
SELECT candidate.room_id, candidate.event_id
FROM judged CROSS JOIN events AS candidate USING (event_id)
WHERE candidate.room_id = ?1
  AND candidate.outlier = 0 AND candidate.soft_failed = 0
  AND candidate.rejected_reason IS NULL
  AND NOT EXISTS (
    SELECT 1 FROM event_prev_edges AS edge
    JOIN events AS child ON child.stream_ordering = edge.event_ordering
    WHERE edge.prev_ordering = candidate.stream_ordering
      AND child.outlier = 0 AND child.soft_failed = 0 AND child.rejected_reason IS NULL
  )
"""

_STORE_RESYNC_PROGRESS_SQL = """
INSERT INTO resync_progress (
    room_id, phase, server, events_resynced, events_total, attempts, last_error, updated_ts
)
SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8
WHERE EXISTS (SELECT 1 FROM partial_state_rooms WHERE room_id = ?1)
ON CONFLICT (room_id) DO UPDATE SET
    phase = excluded.phase,
    server = excluded.server,
    events_resynced = excluded.events_resynced,
    events_total = excluded.events_total,
    attempts = excluded.attempts,
    last_error = excluded.last_error,
    updated_ts = excluded.updated_ts
"""


def _is_foreign_key_failure(exc: sqlite3.IntegrityError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY


def _not_found(what: str) -> MatrixError:
    return MatrixError(f"{what} is not stored here", errcode="M_NOT_FOUND", http_status=404)


def _ensure_room(
    conn: sqlite3.Connection, room_id: str, room_version: str, *, may_create: bool = True
) -> None:
    """Check the room is stored with ``room_version``; store it if it is
    not and ``may_create``, else raise :class:`RoomGoneError`: the write
    belongs to work begun while the room was stored, and it was purged."""
    row = conn.execute("SELECT room_version FROM rooms WHERE room_id = ?", (room_id,)).fetchone()
    if row is None:
        if not may_create:
            raise RoomGoneError(room_id)
        conn.execute(
            "INSERT INTO rooms (room_id, room_version) VALUES (?, ?)", (room_id, room_version)
        )
        return
    (stored,) = row
    if stored != room_version:
        raise MatrixError(
            f"{room_id} is a room of version {stored}, not {room_version}",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )


@registered_write
def store_room(conn: sqlite3.Connection, room_id: str, room_version: str) -> None:
    """Make a room known, so that state groups can be stored for it before
    any of its events. Storing it again with the same version does nothing.
    """
    _ensure_room(conn, room_id, room_version)


def _event_row(event: EventToPersist) -> tuple[object, ...]:
    return (
        event.event_id,
        event.room_id,
        event.type,
        event.state_key,
        event.sender,
        event.depth,
        event.origin_server_ts,
        event.json,
        event.outlier,
        event.soft_failed,
        event.rejected_reason,
    )


def _write_event_row(conn: sqlite3.Connection, event: EventToPersist) -> tuple[int, bool]:
    """Write one event's row and edges: ``(stream ordering, whether to go on)``.

    An event already stored is left alone, except an outlier that now comes
    with a place in the DAG: it joins the DAG at the end of the stream.
    """
    cursor = conn.execute(_INSERT_EVENT_IF_NEW_SQL, _event_row(event))
    if cursor.rowcount:
        ordering = cursor.lastrowid
        assert ordering is not None
        conn.executemany(
            _INSERT_EDGE_SQL,
            [(ordering, prev, event.room_id, None) for prev in event.prev_event_ids],
        )
        _fill_edges(conn, [event.event_id])
        conn.executemany(
            _INSERT_AUTH_EDGE_SQL,
            [(ordering, auth, event.room_id) for auth in event.auth_event_ids],
        )
        return ordering, True
    stored_ordering, stored_outlier = conn.execute(
        "SELECT stream_ordering, outlier FROM events WHERE event_id = ?", (event.event_id,)
    ).fetchone()
    if event.outlier or not stored_outlier:
        return stored_ordering, False
    (ordering,) = conn.execute(
        """
        UPDATE events
        SET stream_ordering = ?, outlier = 0, soft_failed = ?, rejected_reason = ?
        WHERE event_id = ?
        RETURNING stream_ordering
        """,
        (events_top(conn) + 1, event.soft_failed, event.rejected_reason, event.event_id),
    ).fetchone()
    return ordering, True


def _derived_after(
    conn: sqlite3.Connection,
    *,
    room_id: str,
    event_id: str,
    state_key: StateKey | None,
    rejected: bool,
    before: int,
) -> int:
    """The state after an event, from the state before: the event added for
    an accepted state event, the same state otherwise.
    """
    if state_key is None or rejected:
        return before
    return store_state_group(conn, room_id, before, {state_key: event_id})


def _group_after(
    conn: sqlite3.Connection, event: EventToPersist, before: int, after: int | None
) -> int:
    """The state group after an event whose groups have been checked."""
    if after is not None:
        return after
    return _derived_after(
        conn,
        room_id=event.room_id,
        event_id=event.event_id,
        state_key=None if event.state_key is None else (event.type, event.state_key),
        rejected=event.rejected_reason is not None,
        before=before,
    )


def _replaced(conn: sqlite3.Connection, event: EventToPersist, before: int) -> str | None:
    """The state entry ``event`` replaces (:mod:`ranvier.storage.replaced_state`)."""
    if event.state_key is None:
        return None
    return replaced_entry(
        conn, event.room_id, before, (event.type, event.state_key), event.event_id
    )


def _sole_extremity_group(conn: sqlite3.Connection, room_id: str) -> int | None:
    extremities = conn.execute(
        "SELECT event_id FROM forward_extremities WHERE room_id = ? LIMIT 2", (room_id,)
    ).fetchall()
    if len(extremities) != 1:
        return None
    row = conn.execute(
        "SELECT g.state_group_after FROM events AS e"
        " JOIN event_state AS g ON g.event_ordering = e.stream_ordering WHERE e.event_id = ?",
        extremities[0],
    ).fetchone()
    return None if row is None else int(row[0])


def _move_current_state(conn: sqlite3.Connection, room_id: str, to_group: int) -> None:
    """Make the room's current state the state of ``to_group``, writing only
    the keys that differ.
    """
    row = conn.execute(
        "SELECT state_group FROM current_state_groups WHERE room_id = ?", (room_id,)
    ).fetchone()
    from_group = None if row is None else row[0]
    if from_group == to_group:
        return
    keys = (
        None
        if from_group is None
        else keys_changed_between(conn, from_group, to_group, most=_KEYS_COMPARED_ONE_BY_ONE)
    )
    if keys is None:
        _replace_current_state(conn, room_id, to_group)
    else:
        _move_current_state_keys(conn, room_id, to_group, keys)
    conn.execute(
        """
        INSERT INTO current_state_groups (room_id, state_group) VALUES (?, ?)
        ON CONFLICT (room_id) DO UPDATE SET state_group = excluded.state_group
        """,
        (room_id, to_group),
    )


def _move_current_state_keys(
    conn: sqlite3.Connection, room_id: str, to_group: int, keys: set[StateKey]
) -> None:
    """Bring the entries of ``keys`` in current state to those of ``to_group``."""
    new = read_state_for_keys(conn, to_group, keys)
    changes: dict[StateKey, str | None] = {}
    for key in keys:
        old_row = conn.execute(
            "SELECT event_id FROM current_state WHERE room_id = ? AND type = ? AND state_key = ?",
            (room_id, *key),
        ).fetchone()
        if (None if old_row is None else old_row[0]) != new.get(key):
            changes[key] = new.get(key)
    conn.executemany(
        """
        INSERT INTO current_state (room_id, type, state_key, event_id) VALUES (?, ?, ?, ?)
        ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_id = excluded.event_id
        """,
        [
            (room_id, typ, sk, event_id)
            for (typ, sk), event_id in changes.items()
            if event_id is not None
        ],
    )
    conn.executemany(
        "DELETE FROM current_state WHERE room_id = ? AND type = ? AND state_key = ?",
        [(room_id, typ, sk) for (typ, sk), event_id in changes.items() if event_id is None],
    )


def _replace_current_state(conn: sqlite3.Connection, room_id: str, to_group: int) -> None:
    """Make current state the whole state of ``to_group``, compared row by
    row in SQL: the first move after a big room's resync compares some
    50,000 keys, which as Python maps cost tens of MiB and one query each.
    Rows that already match are left alone.
    """
    conn.execute(_CREATE_MOVING_STATE_SQL)
    try:
        conn.execute(f"INSERT INTO temp.moving_state {GROUP_STATE_SQL}", (to_group,))
        conn.execute(
            """
            DELETE FROM current_state
            WHERE room_id = ? AND NOT EXISTS (
                SELECT 1 FROM temp.moving_state AS m
                WHERE m.type = current_state.type AND m.state_key = current_state.state_key
            )
            """,
            (room_id,),
        )
        # WHERE true: SQLite would read ON CONFLICT after a bare FROM as a join's.
        conn.execute(
            """
            INSERT INTO current_state (room_id, type, state_key, event_id)
            SELECT ?, type, state_key, event_id FROM temp.moving_state WHERE true
            ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_id = excluded.event_id
            WHERE current_state.event_id IS NOT excluded.event_id
            """,
            (room_id,),
        )
    finally:
        conn.execute("DELETE FROM temp.moving_state")


def _stored_events(
    conn: sqlite3.Connection, event_ids: Sequence[str]
) -> dict[str, tuple[int, bool]]:
    """``event_id -> (stream ordering, outlier)`` for the IDs already stored."""
    stored: dict[str, tuple[int, bool]] = {}
    unique = list(dict.fromkeys(event_ids))
    for start in range(0, len(unique), _CHUNK):
        chunk = unique[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        for event_id, ordering, outlier in conn.execute(
            f"SELECT event_id, stream_ordering, outlier FROM events WHERE event_id IN ({marks})",
            chunk,
        ):
            stored[event_id] = (ordering, bool(outlier))
    return stored


def _check_groups(conn: sqlite3.Connection, events: Sequence[EventToPersist]) -> None:
    """Refuse state groups that do not exist or belong to another room."""
    claims: set[tuple[int, str]] = set()
    for event in events:
        assert event.context is not None
        claims.add((event.context.state_group_before, event.room_id))
        if event.context.state_group_after is not None:
            claims.add((event.context.state_group_after, event.room_id))
    groups = sorted({group for group, _ in claims})
    rooms: dict[int, str] = {}
    for start in range(0, len(groups), _CHUNK):
        chunk = groups[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        rooms.update(
            conn.execute(f"SELECT id, room_id FROM state_groups WHERE id IN ({marks})", chunk)
        )
    for group, room_id in sorted(claims):
        if rooms.get(group) != room_id:
            check_group_in_room(conn, group, room_id)  # raises, saying which


def _partial_state_conflict(
    conn: sqlite3.Connection, partial: Sequence[tuple[str, str]]
) -> PartialStateConflictError:
    gone = sorted(
        room_id
        for room_id in {room_id for _, room_id in partial}
        if conn.execute(
            "SELECT 1 FROM partial_state_rooms WHERE room_id = ?", (room_id,)
        ).fetchone()
        is None
    )
    events = [event_id for event_id, room_id in partial if room_id in gone]
    return PartialStateConflictError(
        f"{', '.join(events)} {'has' if len(events) == 1 else 'have'} partial state"
        f" but {', '.join(gone)} no longer {'does' if len(gone) == 1 else 'do'}"
    )


def _write_new_events(
    conn: sqlite3.Connection,
    events: Sequence[EventToPersist],
    stored: Mapping[str, tuple[int, bool]],
    *,
    new_only: bool = False,
) -> tuple[dict[str, int], dict[str, int]]:
    """Write events none of which needs more than skipping if already stored,
    a statement per table for all of them. Returns their orderings and, per
    room, the state after the last accepted event. With ``new_only``, an
    event a stored event cites raises :class:`~ranvier.errors.StaleRunError`.
    """
    orderings = {event_id: stored[event_id][0] for event_id in stored}
    new = [event for event in events if event.event_id not in stored]
    if not new:
        return orderings, {}
    top = events_top(conn)
    rows = []
    for ordering, event in enumerate(new, start=top + 1):
        orderings[event.event_id] = ordering
        rows.append((ordering, *_event_row(event)))
    conn.executemany(_INSERT_EVENT_SQL, rows)
    conn.executemany(
        _INSERT_EDGE_SQL,
        [
            (orderings[e.event_id], prev, e.room_id, orderings.get(prev))
            for e in new
            for prev in e.prev_event_ids
        ],
    )
    filled = _fill_edges(conn, [e.event_id for e in new])
    if new_only and filled:
        # Edges the events just written have found their prev events by
        # then; an edge filled here is a stored event's.
        raise StaleRunError(
            "a stored event cites one of the run's events, which it took for uncited"
        )
    conn.executemany(
        _INSERT_AUTH_EDGE_SQL,
        [(orderings[e.event_id], auth, e.room_id) for e in new for auth in e.auth_event_ids],
    )
    in_dag = [event for event in new if event.context is not None]
    if not in_dag:
        return orderings, {}
    _check_groups(conn, in_dag)
    group_rows = []
    partial = []
    for event in in_dag:
        context = event.context
        assert context is not None
        before = context.state_group_before
        after = _group_after(conn, event, before, context.state_group_after)
        group_rows.append(
            (orderings[event.event_id], before, after, _replaced(conn, event, before))
        )
        if context.partial_state:
            partial.append((event.event_id, event.room_id))
    conn.executemany(_INSERT_STATE_GROUPS_SQL, group_rows)
    if partial:
        try:
            conn.executemany(
                "INSERT INTO partial_state_events (event_id, room_id) VALUES (?, ?)", partial
            )
        except sqlite3.IntegrityError as exc:
            # Every event row was written just before, so the key that
            # failed is the room's: its partial state is gone.
            if _is_foreign_key_failure(exc):
                raise _partial_state_conflict(conn, partial) from None
            raise
    accepted = [event for event in in_dag if event.accepted]
    # An event written here is no extremity yet, and one an accepted event
    # written here cites never becomes one: for a run of events in a line,
    # only the first one's prev events are looked up and the last one added.
    written = {event.event_id for event in new}
    cited = {prev for event in accepted for prev in event.prev_event_ids}
    conn.executemany(
        "DELETE FROM forward_extremities WHERE room_id = ? AND event_id = ?",
        sorted(
            {
                (e.room_id, prev)
                for e in accepted
                for prev in e.prev_event_ids
                if prev not in written
            }
        ),
    )
    conn.executemany(
        _ADD_EXTREMITY_SQL,
        [
            (e.room_id, e.event_id, orderings[e.event_id])
            for e in accepted
            if e.event_id not in cited
        ],
    )
    last_state = {
        event.room_id: after
        for event, (_, _, after, _) in zip(in_dag, group_rows, strict=True)
        if event.accepted
    }
    return orderings, last_state


def _fill_edges(conn: sqlite3.Connection, event_ids: Sequence[str]) -> int:
    """Give stored events' edges naming ``event_ids``, just stored, their
    prev events' orderings; returns how many edges were filled.

    One statement a chunk: nearly always no edge is waiting, and each
    probe of the partial index is then cheaper than a statement's step.
    """
    filled = 0
    for start in range(0, len(event_ids), _CHUNK):
        chunk = event_ids[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        filled += conn.execute(_FILL_EDGES_SQL.format(marks=marks), chunk).rowcount
    return filled


def _write_events_one_by_one(
    conn: sqlite3.Connection, events: Sequence[EventToPersist]
) -> tuple[dict[str, int], dict[str, int]]:
    """Write events in order, for lists that repeat an event or bring an
    outlier into the DAG, where each event depends on the ones before.
    """
    orderings: dict[str, int] = {}
    last_state: dict[str, int] = {}
    for event in events:
        ordering, written = _write_event_row(conn, event)
        orderings[event.event_id] = ordering
        if not written or event.context is None:
            continue
        _check_groups(conn, [event])
        context = event.context
        before = context.state_group_before
        after = _group_after(conn, event, before, context.state_group_after)
        conn.execute(
            _INSERT_STATE_GROUPS_SQL, (ordering, before, after, _replaced(conn, event, before))
        )
        if context.partial_state:
            partial = [(event.event_id, event.room_id)]
            try:
                conn.execute(
                    "INSERT INTO partial_state_events (event_id, room_id) VALUES (?, ?)", partial[0]
                )
            except sqlite3.IntegrityError as exc:
                if _is_foreign_key_failure(exc):
                    raise _partial_state_conflict(conn, partial) from None
                raise
        if event.accepted:
            conn.executemany(
                "DELETE FROM forward_extremities WHERE room_id = ? AND event_id = ?",
                [(event.room_id, prev) for prev in event.prev_event_ids],
            )
            conn.execute(_ADD_EXTREMITY_SQL, (event.room_id, event.event_id, ordering))
            last_state[event.room_id] = after
    return orderings, last_state


def persist_events(
    conn: sqlite3.Connection,
    events: Sequence[EventToPersist],
    current_state_groups: Mapping[str, int] | None = None,
    *,
    new_only: bool = False,
) -> dict[str, int]:
    """Write events with their edges, state groups and the state entries
    they replace, partial-state rows,
    extremities, current state, redaction, relation and search index rows,
    and clear the forgetting of rooms users are back in; return each
    event's stream ordering.

    Events get stream orderings in the order given. An event with partial
    state whose room no longer has partial state raises
    :class:`PartialStateConflictError`, and none of ``events`` is written.
    Events already stored are skipped, keeping their ordering, except an
    outlier now given a place in the DAG. Events of a room not stored here
    raise :class:`RoomGoneError` (the room was purged), but for an invite
    or a knock of ours (``out_of_band``), which makes the room known.
    With ``new_only``, an event already stored (or given twice), or one a
    stored event cites, raises :class:`~ranvier.errors.StaleRunError`
    instead of being skipped or taken as cited.
    """
    # A room becomes known here as its first state is stored (store_room,
    # store_partial_join), or with an invite or a knock of ours; any other
    # event of a room not stored is one of a purged room, and not kept.
    starting = {event.room_id for event in events if event.out_of_band}
    for room_id, room_version in dict.fromkeys((e.room_id, e.room_version) for e in events):
        _ensure_room(conn, room_id, room_version, may_create=room_id in starting)
    ids = [event.event_id for event in events]
    stored = _stored_events(conn, ids)
    distinct = len(set(ids)) == len(ids)
    if new_only and (stored or not distinct):
        raise StaleRunError(
            f"{min(stored or ids)} is stored already or twice, which the run took for new"
        )
    joins_dag = any(
        not event.outlier and stored[event.event_id][1]
        for event in events
        if event.event_id in stored
    )
    if distinct and not joins_dag:
        orderings, last_state = _write_new_events(conn, events, stored, new_only=new_only)
    else:
        orderings, last_state = _write_events_one_by_one(conn, events)

    named = dict(current_state_groups or {})
    for room_id, group in named.items():
        check_group_in_room(conn, group, room_id)
        _move_current_state(conn, room_id, group)
    for room_id, last_group in last_state.items():
        if room_id not in named:
            sole = _sole_extremity_group(conn, room_id)
            _move_current_state(conn, room_id, last_group if sole is None else sole)
    record_redactions(conn, events)
    record_relations(conn, events, orderings)
    record_search(conn, events, stored)
    record_out_of_band(conn, events)
    clear_forgotten(conn, events)
    return orderings


@registered_write
@dataclass(frozen=True, slots=True)
class PersistEvents:
    """One request to persist events, as the actor runs it.

    Neighbouring requests that name no current state are combined into one
    :func:`persist_events` call: the current-state rule does not depend on
    how events are split into requests, stream orderings follow the order
    of the events either way, and each request gets back the orderings of
    its own events.
    """

    events: tuple[EventToPersist, ...]
    current_state_groups: Mapping[str, int] = field(default_factory=dict)

    @property
    def combine_key(self) -> str | None:
        return None if self.current_state_groups else "persist_events"

    @property
    def rooms_written(self) -> frozenset[str]:
        return frozenset(event.room_id for event in self.events)

    def __call__(self, conn: sqlite3.Connection) -> dict[str, int]:
        return persist_events(conn, self.events, self.current_state_groups)

    def run_combined(
        self, conn: sqlite3.Connection, writes: Sequence[PersistEvents]
    ) -> list[dict[str, int]]:
        orderings = persist_events(conn, [event for write in writes for event in write.events])
        return [
            {event.event_id: orderings[event.event_id] for event in write.events}
            for write in writes
        ]


@dataclass(frozen=True, slots=True)
class RunWritten:
    """What :class:`PersistRun` gives back."""

    #: The stream ordering of each event, by ID.
    orderings: dict[str, int]
    #: The room's mark just after the write, for the next run to be
    #: judged against what it left; None when the write ran outside the
    #: actor, which alone counts writes.
    mark: WriteMark | None = None


@registered_write
@dataclass(frozen=True, slots=True)
class PersistRun:
    """A run of one room's events (:class:`ranvier.core.ingest_batch.RoomRun`)
    as one request, with the answer to the federation transaction that
    brought them when there is one: if the events are refused (their room's
    partial state gone, the room purged), the answer is not recorded
    either, and the transaction can be handled again.

    With ``since``, the mark an earlier write of the room got back, the run
    was judged against what that write left rather than against a read:
    it is written only if no write that may touch the room ran since, and
    none of its events is stored, cited by a stored event or named by a
    stored redaction (the run took all of them for new and uncited);
    otherwise :class:`~ranvier.errors.StaleRunError`, and nothing is written.
    """

    room_id: str
    events: tuple[EventToPersist, ...]
    current_state_groups: dict[str, int] = field(default_factory=dict)
    answer: ReceivedTransaction | None = None
    since: WriteMark | None = None

    @property
    def rooms_written(self) -> frozenset[str]:
        return frozenset({self.room_id, *(event.room_id for event in self.events)})

    def __call__(self, conn: sqlite3.Connection) -> RunWritten:
        # Only the actor counts writes: a mark cannot be checked without it.
        if self.since is not None:
            raise StaleRunError("a run's mark can only be checked by the storage actor")
        return RunWritten(self._write(conn, new_only=False))

    def run_marked(self, conn: sqlite3.Connection, marks: WriteMarks) -> RunWritten:
        if self.since is not None:
            marks.check(self.room_id, self.since)
            _check_unnamed(conn, [event.event_id for event in self.events])
        try:
            orderings = self._write(conn, new_only=self.since is not None)
        finally:
            marks.wrote(self.rooms_written)
        return RunWritten(orderings, marks.of(self.room_id))

    def _write(self, conn: sqlite3.Connection, *, new_only: bool) -> dict[str, int]:
        orderings = persist_events(conn, self.events, self.current_state_groups, new_only=new_only)
        if self.answer is not None:
            record_transaction(conn, self.answer)
        return orderings


def _check_unnamed(conn: sqlite3.Connection, event_ids: Sequence[str]) -> None:
    """Raise :class:`~ranvier.errors.StaleRunError` if a stored redaction
    names one of ``event_ids``."""
    named = redaction_targets(conn, event_ids)
    if named:
        raise StaleRunError(
            f"a stored redaction names {min(named)}, which the run took for named by none"
        )


@registered_write
def set_current_state(conn: sqlite3.Connection, room_id: str, state_group: int) -> None:
    """Make a room's current state a group's state (rule 1 on its own)."""
    check_group_in_room(conn, state_group, room_id)
    _move_current_state(conn, room_id, state_group)


@registered_write
def store_partial_join(
    conn: sqlite3.Connection,
    room_id: str,
    room_version: str,
    join_event_id: str,
    joined_via: str,
    servers_in_room: Collection[str],
) -> None:
    """Mark a room as joined with partial state, before its join event is written.

    The same join stored again (a write repeated after a restart of the
    process that ran it) changes nothing; another join of a room that
    already has partial state is refused.
    """
    _ensure_room(conn, room_id, room_version)
    try:
        conn.execute(
            "INSERT INTO partial_state_rooms (room_id, join_event_id, joined_via) VALUES (?, ?, ?)",
            (room_id, join_event_id, joined_via),
        )
    except sqlite3.IntegrityError:
        stored = conn.execute(
            "SELECT join_event_id, joined_via FROM partial_state_rooms WHERE room_id = ?",
            (room_id,),
        ).fetchone()
        if stored is None:
            raise
        if tuple(stored) != (join_event_id, joined_via):
            raise MatrixError(f"{room_id} already has partial state") from None
    conn.executemany(
        "INSERT OR IGNORE INTO partial_state_rooms_servers (room_id, server_name) VALUES (?, ?)",
        [(room_id, server) for server in sorted({joined_via, *servers_in_room})],
    )


def _rejudge_extremities(conn: sqlite3.Connection, room_id: str, event_id: str) -> None:
    """Apply the extremity rule afresh to an event and its prev events, after
    its verdict changed.

    The rule is the one every persist keeps: the room's forward extremities
    are its accepted events in the DAG that no accepted event cites. An event
    found rejected gives back the extremity status of its prev events that
    nothing else accepted cites; an event found accepted takes it from its
    prev events and becomes an extremity unless an accepted event already
    follows it.
    """
    conn.execute(_FORGET_JUDGED_EXTREMITIES_SQL, (room_id, event_id))
    conn.execute(_RESTORE_JUDGED_EXTREMITIES_SQL, (room_id, event_id))


@registered_write
def update_state_for_partial_event(
    conn: sqlite3.Connection,
    event_id: str,
    state_group_before: int,
    state_group_after: int | None,
    rejected_reason: str | None,
) -> None:
    """Give an event with partial state its full state and verdict, and drop
    its partial-state row.

    Leaving ``state_group_after`` out derives it as for a new event. What
    the event replaced is read again from the new state before it. When the
    full state turns the verdict around (accepted to rejected or back), the
    forward extremities end up as if the event had been written with its new
    verdict in the first place. Then, if the room has exactly one forward
    extremity, current state becomes the state after it; otherwise current
    state is left for the caller to resolve.
    """
    row = conn.execute(
        "SELECT room_id, type, state_key, outlier, soft_failed, rejected_reason"
        " FROM events WHERE event_id = ?",
        (event_id,),
    ).fetchone()
    if row is None:
        raise _not_found(f"event {event_id}")
    room_id, typ, state_key, outlier, soft_failed, was_rejected = row
    if outlier:
        raise MatrixError(
            f"{event_id} is an outlier: it has no state to update",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
    check_group_in_room(conn, state_group_before, room_id)
    if state_group_after is not None:
        check_group_in_room(conn, state_group_after, room_id)
        after = state_group_after
    else:
        after = _derived_after(
            conn,
            room_id=room_id,
            event_id=event_id,
            state_key=None if state_key is None else (typ, state_key),
            rejected=rejected_reason is not None,
            before=state_group_before,
        )
    replaced = (
        None
        if state_key is None
        else replaced_entry(conn, room_id, state_group_before, (typ, state_key), event_id)
    )
    # What the event replaced follows the state before it: a member's
    # earlier membership, say, missing from the partial state.
    conn.execute(
        "UPDATE event_state SET state_group_before = ?, state_group_after = ?,"
        " replaces_state = ?"
        " WHERE event_ordering = (SELECT stream_ordering FROM events WHERE event_id = ?)",
        (state_group_before, after, replaced, event_id),
    )
    conn.execute(
        "UPDATE events SET rejected_reason = ? WHERE event_id = ?", (rejected_reason, event_id)
    )
    conn.execute("DELETE FROM partial_state_events WHERE event_id = ?", (event_id,))
    # A soft-failed event moves no extremity whatever its verdict.
    if not soft_failed and (was_rejected is None) != (rejected_reason is None):
        _rejudge_extremities(conn, room_id, event_id)
    sole = _sole_extremity_group(conn, room_id)
    if sole is not None:
        _move_current_state(conn, room_id, sole)


@registered_write
def clear_partial_state(conn: sqlite3.Connection, room_id: str) -> bool:
    """Forget that a room has partial state, and the progress recorded of
    its resync; False if it had none.

    A room cleared is noted in ``un_partial_stated_rooms`` with the events'
    stream position at the time. The row's rowid is the room's place in a
    stream of its own, one past every other row's, so that a sync can tell
    rooms cleared after its token from rooms cleared before it even when no
    event came in between (see :func:`ranvier.storage.sync_reads.positions`).

    Raises :class:`PartialStateEventsRemainError` while any of its events
    still has partial state.
    """
    conn.execute("DELETE FROM partial_state_rooms_servers WHERE room_id = ?", (room_id,))
    conn.execute("DELETE FROM resync_progress WHERE room_id = ?", (room_id,))
    try:
        cursor = conn.execute("DELETE FROM partial_state_rooms WHERE room_id = ?", (room_id,))
    except sqlite3.IntegrityError as exc:
        if _is_foreign_key_failure(exc):
            raise PartialStateEventsRemainError(room_id) from None
        raise
    if cursor.rowcount == 0:
        return False
    next_position = un_partial_top(conn) + 1
    conn.execute("DELETE FROM un_partial_stated_rooms WHERE room_id = ?", (room_id,))
    conn.execute(
        "INSERT INTO un_partial_stated_rooms (rowid, room_id, stream_ordering) VALUES (?, ?, ?)",
        (next_position, room_id, events_top(conn)),
    )
    return True


@registered_write
def store_resync_progress(
    conn: sqlite3.Connection,
    room_id: str,
    phase: str,
    server: str | None,
    events_resynced: int,
    events_total: int,
    attempts: int,
    last_error: str | None,
    updated_ts: int,
) -> bool:
    """Record how far a room's resync has come, replacing what was recorded.

    Only a room that still has partial state gets a row: progress of a room
    cleared meanwhile (the recorder runs beside the task that clears) is
    dropped, and False returned, rather than left behind or refused.
    """
    cursor = conn.execute(
        _STORE_RESYNC_PROGRESS_SQL,
        (
            room_id,
            phase,
            server,
            events_resynced,
            events_total,
            attempts,
            last_error,
            updated_ts,
        ),
    )
    return cursor.rowcount > 0


@registered_write
@writes_no_room
def record_transaction(conn: sqlite3.Connection, transaction: ReceivedTransaction) -> None:
    """Remember how a received transaction was answered."""
    conn.execute(
        """
        INSERT OR REPLACE INTO received_transactions
            (origin, transaction_id, response_code, response_json, received_ts)
        VALUES (?, ?, ?, ?, ?)
        """,
        (
            transaction.origin,
            transaction.transaction_id,
            transaction.response_code,
            transaction.response_json,
            transaction.received_ts,
        ),
    )


@registered_write
@writes_no_room
def store_server_keys(conn: sqlite3.Connection, keys: Sequence[ServerKey]) -> None:
    """Store remote keys; for a key already known, the answer valid longest wins."""
    conn.executemany(
        """
        INSERT INTO server_keys (
            server_name, key_id, verify_key, valid_until_ts, expired_ts, from_server,
            fetched_ts, key_json
        ) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (server_name, key_id) DO UPDATE SET
            verify_key = excluded.verify_key,
            valid_until_ts = excluded.valid_until_ts,
            expired_ts = excluded.expired_ts,
            from_server = excluded.from_server,
            fetched_ts = excluded.fetched_ts,
            key_json = excluded.key_json
        WHERE excluded.valid_until_ts >= server_keys.valid_until_ts
        """,
        [
            (
                key.server_name,
                key.key_id,
                key.verify_key,
                key.valid_until_ts,
                key.expired_ts,
                key.from_server,
                key.fetched_ts,
                key.key_json,
            )
            for key in keys
        ],
    )


@registered_write
@writes_no_room
def store_destination_retry(
    conn: sqlite3.Connection, destination: str, retry: DestinationRetry | None
) -> None:
    """Set a destination's retry state; None forgets it (the server is back)."""
    if retry is None:
        conn.execute("DELETE FROM destinations WHERE destination = ?", (destination,))
        return
    if retry.destination != destination:
        raise MatrixError(
            f"retry state for {retry.destination} given for {destination}",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
    conn.execute(
        """
        INSERT OR REPLACE INTO destinations
            (destination, failure_ts, retry_last_ts, retry_interval_ms)
        VALUES (?, ?, ?, ?)
        """,
        (destination, retry.failure_ts, retry.retry_last_ts, retry.retry_interval_ms),
    )


# Outgoing federation: how far each destination has been sent each room.


def _unknown_rooms(conn: sqlite3.Connection, room_ids: Collection[str]) -> list[str]:
    known = {
        room_id
        for chunk in _chunked(sorted(room_ids))
        for (room_id,) in conn.execute(
            f"SELECT room_id FROM rooms WHERE room_id IN ({', '.join('?' * len(chunk))})", chunk
        )
    }
    return sorted(set(room_ids) - known)


def _chunked(items: Sequence[str]) -> list[Sequence[str]]:
    return [items[start : start + _CHUNK] for start in range(0, len(items), _CHUNK)]


def _upsert_destination_rooms(
    conn: sqlite3.Connection, sql: str, rows: Sequence[tuple[object, ...]], rooms: Collection[str]
) -> None:
    try:
        conn.executemany(sql, rows)
    except sqlite3.IntegrityError as exc:
        unknown = _unknown_rooms(conn, rooms) if _is_foreign_key_failure(exc) else []
        if unknown:
            raise _not_found(f"room {', '.join(unknown)}") from None
        raise


@registered_write
@writes_no_room
def store_destination_rooms(
    conn: sqlite3.Connection, destination: str, positions: Mapping[str, int]
) -> None:
    """Note the newest event (by stream ordering) of each room meant for
    ``destination``, before it is sent: what is noted survives a restart and
    tells the sender which rooms to catch the destination up on.

    A position only moves forward. Every room must be known
    (``M_NOT_FOUND`` otherwise, and nothing is written).
    """
    _upsert_destination_rooms(
        conn,
        """
        INSERT INTO destination_rooms (destination, room_id, stream_ordering) VALUES (?, ?, ?)
        ON CONFLICT (destination, room_id) DO UPDATE
            SET stream_ordering = max(stream_ordering, excluded.stream_ordering)
        """,
        [(destination, room_id, position) for room_id, position in positions.items()],
        positions.keys(),
    )


@registered_write
@writes_no_room
def mark_destination_rooms_sent(
    conn: sqlite3.Connection, destination: str, positions: Mapping[str, int]
) -> None:
    """Note that ``destination`` has everything of each room up to the given
    stream ordering: it acknowledged that event or a later one, or the
    sender gave up on it.

    A position only moves forward, and the room's newest event meant for the
    destination is raised to it if it was behind. Every room must be known
    (``M_NOT_FOUND`` otherwise, and nothing is written).
    """
    _upsert_destination_rooms(
        conn,
        """
        INSERT INTO destination_rooms (destination, room_id, stream_ordering, sent_stream_ordering)
        VALUES (?1, ?2, ?3, ?3)
        ON CONFLICT (destination, room_id) DO UPDATE SET
            sent_stream_ordering = max(
                coalesce(sent_stream_ordering, excluded.sent_stream_ordering),
                excluded.sent_stream_ordering
            ),
            stream_ordering = max(stream_ordering, excluded.stream_ordering)
        """,
        [(destination, room_id, position) for room_id, position in positions.items()],
        positions.keys(),
    )
